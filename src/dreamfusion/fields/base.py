"""The field protocol and the pieces every field shares (density blob, activations)."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class Field(Protocol):
    """Density and albedo at points. Implementations are `torch.nn.Module`s.

    Points outside the sphere of radius `bound_radius` must get zero density: renderers
    rely on it, and so does mesh export.
    """

    bound_radius: float

    def __call__(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3) world points -> density (N,) >= 0 and albedo (N, 3) in [0, 1]."""
        ...

    def density(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N,) density alone (cheaper: no albedo head)."""
        ...


class Background(Protocol):
    """Color seen along a ray direction where the field leaves it transparent."""

    def __call__(self, directions: Tensor) -> Tensor:
        """(..., 3) unit directions -> (..., 3) colors in [0, 1]."""
        ...


def density_blob(points: Tensor, scale: float, radius: float) -> Tensor:
    """tau_init(mu) = scale * exp(-|mu|^2 / (2 radius^2)): (N, 3) -> (N,). Added to the raw density."""
    return scale * torch.exp(-(points * points).sum(-1) / (2.0 * radius * radius))


def activate_density(raw: Tensor, kind: str) -> Tensor:
    """Raw pre-activation density -> non-negative density."""
    if kind == "exp":
        # Clamp before exp: a raw value of 100 would overflow float32 and poison the gradient.
        return torch.exp(raw.clamp(max=15.0))
    if kind == "softplus":
        return F.softplus(raw)
    raise ValueError(f"unknown density activation '{kind}' (use exp or softplus)")
