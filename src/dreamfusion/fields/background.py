"""Backgrounds: the color a ray sees where the field leaves it transparent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from dreamfusion.fields.mlp import hidden_layers, positional_encoding


@dataclass
class BackgroundConfig:
    """What rays that leave the bounding sphere see."""

    kind: Literal["envmap", "constant", "random"] = "envmap"
    """envmap: an MLP on the encoded ray direction (the paper); constant: a fixed color; random: a
    new uniformly random solid color for every training view (so only the object can carry the
    prompt's color), `color` for previews and exports."""
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """The fixed background color (kind=constant; previews and exports of kind=random)."""
    frequencies: int = 4
    """Octaves of the direction encoding of the environment map."""
    width: int = 32
    """Hidden width of the environment-map MLP."""


class EnvMapBackground(nn.Module):
    """The paper's environment map: an MLP on the positionally encoded ray direction.

    One hidden layer is enough for a smooth backdrop; a more expressive one competes with the
    object for explaining the image.
    """

    def __init__(self, cfg: BackgroundConfig):
        super().__init__()
        self.frequencies = cfg.frequencies
        in_dim = 3 * (1 + 2 * cfg.frequencies)
        self.net = nn.Sequential(
            hidden_layers(in_dim, cfg.width, 1, "softplus"), nn.Linear(cfg.width, 3), nn.Sigmoid()
        )

    def forward(self, directions: Tensor) -> Tensor:
        """(..., 3) unit directions -> (..., 3) colors in [0, 1]."""
        flat = directions.reshape(-1, 3)
        return self.net(positional_encoding(flat, self.frequencies)).reshape(directions.shape)


class ConstantBackground(nn.Module):
    """One fixed color everywhere; no parameters (and nothing in the state dict)."""

    def __init__(self, color: tuple[float, float, float]):
        super().__init__()
        # A buffer that moves with the module: a color built from Python at every call is copied to
        # the GPU from pageable memory, and the host waits for the GPU at each such copy.
        self.register_buffer("rgb", torch.tensor([float(c) for c in color]), persistent=False)

    def forward(self, directions: Tensor) -> Tensor:
        """(..., 3) directions -> (..., 3) copies of the color, on the input's device and dtype."""
        return self.rgb.to(directions).expand(directions.shape)
