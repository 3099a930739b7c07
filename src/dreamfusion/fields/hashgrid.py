"""Multiresolution hash encoding (Instant-NGP, Mueller et al. 2022) in pure PyTorch.

No compiled extension: every op has a double backward, so normals (a gradient of the density)
can themselves be differentiated by the orientation loss. Each level is a table of feature
vectors on the vertices of a cubic grid over the bounding cube; a point's feature is the
trilinear interpolation of its cell's 8 corners. Coarse levels whose grid fits the table index
it densely (no collisions); finer ones hash the vertex coordinates into the table.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dreamfusion.config import FieldConfig
from dreamfusion.fields.mlp import finish_density, hidden_layers, make_density_head

# Instant-NGP's spatial-hash primes. Products fit int64 (coordinates stay below 2^21) and only
# the low log2(T) bits survive the mask, which equal those of uint32 wrap-around arithmetic.
HASH_PRIMES = (1, 2654435761, 805459861)


def grid_resolutions(base: int, finest: int, levels: int) -> list[int]:
    """Per-level grid resolutions, growing geometrically from `base` to `finest` (both included)."""
    if levels == 1:
        return [base]
    growth = math.exp((math.log(finest) - math.log(base)) / (levels - 1))
    # The epsilon keeps float error from turning base * growth^(L-1) = finest into finest - 1.
    return [int(math.floor(base * growth**level + 1e-6)) for level in range(levels)]


def is_hashed(resolution: int, table_size: int) -> bool:
    """A level hashes when its (resolution + 1)^3 vertices do not fit its table."""
    return (resolution + 1) ** 3 > table_size


def corner_multipliers(resolution: int, table_size: int) -> tuple[int, int, int]:
    """Per-axis factors of the vertex index: hash primes, or strides of a dense (r+1)^3 array."""
    if is_hashed(resolution, table_size):
        return HASH_PRIMES
    side = resolution + 1
    return (1, side, side * side)


def trilinear_corners(unit_points: Tensor, resolution: int, table_size: int) -> tuple[Tensor, Tensor]:
    """Table rows and trilinear weights of the 8 cell corners around each point.

    unit_points (N, 3) in [0, 1]^3 -> indices (N, 8) int64 in [0, table_size) and weights (N, 8)
    that sum to 1, corner k = 4 dx + 2 dy + dz for offsets d in {0, 1}. The weights carry the
    gradient with respect to the points; the indices are constant.
    """
    pos = unit_points * resolution  # (N, 3) in grid units
    # A point on the far face (pos = resolution) belongs to the last cell, with fraction 1.
    lower = pos.detach().floor().clamp(0, resolution - 1)
    frac = pos - lower  # (N, 3) in [0, 1]
    lower_i = lower.long()
    corner = torch.stack((lower_i, lower_i + 1), dim=-1)  # (N, 3, 2) vertex coordinates
    mx, my, mz = corner_multipliers(resolution, table_size)
    x = (corner[:, 0] * mx)[:, :, None, None]  # (N, 2, 1, 1)
    y = (corner[:, 1] * my)[:, None, :, None]
    z = (corner[:, 2] * mz)[:, None, None, :]
    if is_hashed(resolution, table_size):
        index = (x ^ y ^ z) & (table_size - 1)  # (N, 2, 2, 2); table_size is a power of two
    else:
        index = x + y + z
    # Products of (N,) columns rather than broadcasting (N, 2, 1, 1) * (N, 1, 2, 1) ...: on CPU
    # this halves the cost of the double backward that normals need.
    fx, fy, fz = frac.unbind(-1)
    xs, ys, zs = (1.0 - fx, fx), (1.0 - fy, fy), (1.0 - fz, fz)
    xy = [xs[dx] * ys[dy] for dx in (0, 1) for dy in (0, 1)]
    weights = torch.stack([w * zs[dz] for w in xy for dz in (0, 1)], dim=-1)  # (N, 8)
    return index.reshape(-1, 8), weights


class HashEncoding(nn.Module):
    """(N, 3) points in [0, 1]^3 -> (N, levels * features) concatenated per-level features.

    Dense levels get a table of exactly (r + 1)^3 rows, hashed ones 2^log2_size. One parameter
    per level (not one flat table sliced per level): the backward of a slice would materialize
    a zero gradient of the whole table for every level.
    """

    def __init__(self, levels: int, features: int, log2_size: int, base: int, finest: int):
        super().__init__()
        if levels < 1 or base < 1:
            raise ValueError(
                f"the hash grid needs hash_levels >= 1 and a base resolution >= 1, got {levels}, {base}"
            )
        if finest < base:
            raise ValueError(f"hash_max_resolution {finest} is below hash_base_resolution {base}")
        self.table_size = 2**log2_size
        self.resolutions = grid_resolutions(base, finest, levels)
        self.out_dim = levels * features
        self.tables = nn.ParameterList(
            nn.Parameter(torch.empty(min(self.table_size, (r + 1) ** 3), features).uniform_(-1e-4, 1e-4))
            for r in self.resolutions
        )

    def forward(self, unit_points: Tensor) -> Tensor:
        out = []
        # float32 even under autocast: at 1024 cells per side, bfloat16 weights would quantize
        # positions (and so the normals) to a few cells.
        with torch.autocast(unit_points.device.type, enabled=False):
            for resolution, table in zip(self.resolutions, self.tables, strict=True):
                index, weights = trilinear_corners(unit_points.float(), resolution, self.table_size)
                corners = table.index_select(0, index.reshape(-1)).view(*index.shape, -1)  # (N, 8, F)
                out.append(torch.bmm(weights[:, None, :], corners)[:, 0])  # (N, F)
        return torch.cat(out, dim=-1)


class HashGridField(nn.Module):
    """Hash encoding of the point in the bounding cube, then a small MLP to density and albedo."""

    def __init__(self, cfg: FieldConfig):
        super().__init__()
        self.cfg = cfg
        self.bound_radius = cfg.bound_radius
        self.encoding = HashEncoding(
            cfg.hash_levels,
            cfg.hash_features,
            cfg.hash_log2_size,
            cfg.hash_base_resolution,
            cfg.hash_max_resolution,
        )
        self.trunk = hidden_layers(
            self.encoding.out_dim, cfg.hash_mlp_width, cfg.hash_mlp_depth, cfg.activation
        )
        width = cfg.hash_mlp_width if cfg.hash_mlp_depth > 0 else self.encoding.out_dim
        self.density_head = make_density_head(width)
        self.albedo_head = nn.Linear(width, 3)

    def _features(self, points: Tensor) -> Tensor:
        """(N, 3) world points -> (N, hash_mlp_width) hidden features."""
        # The cube [-R, R]^3 maps to [0, 1]^3; the clamp only matters outside the sphere,
        # where the density is masked to zero anyway.
        unit = (points / (2.0 * self.bound_radius) + 0.5).clamp(0.0, 1.0)
        return self.trunk(self.encoding(unit))

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3) -> density (N,) >= 0, albedo (N, 3) in [0, 1]."""
        h = self._features(points)
        density = finish_density(points, self.density_head(h)[:, 0], self.cfg)
        return density, torch.sigmoid(self.albedo_head(h))

    def density(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N,) density alone."""
        return finish_density(points, self.density_head(self._features(points))[:, 0], self.cfg)
