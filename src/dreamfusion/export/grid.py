"""The density on a regular grid, and the automatic iso-level that turns it into a surface.

The level rule (documented in docs/export.md): the mesh surface should sit where the renders
put it, that is where a ray's transmittance falls to 1/2 (optical depth ln 2). Every grid line
along +-x, +-y, +-z is such a ray of an orthographic view (a few thousand lines per view
suffice); for each line that becomes at least half opaque we read the density at its ln 2
crossing. Lines that meet the surface obliquely accumulate ln 2 at a lower density (a longer
path through the soft shell), so only crossings seen within 30 degrees of head-on (judged by
the density gradient) vote; the level is the median of their densities. A fixed level (say 10
or 25) is wrong for most fields: too low swells a soft field, too high empties a faint one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamfusion.fields.base import Field

LN2 = math.log(2.0)
HEAD_ON_COS = math.cos(math.radians(30.0))
VOTE_LINES = 128  # grid lines across each view that vote for the level, at least (every line up to 128^3)
BAND_ABOVE, BAND_BELOW = math.e, math.e**2  # factors of the level that bound the refined band
COARSE_STRIDE = 4  # grid vertices between the first, coarse queries of sample_density_near_surface


@dataclass
class DensityGrid:
    """Density sampled at the (R, R, R) vertices of the cube [-bound, bound]^3, endpoints included."""

    values: Tensor  # (R, R, R) indexed [x, y, z]
    bound: float

    @property
    def resolution(self) -> int:
        return self.values.shape[0]

    @property
    def spacing(self) -> float:
        return 2.0 * self.bound / (self.resolution - 1)


@dataclass
class Level:
    """The chosen iso-level and how it was chosen (for the export report)."""

    value: float
    rule: str  # "manual", "transmittance" or "half-max"
    votes: int  # grid lines whose crossing voted (transmittance rule)


def grid_points(resolution: int, bound: float, device: torch.device | str = "cpu") -> Tensor:
    """(R^3, 3) vertex positions of the grid, x slowest, z fastest (matches DensityGrid.values)."""
    axis = torch.linspace(-bound, bound, resolution, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


@torch.no_grad()
def sample_density(field: Field, resolution: int, chunk_points: int = 1 << 18) -> DensityGrid:
    """Query `field.density` on a resolution^3 grid over its bounding cube, a chunk at a time.

    The grid is built on the field's device, x-slab by x-slab so no (R^3, 3) tensor is ever held.
    """
    if resolution < 2:
        raise ValueError(f"grid resolution must be >= 2, got {resolution}")
    bound = float(field.bound_radius)
    axis = torch.linspace(-bound, bound, resolution, device=_device_of(field))
    return DensityGrid(_axis_density(field, (axis, axis, axis), chunk_points).clamp(min=0.0), bound)


def _line_crossings(
    values: Tensor, spacing: float, axis: int, flip: bool, step: int = 1
) -> tuple[Tensor, Tensor]:
    """Where each grid line along `axis` (entering from the far end if `flip`) reaches optical depth ln 2.

    Returns the density at each crossing (M,) and the crossing's grid index (M, 3), for the M
    lines that become at least half opaque, taking every `step`-th line across. Optical depth
    uses the trapezoid rule; the density is interpolated linearly between the two samples that
    bracket the crossing.
    """
    lines = values.movedim(axis, -1)[::step, ::step]  # (R', R', R): the other two axes first
    across = lines.shape[1]
    if flip:
        lines = lines.flip(-1)
    r = lines.shape[-1]
    lines = lines.reshape(-1, r)  # (L, R)
    segment = 0.5 * (lines[:, 1:] + lines[:, :-1]) * spacing  # (L, R-1)
    depth = torch.cat([torch.zeros_like(lines[:, :1]), segment.cumsum(-1)], dim=-1)  # (L, R)
    hit = depth[:, -1] > LN2
    line_ids = hit.nonzero()[:, 0]  # (M,)
    depth, lines = depth[line_ids], lines[line_ids]
    k = (depth < LN2).sum(-1).clamp(1, r - 1)[:, None]  # (M, 1) first sample at or past ln 2
    d0 = depth.gather(1, k - 1)
    s0, s1 = lines.gather(1, k - 1), lines.gather(1, k)
    # With density linear between the samples, optical depth is quadratic in the fraction f of
    # the segment: d0 + h (s0 f + (s1 - s0) f^2 / 2) = ln 2. The root in [0, 1], written in the
    # form that stays stable when s1 = s0:
    a, b, need = 0.5 * (s1 - s0) * spacing, s0 * spacing, (LN2 - d0).clamp(min=0.0)
    root = torch.sqrt((b * b + 4.0 * a * need).clamp(min=0.0))
    frac = (2.0 * need / (b + root).clamp(min=1e-12)).clamp(0.0, 1.0)
    sigma = (s0 + frac * (s1 - s0))[:, 0]

    along = k[:, 0] if not flip else r - 1 - k[:, 0]
    first, second = line_ids // across * step, line_ids % across * step
    index = torch.empty(line_ids.shape[0], 3, dtype=torch.long, device=values.device)
    others = [a for a in range(3) if a != axis]
    index[:, others[0]], index[:, others[1]], index[:, axis] = first, second, along
    return sigma, index


def _gradient_at(values: Tensor, index: Tensor) -> Tensor:
    """Central-difference density gradient (M, 3) at grid indices (M, 3) (one-sided at the faces)."""
    r = values.shape[0]
    grads = []
    for axis in range(3):
        hi, lo = index.clone(), index.clone()
        hi[:, axis] = (index[:, axis] + 1).clamp(max=r - 1)
        lo[:, axis] = (index[:, axis] - 1).clamp(min=0)
        diff = values[hi[:, 0], hi[:, 1], hi[:, 2]] - values[lo[:, 0], lo[:, 1], lo[:, 2]]
        grads.append(diff / (hi[:, axis] - lo[:, axis]).clamp(min=1))
    return torch.stack(grads, dim=-1)


def auto_level(grid: DensityGrid) -> Level:
    """The transmittance rule of this module's docstring; half the peak density when no line is opaque.

    The result always lies strictly between 0 and the grid's maximum, so marching cubes finds a
    surface whenever the grid holds any density at all.
    """
    values = grid.values
    peak = float(values.max())
    if not peak > 0.0:
        raise ValueError("the field is empty (zero density everywhere in its bounding sphere)")
    votes = []
    # The median of a few thousand votes per view is as good as that of all R^2 lines, and the
    # rule then costs about the same at every resolution.
    step = max(1, grid.resolution // VOTE_LINES)
    for axis in range(3):
        for flip in (False, True):
            sigma, index = _line_crossings(values, grid.spacing, axis, flip, step)
            gradient = _gradient_at(values, index)
            cos = gradient[:, axis].abs() / gradient.norm(dim=-1).clamp(min=1e-12)
            votes.append(sigma[cos >= HEAD_ON_COS])
    voted = torch.cat(votes)
    if voted.numel() > 0:
        level = float(voted.median())
        if 0.0 < level < peak:
            return Level(level, "transmittance", int(voted.numel()))
    return Level(0.5 * peak, "half-max", 0)


def _axis_density(field: Field, axes: tuple[Tensor, Tensor, Tensor], chunk_points: int) -> Tensor:
    """Density at the (X, Y, Z) grid spanned by three 1-D coordinate tensors, x-slab by x-slab."""
    xs_all, ys, zs = axes
    yz = torch.stack(torch.meshgrid(ys, zs, indexing="ij"), dim=-1).reshape(-1, 2)  # (Y Z, 2)
    values = torch.empty(len(xs_all), len(yz), device=xs_all.device)
    slabs = max(1, chunk_points // len(yz))
    for start in range(0, len(xs_all), slabs):
        xs = xs_all[start : start + slabs]
        points = torch.cat([xs[:, None, None].expand(-1, len(yz), 1), yz[None].expand(len(xs), -1, -1)], -1)
        values[start : start + len(xs)] = field.density(points.reshape(-1, 3)).float().reshape(len(xs), -1)
    return values.reshape(len(xs_all), len(ys), len(zs))


def _upsample(coarse: Tensor, index: Tensor, resolution: int) -> Tensor:
    """Trilinear interpolation of values at grid indices `index` (K,) per axis onto all R indices."""
    fine = torch.arange(resolution, device=coarse.device)
    cell = (torch.searchsorted(index, fine, right=True) - 1).clamp(0, len(index) - 2)  # (R,)
    frac = (fine - index[cell]).float() / (index[cell + 1] - index[cell]).float()
    out = coarse
    for axis in range(3):
        lo, hi = out.index_select(axis, cell), out.index_select(axis, cell + 1)
        shape = [1, 1, 1]
        shape[axis] = resolution
        w = frac.reshape(shape)
        out = lo * (1.0 - w) + hi * w
    return out


def _cell_members(index: Tensor, resolution: int) -> Tensor:
    """(K-1, R) float: 1 where fine index i lies in coarse cell k (its two corner indices included)."""
    fine = torch.arange(resolution, device=index.device)
    return ((fine >= index[:-1, None]) & (fine <= index[1:, None])).float()


@torch.no_grad()
def sample_density_near_surface(
    field: Field,
    resolution: int,
    level: float | None = None,
    chunk_points: int = 1 << 18,
    stride: int = COARSE_STRIDE,
) -> tuple[DensityGrid, Level]:
    """The density grid of `sample_density`, queried exactly only where the surface can be; and the level.

    The field is first sampled every `stride` grid vertices; the grid is filled by trilinear
    interpolation of those, and then queried exactly at every vertex of each coarse cell whose
    corners come near the level (within BAND_ABOVE above, BAND_BELOW below): the marching-cubes surface
    only reads vertices of cells that the level crosses. With the automatic level, it is chosen
    on the interpolated grid, the band refined, chosen again on the refined grid, and cells the
    new level reaches are refined in turn. A feature thinner than a coarse cell that never
    raises a coarse corner near the level is missed: the stride stays small (a few vertices).
    """
    if resolution < 4 * stride or stride <= 1:
        grid = sample_density(field, resolution, chunk_points)
        return grid, _choose_level(grid, level)
    device = _device_of(field)
    bound = float(field.bound_radius)
    axis = torch.linspace(-bound, bound, resolution, device=device)
    index = torch.arange(0, resolution, stride, device=device)
    if int(index[-1]) != resolution - 1:
        index = torch.cat([index, index.new_tensor([resolution - 1])])
    coarse = _axis_density(field, (axis[index],) * 3, chunk_points).clamp(min=0.0)
    grid = DensityGrid(_upsample(coarse, index, resolution), bound)
    corners = torch.stack(
        [
            coarse[i : len(index) - 1 + i, j : len(index) - 1 + j, k : len(index) - 1 + k]
            for i in (0, 1)
            for j in (0, 1)
            for k in (0, 1)
        ]
    )  # (8, K-1, K-1, K-1)
    low, high = corners.amin(0), corners.amax(0)
    members = _cell_members(index, resolution)  # (K-1, R)
    exact = torch.zeros(resolution, resolution, resolution, dtype=torch.bool, device=device)
    chosen = _choose_level(grid, level)
    for _ in range(4):
        # Wider below the level: the thin density outside the surface adds up along each line to
        # the optical depth that places the automatic level.
        band = (low < chosen.value * BAND_ABOVE) & (high > chosen.value / BAND_BELOW)
        # Every fine vertex of a band cell: a separable (cells x axis) membership product.
        t = torch.einsum("abc,ck->abk", band.float(), members)
        t = torch.einsum("abk,bj->ajk", t, members)
        wanted = torch.einsum("ajk,ai->ijk", t, members) > 0.5
        todo = wanted & ~exact
        if not todo.any():
            break
        points = torch.stack([axis[i] for i in todo.nonzero(as_tuple=True)], dim=-1)  # (M, 3)
        grid.values[todo] = torch.cat(
            [field.density(chunk).float() for chunk in points.split(chunk_points)]
        ).clamp(min=0.0)
        exact |= todo
        if level is not None:
            break
        chosen = _choose_level(grid, level)
    return grid, chosen


def _choose_level(grid: DensityGrid, level: float | None) -> Level:
    return auto_level(grid) if level is None else Level(float(level), "manual", 0)


def _device_of(field: Field) -> torch.device:
    param = next(iter(field.parameters()), None) if isinstance(field, torch.nn.Module) else None
    return param.device if param is not None else torch.device("cpu")
