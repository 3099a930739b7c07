"""Multiresolution hash encoding (Instant-NGP, Mueller et al. 2022) in pure PyTorch.

No compiled extension: every op has a double backward, so normals (a gradient of the density)
can themselves be differentiated by the orientation loss. Each level is a table of feature
vectors on the vertices of a cubic grid over the bounding cube; a point's feature is the
trilinear interpolation of its cell's 8 corners. Coarse levels whose grid fits the table index
it densely (no collisions); finer ones hash the vertex coordinates into the table.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dreamfusion.fields.base import FieldConfig
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


@functools.cache
def _level_constants(
    resolutions: tuple[int, ...], table_size: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Resolutions (L, 1) as floats, dense levels' index strides (Ld, 3, 1) int32, the hash primes
    (3, 1) int64 and Ld, made once per device.

    The coarse levels whose (r+1)^3 vertices fit the table come first (resolutions ascend): they
    index a dense array by strides; the finer ones hash. Made here rather than in each call: a
    tensor built from a list on the GPU is a copy from pageable memory, which waits for all queued
    work (the CPU stops queueing ahead) and cannot be captured in a CUDA graph.
    """
    dense = [r for r in resolutions if not is_hashed(r, table_size)]
    strides = torch.tensor([(1, r + 1, (r + 1) ** 2) for r in dense], dtype=torch.int32).reshape(-1, 3, 1)
    res = torch.tensor(resolutions, dtype=torch.float32)[:, None]
    primes = torch.tensor(HASH_PRIMES, dtype=torch.long)[:, None]
    return res.to(device), strides.to(device), primes.to(device), len(dense)


def trilinear_corners(
    unit_points: Tensor, resolutions: Sequence[int], table_size: int
) -> tuple[Tensor, Tensor]:
    """Table rows and trilinear weights of the 8 cell corners around each point, at every level.

    unit_points (N, 3) in [0, 1]^3 and L ascending resolutions -> indices (N, L, 8)
    int32, level l's in [0, its table size), and weights (N, L, 8) that sum to 1 over the
    corners, corner k = 4 dx + 2 dy + dz for offsets d in {0, 1}. The weights carry the gradient
    with respect to the points; the indices are constant. All levels at once, a few dozen kernels
    whatever L: on a GPU, a loop over levels spends its time launching them.
    """
    res, strides, primes, dense = _level_constants(tuple(resolutions), table_size, unit_points.device)
    pos = unit_points[:, None, :] * res  # (N, L, 3) in grid units
    # A point on the far face (pos = resolution) belongs to the last cell, with fraction 1.
    lower = torch.minimum(pos.detach().floor().clamp_min(0), res - 1)
    frac = pos - lower  # (N, L, 3) in [0, 1]
    corner = lower.int()[..., None] + torch.arange(2, dtype=torch.int32, device=lower.device)  # (N, L, 3, 2)
    # Every level's rows are written into one int32 array in place: the indices are the largest
    # tensors of the encoding, and building them in int64, then concatenating, moves several times
    # the bytes. Dense levels sum their strided coordinates (below 2^31); hashed ones XOR the
    # prime-scaled coordinates and keep the low bits (table_size is a power of two). The products
    # with the primes need int64; masking each before the XOR keeps the same bits, and fits int32.
    index = torch.empty(len(unit_points), len(resolutions), 2, 2, 2, dtype=torch.int32, device=lower.device)
    d = corner[:, :dense] * strides
    torch.add(
        d[:, :, 0, :, None, None] + d[:, :, 1, None, :, None], d[:, :, 2, None, None, :], out=index[:, :dense]
    )
    h = ((corner[:, dense:] * primes) & (table_size - 1)).int()
    torch.bitwise_xor(
        h[:, :, 0, :, None, None] ^ h[:, :, 1, None, :, None], h[:, :, 2, None, None, :], out=index[:, dense:]
    )
    # Products of (N, L) columns rather than one broadcast (N, L, 2, 2, 2) product: on CPU this
    # halves the cost of the double backward that normals need.
    fx, fy, fz = frac.unbind(-1)
    xs, ys, zs = (1.0 - fx, fx), (1.0 - fy, fy), (1.0 - fz, fz)
    xy = [xs[dx] * ys[dy] for dx in (0, 1) for dy in (0, 1)]
    weights = torch.stack([w * zs[dz] for w in xy for dz in (0, 1)], dim=-1)  # (N, L, 8)
    return index.flatten(2), weights


def corners_by_corner(unit_points_t: Tensor, resolution: int, table_size: int) -> tuple[Tensor, Tensor]:
    """One level's table rows and trilinear weights, corner-major: the CPU's layout.

    unit_points_t (3, N) in [0, 1]^3 (coordinates as contiguous rows) -> indices (8, N) int32 and
    weights (8, N), corner k = 4 dx + 2 dy + dz: the same numbers as `trilinear_corners` gives
    for this level, laid out so every op runs over contiguous rows of N (on a CPU, tensors with
    a last dimension of 2 or 8 run far below memory speed). int32 indices halve the traffic of
    the gather; hashed coordinates are scaled by the primes in int64 (exact, as in
    `trilinear_corners`) and masked before narrowing, so no int32 product overflows. The weights
    carry the gradient with respect to the points (to any order); the indices are constant.
    """
    n = unit_points_t.shape[1]
    pos = unit_points_t * float(resolution)
    lower = pos.detach().floor().clamp_(0, resolution - 1)
    frac = pos - lower
    steps = torch.tensor([[0], [1]], device=pos.device)  # (2, 1): the cell's two corners per axis
    if not is_hashed(resolution, table_size):
        cell, steps = lower.to(torch.int32), steps.int()
        stride = resolution + 1
        ix = cell[0] + steps
        iy = (cell[1] + steps) * stride
        iz = (cell[2] + steps) * (stride * stride)
        index = ((ix[:, None] + iy[None, :]).view(2, 2, 1, n) + iz).view(8, n)
    else:
        mask = table_size - 1
        cell = lower.to(torch.int64)
        ix, iy, iz = (
            (((cell[axis] + steps) * prime) & mask).to(torch.int32) for axis, prime in enumerate(HASH_PRIMES)
        )
        index = ((ix[:, None] ^ iy[None, :]).view(2, 2, 1, n) ^ iz).view(8, n)
    fx, fy, fz = frac
    wx, wy, wz = torch.stack((1.0 - fx, fx)), torch.stack((1.0 - fy, fy)), torch.stack((1.0 - fz, fz))
    weights = ((wx[:, None] * wy[None, :]).view(2, 2, 1, n) * wz).view(8, n)
    return index, weights


class HashEncoding(nn.Module):
    """(N, 3) points in [0, 1]^3 -> (N, levels * features) concatenated per-level features.

    Dense levels get a table of exactly (r + 1)^3 rows, hashed ones 2^log2_size. One parameter
    per level, concatenated for a single gather: the concatenation's backward hands each table a
    slice of one gradient, where slicing one flat parameter per level would materialize a zero
    gradient of the whole table for every level.
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
            nn.Parameter(
                torch.empty(
                    self.table_size if is_hashed(r, self.table_size) else (r + 1) ** 3, features
                ).uniform_(-1e-4, 1e-4)
            )
            for r in self.resolutions
        )
        rows = [t.shape[0] for t in self.tables]
        self.levels_per_gather: int | None = None  # None: all on CUDA, corner-major on CPU (see forward)
        # A buffer, so it follows the module to its device; not saved (the config rebuilds it).
        # int32 rows halve the traffic of the gather's indices, unless the tables end to end are too long.
        rows_dtype = torch.int32 if sum(rows) < 2**31 else torch.int64
        self.register_buffer(
            "level_offsets", torch.tensor([0, *rows[:-1]]).cumsum(0).to(rows_dtype), persistent=False
        )
        self._fused_constants: dict[torch.device, tuple] = {}  # `fused`'s per-level tensors, per device

    def fused(self, unit_points: Tensor, jacobian: bool):
        """The fused Triton encoding (`hashgrid_triton.FusedHashEncode`) of unit points: features,
        and with `jacobian` their derivative w.r.t. the point. No gradient w.r.t. the points."""
        from dreamfusion.fields.hashgrid_triton import FusedHashEncode, level_constants

        device = unit_points.device
        if device not in self._fused_constants:  # made once: a small copy to the GPU waits for it
            self._fused_constants[device] = level_constants(self)
        table = torch.cat(list(self.tables))
        return FusedHashEncode.apply(
            unit_points, table, self._fused_constants[device], self.table_size, jacobian
        )

    def forward(self, unit_points: Tensor) -> Tensor:
        if unit_points.device.type == "cpu" and self.levels_per_gather is None:
            if not torch.is_grad_enabled():
                return self._forward_no_grad(unit_points)
            return self._forward_corner_major(unit_points)
        n = len(unit_points)
        # Levels in groups, each a single gather from its tables end to end: all levels at once
        # on a GPU (where the time goes to launching kernels, not to the arithmetic); a CPU goes
        # a level at a time, corner-major, unless `levels_per_gather` is set.
        step = self.levels_per_gather or (len(self.resolutions) if unit_points.is_cuda else 1)
        out = []
        # float32 even under autocast: at 1024 cells per side, bfloat16 weights would quantize
        # positions (and so the normals) to a few cells.
        with torch.autocast(unit_points.device.type, enabled=False):
            points = unit_points.float()
            for first in range(0, len(self.resolutions), step):
                levels = range(first, min(first + step, len(self.resolutions)))
                index, weights = trilinear_corners(
                    points, self.resolutions[levels.start : levels.stop], self.table_size
                )
                table = self.tables[first]
                if len(levels) > 1:
                    # One gather from the group's tables end to end; the concatenation's backward
                    # hands each level's table its slice of the gradient.
                    table = torch.cat([self.tables[level] for level in levels])
                    offsets = self.level_offsets[levels.start : levels.stop] - self.level_offsets[first]
                    index = index.to(offsets.dtype)
                    index += offsets[:, None]
                corners = table.index_select(0, index.reshape(-1)).view(n * len(levels), 8, -1)
                weights = weights.reshape(n * len(levels), 8)
                if corners.is_cuda:
                    # cuBLAS is slow at millions of 1x8 @ 8xF products (they took 60% of a CUDA
                    # training step as bmm, with its gemv backward); elementwise kernels are not.
                    mixed = (weights[:, :, None] * corners).sum(1)
                else:
                    mixed = torch.bmm(weights[:, None, :], corners)  # faster than the above on CPU
                out.append(mixed.view(n, -1))
        return torch.cat(out, dim=-1)  # level-major: level l's F features at l F ...

    def _forward_corner_major(self, unit_points: Tensor) -> Tensor:
        """`forward` with autograd on a CPU (training): the same features and derivatives, of any
        order, in the corner-major layout of `corners_by_corner`, a level at a time.

        Each feature is gathered from its own column of the table, so every op of the forward, of
        the normals' backward and of the backward through them runs over contiguous rows of N: on
        a 2-core CPU that halves the time of a training step's encoding against the (N, L, 8)
        layout of `trilinear_corners`, whose short last dimension keeps the vector units idle.
        """
        n = len(unit_points)
        points_t = unit_points.float().t().contiguous()  # (3, N)
        out = []
        for level, resolution in enumerate(self.resolutions):
            index, weights = corners_by_corner(points_t, resolution, self.table_size)
            index = index.view(-1)
            table = self.tables[level]
            for f in range(table.shape[1]):
                rows = table[:, f].index_select(0, index).view(8, n)
                out.append((rows * weights).sum(0))
        # Stacked as rows and handed on transposed, so the gradients coming back are contiguous rows
        # too (the MLP reads a transposed input at no cost), where an (N, L F) stack would make the
        # backward gather strided columns.
        return torch.stack(out).t()  # (N, L F), level-major as the other paths'

    def _forward_no_grad(self, unit_points: Tensor) -> Tensor:
        """`forward` without autograd on a CPU (exports, previews): the same features to float
        rounding, without the (N, L, 8) intermediates whose short last dimension keeps a CPU's
        vector units idle.

        A level at a time, corner-major (see `corners_by_corner`): gather the 8 corners' rows,
        then for each feature weight them and sum over the corners. With autograd on, a CPU takes
        `_forward_corner_major` instead: the same layout, without the in-place `out=` writes and the
        rows read as int64 words, which autograd cannot follow.
        """
        n = len(unit_points)
        features = self.tables[0].shape[1]
        points_t = unit_points.float().t().contiguous()  # (3, N)
        out = torch.empty(len(self.resolutions) * features, n, device=unit_points.device)
        for level, resolution in enumerate(self.resolutions):
            index, weights = corners_by_corner(points_t, resolution, self.table_size)
            table = self.tables[level].detach().contiguous()
            if table.dtype == torch.float32 and features % 2 == 0:
                # Each row read as int64 words, two features a word: fewer, wider loads.
                rows = table.view(torch.int64).index_select(0, index.view(-1)).view(torch.float32)
            else:
                rows = table.index_select(0, index.view(-1))
            rows = rows.view(8, n, features)
            for f in range(features):
                torch.sum(rows[..., f] * weights, 0, out=out[level * features + f])
        return out.t()  # (N, L F), level-major as `forward`'s


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
        if not points.requires_grad and self._fused(points):  # the fused kernel has no point gradient
            return self.trunk(self.encoding.fused(unit.detach(), jacobian=False))
        return self.trunk(self.encoding(unit))

    def forward_with_normals(
        self, points: Tensor, create_graph: bool
    ) -> tuple[Tensor, Tensor, Tensor] | None:
        """(N, 3) -> density (N,), albedo (N, 3) and normals (N, 3) from the fused Triton encoding,
        whose closed-form Jacobian carries the normals through the encoding; None where that path
        does not run (`hash_kernel` "torch", a CPU, no Triton), and the caller differentiates the
        density itself. `create_graph` keeps the normals differentiable (training)."""
        if not self._fused(points):
            return None
        scale = 1.0 / (2.0 * self.bound_radius)
        x = points.detach().float()
        shifted = x * scale + 0.5
        feat, jac = self.encoding.fused(shifted.clamp(0.0, 1.0), jacobian=True)
        with torch.enable_grad():
            if not feat.requires_grad:  # no graph to the tables (previews): the normals still need one
                feat = feat.detach().requires_grad_(True)
            x = x.requires_grad_(True)  # the blob and the bound depend on the point itself
            h = self.trunk(feat)
            density = finish_density(x, self.density_head(h)[:, 0], self.cfg)
            albedo = torch.sigmoid(self.albedo_head(h))
            grad_feat, grad_x = torch.autograd.grad(density.sum(), (feat, x), create_graph=create_graph)
        # d unit / d point: the scale inside the cube, 0 where the clamp holds the point on its face.
        slope = ((shifted >= 0.0) & (shifted <= 1.0)).float() * scale
        grad = grad_x + (grad_feat[:, :, None] * jac).sum(1) * slope
        norm = torch.sqrt((grad * grad).sum(-1, keepdim=True).clamp(min=1e-20))
        return density, albedo, -grad / norm

    def _fused(self, points: Tensor) -> bool:
        if self.cfg.hash_kernel != "triton":
            return False
        from dreamfusion.fields import hashgrid_triton

        if not (points.is_cuda or hashgrid_triton.INTERPRET_ON_CPU):
            return False  # the kernels are for GPUs: a CPU says nothing of Triton
        return hashgrid_triton.runs_on(points.device)

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3) -> density (N,) >= 0, albedo (N, 3) in [0, 1]."""
        h = self._features(points)
        density = finish_density(points, self.density_head(h)[:, 0], self.cfg)
        return density, torch.sigmoid(self.albedo_head(h))

    def density(self, points: Tensor) -> Tensor:
        """(N, 3) -> (N,) density alone."""
        return finish_density(points, self.density_head(self._features(points))[:, 0], self.cfg)
