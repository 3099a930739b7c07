"""The paper's field: an MLP on the positionally encoded point (mip-NeRF 360 style, without IPE).

Also the pieces the other fields share: the positional encoding, the MLP builder and the step
that turns a raw network output into the final density (blob, activation, bounding-sphere mask).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dreamfusion.fields.base import FieldConfig, activate_density, density_blob

# Activations with a non-zero second derivative: the orientation loss differentiates the normals
# (a gradient of the density) with respect to the parameters, and ReLU's kinks make that sparse.
ACTIVATIONS: dict[str, type[nn.Module]] = {"softplus": nn.Softplus, "silu": nn.SiLU, "relu": nn.ReLU}


def positional_encoding(x: Tensor, n_freqs: int) -> Tensor:
    """[x, sin(2^k x), cos(2^k x) for k < n_freqs]: (..., D) -> (..., D * (1 + 2 n_freqs)).

    Frequencies are 2^k without a factor pi (as in NeRF's and mip-NeRF 360's code): for inputs
    in [-1, 1] the finest octave then has a period of about 2 pi / 2^(n-1), smooth enough for
    64 samples per ray.
    """
    if n_freqs == 0:
        return x
    freqs = 2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)  # (F,)
    scaled = (x[..., None, :] * freqs[:, None]).flatten(-2)  # (..., F * D)
    return torch.cat([x, torch.sin(scaled), torch.cos(scaled)], dim=-1)


def activation(name: str) -> nn.Module:
    """The hidden-layer activation module named by `FieldConfig.activation`."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}' (use one of {sorted(ACTIVATIONS)})")
    return ACTIVATIONS[name]()


def hidden_layers(in_dim: int, width: int, depth: int, act: str) -> nn.Sequential:
    """`depth` x (Linear to `width`, activation): (N, in_dim) -> (N, width), identity if depth = 0."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_dim if i == 0 else width, width), activation(act)]
    return nn.Sequential(*layers)


def make_density_head(width: int) -> nn.Linear:
    """Linear (N, width) -> (N, 1) raw density that starts near 0 (|raw| ~ 1e-2 or less).

    Then the initial density is the configured blob, whatever the seed: with the default init
    the bias alone would shift the blob's raw value by up to ~1, a factor e under `exp`.
    """
    head = nn.Linear(width, 1)
    with torch.no_grad():
        head.weight.mul_(0.01)
        head.bias.zero_()
    return head


def finish_density(points: Tensor, raw: Tensor, cfg: FieldConfig) -> Tensor:
    """Network output (N,) at points (N, 3) -> density (N,) >= 0, exactly 0 outside the sphere.

    The blob bias is added before the activation, so at initialization (raw ~ 0) the field is
    the paper's centered blob. `where` rather than a product: zero density and zero gradient
    outside, whatever the network says there.
    """
    raw = raw + density_blob(points, cfg.blob_density, cfg.blob_radius) + cfg.density_bias
    density = activate_density(raw, cfg.density_activation)
    inside = (points * points).sum(-1) <= cfg.bound_radius**2
    return torch.where(inside, density, torch.zeros_like(density))


class MLPField(nn.Module):
    """Density and albedo from an MLP on the encoded point x / bound_radius.

    `mlp_depth` hidden layers of `mlp_width`; as in NeRF and mip-NeRF 360, the encoding is fed
    again halfway (for depth >= 4) so the deep layers keep sight of the input.
    """

    def __init__(self, cfg: FieldConfig):
        super().__init__()
        self.cfg = cfg
        self.bound_radius = cfg.bound_radius
        enc_dim = 3 * (1 + 2 * cfg.pe_frequencies)
        self.skip = cfg.mlp_depth // 2 if cfg.mlp_depth >= 4 else -1
        self.layers = nn.ModuleList()
        for i in range(cfg.mlp_depth):
            in_dim = enc_dim if i == 0 else cfg.mlp_width
            in_dim += enc_dim if i == self.skip else 0
            self.layers.append(nn.Linear(in_dim, cfg.mlp_width))
        self.act = activation(cfg.activation)
        width = cfg.mlp_width if cfg.mlp_depth > 0 else enc_dim
        self.density_head = make_density_head(width)
        self.albedo_head = nn.Linear(width, 3)

    def _features(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N, width) last hidden features."""
        enc = positional_encoding(points / self.bound_radius, self.cfg.pe_frequencies)
        h = enc
        for i, layer in enumerate(self.layers):
            if i == self.skip:
                h = torch.cat([h, enc], dim=-1)
            h = self.act(layer(h))
        return h

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3) -> density (N,) >= 0, albedo (N, 3) in [0, 1]."""
        h = self._features(points)
        density = finish_density(points, self.density_head(h)[:, 0], self.cfg)
        return density, torch.sigmoid(self.albedo_head(h))

    def density(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N,) density alone."""
        return finish_density(points, self.density_head(self._features(points))[:, 0], self.cfg)
