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

from dreamfusion.fields.base import Field, device_of

LN2 = math.log(2.0)
HEAD_ON_COS = math.cos(math.radians(30.0))
VOTE_LINES = 128  # grid lines across each view that vote for the level, at least (every line up to 128^3)
COARSE_STRIDE = 4  # grid vertices between the first, coarse queries of sample_density_near_surface
# Multiples of the automatic level whose surfaces are traced exactly as well: the level rule reads
# the shell around the surface, the density outside it (which adds up along each line to the
# optical depth that places the level) and the gradient just inside (head-on lines or oblique).
SHELL = (math.exp(0.5), math.exp(-1.0), math.exp(-2.0))
LEVEL_SETTLED = 1e-3  # relative change of the automatic level that ends the tracing rounds
LOG_FLOOR = 1e-6  # densities below this fraction of the peak are empty space to the interpolation


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
    axis = torch.linspace(-bound, bound, resolution, device=device_of(field))
    return DensityGrid(_axis_density(field, (axis, axis, axis), chunk_points).clamp(min=0.0), bound)


def _opaque_lines(values: Tensor, spacing: float, axis: int, step: int) -> tuple[Tensor, Tensor, Tensor]:
    """The grid lines along `axis`, every `step`-th across, whose optical depth end to end exceeds ln 2.

    Returns their samples (M, R) and the grid indices of each line along the other two axes
    (M,) and (M,), in order. Only these lines can vote; the rest of the grid is read once, for
    the sums.
    """
    lines = values.movedim(axis, -1)[::step, ::step]  # (R', R', R): the other two axes first
    total = (lines.sum(-1) - 0.5 * (lines[..., 0] + lines[..., -1])) * spacing  # trapezoid rule
    first, second = (total > LN2).nonzero(as_tuple=True)
    return lines[first, second], first * step, second * step


def _line_crossings(lines: Tensor, spacing: float, flip: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Where each line (M, R) of samples (entered from its far end if `flip`) reaches optical depth ln 2.

    Returns the density at each crossing, the index along the line of the first sample at or past
    it, and which lines reach ln 2 at all (M,) bool (every line that `_opaque_lines` gives, but
    for rounding); the first two hold only those lines. Optical depth uses the trapezoid rule;
    the density is interpolated linearly between the two samples that bracket the crossing.
    """
    if flip:
        lines = lines.flip(-1)
    r = lines.shape[-1]
    segment = 0.5 * (lines[:, 1:] + lines[:, :-1]) * spacing  # (M, R-1)
    depth = torch.cat([torch.zeros_like(lines[:, :1]), segment.cumsum(-1)], dim=-1)  # (M, R)
    hit = depth[:, -1] > LN2
    depth, lines = depth[hit], lines[hit]
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
    return sigma, along, hit


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
        lines, first, second = _opaque_lines(values, grid.spacing, axis, step)
        others = [a for a in range(3) if a != axis]
        for flip in (False, True):
            sigma, along, hit = _line_crossings(lines, grid.spacing, flip)
            index = torch.empty(len(sigma), 3, dtype=torch.long, device=values.device)
            index[:, others[0]], index[:, others[1]], index[:, axis] = first[hit], second[hit], along
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


def _interpolation_weights(index: Tensor, resolution: int) -> Tensor:
    """(R, K) weights of linear interpolation from samples at grid indices `index` (K,) to all R indices.

    Each row holds at most two non-zero weights; a sampled index's row is one-hot, so its value
    comes through a product with these weights unchanged.
    """
    fine = torch.arange(resolution, device=index.device)
    cell = (torch.searchsorted(index, fine, right=True) - 1).clamp(0, len(index) - 2)  # (R,)
    frac = (fine - index[cell]).float() / (index[cell + 1] - index[cell]).float()
    weights = torch.zeros(resolution, len(index), device=index.device)
    weights[fine, cell] = 1.0 - frac
    weights[fine, cell + 1] = frac
    return weights


def _upsample(coarse: Tensor, index: Tensor, resolution: int) -> Tensor:
    """Trilinear interpolation of (K, K, K) values at grid indices `index` (K,) per axis onto all R indices.

    Three matrix products with the (R, K) weights, one per axis: the (R, R, R) result is written
    once, with no full-size temporaries.
    """
    weights = _interpolation_weights(index, resolution)
    k, r = len(index), resolution
    out = (weights @ coarse.reshape(k, k * k)).reshape(r, k, k)  # along x
    out = torch.matmul(weights, out)  # (R, K) @ (R, K, K): along y
    return out @ weights.t()  # along z


def _upsample_log(coarse: Tensor, index: Tensor, resolution: int) -> Tensor:
    """`_upsample` of the log-density: geometric rather than arithmetic interpolation.

    A density falls off about exponentially outside a surface (a soft shell; an exp activation),
    which linear interpolation overestimates between a dense and an empty sample, and the log
    follows. Densities below LOG_FLOOR of the peak count as empty: space whose samples are all
    empty stays exactly zero, as with linear interpolation.
    """
    peak = float(coarse.max())
    if not peak > 0.0:
        return _upsample(coarse, index, resolution)
    floor = LOG_FLOOR * peak
    values = _upsample(coarse.clamp(min=floor).log(), index, resolution).exp()
    return values.masked_fill_(values <= floor * (1.0 + 1e-3), 0.0)


def _corner_reduce(values: Tensor, op) -> Tensor:
    """(X, Y, Z) -> (X-1, Y-1, Z-1): `op` over each cell's 8 corners, one axis at a time."""
    values = op(values[:-1], values[1:])
    values = op(values[:, :-1], values[:, 1:])
    return op(values[:, :, :-1], values[:, :, 1:])


def _density(field: Field, points: Tensor, chunk_points: int) -> Tensor:
    """field.density at points (N, 3), a chunk at a time, as non-negative float32."""
    parts = [field.density(chunk).float() for chunk in points.split(chunk_points)]
    return torch.cat(parts).clamp(min=0.0) if parts else points.new_zeros(0)


class _SurfaceTracer:
    """The grid of `sample_density_near_surface` as it fills in: coarse samples, interpolation, and
    the exact values of every surface traced so far."""

    def __init__(self, field: Field, resolution: int, stride: int, chunk_points: int):
        device = device_of(field)
        bound = float(field.bound_radius)
        self.field, self.chunk_points = field, chunk_points
        self.axis = torch.linspace(-bound, bound, resolution, device=device)
        index = torch.arange(0, resolution, stride, device=device)
        if int(index[-1]) != resolution - 1:
            index = torch.cat([index, index.new_tensor([resolution - 1])])
        self.index = index
        self.coarse = _axis_density(field, (self.axis[index],) * 3, chunk_points).clamp(min=0.0)
        self.grid = DensityGrid(_upsample_log(self.coarse, index, resolution), bound)
        sampled = (index[:, None, None], index[None, :, None], index[None, None, :])
        self.grid.values[sampled] = self.coarse  # the samples themselves, not their exp(log())
        self.exact = torch.zeros(resolution, resolution, resolution, dtype=torch.bool, device=device)
        self.exact[sampled] = True
        self.traced: tuple[Tensor, Tensor] | None = None  # bounding box of the traced vertices
        r = resolution
        self.steps = torch.tensor(
            [(dx, dy, dz) for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)], device=device
        )  # (8, 3) corner offsets of a cell
        # (8,) offsets in the flat grid; a sum of products, as CUDA has no integer matmul.
        self.corners_of = (self.steps * torch.tensor([r * r, r, 1], device=device)).sum(dim=1)

    def _reach(self, level: float) -> tuple[Tensor, Tensor] | None:
        """Inclusive vertex bounds (3,), (3,) of a box outside which no vertex of the grid exceeds
        `level`; None when none does.

        A sampled or traced vertex above the level lies in the box of such samples or in the
        box of the traced vertices; an interpolated one is at most the largest sample at the
        corners of its coarse cell, so it lies within one coarse cell of a sample above the level.
        """
        boxes = []
        above = (self.coarse > level).nonzero()  # (S, 3) coarse indices
        if len(above) > 0:
            last = len(self.index) - 1
            boxes.append(
                (
                    self.index[(above.amin(0) - 1).clamp(min=0)],
                    self.index[(above.amax(0) + 1).clamp(max=last)],
                )
            )
        if self.traced is not None:
            boxes.append(self.traced)
        if not boxes:
            return None
        return torch.stack([b[0] for b in boxes]).amin(0), torch.stack([b[1] for b in boxes]).amax(0)

    def _cells_to_trace(self, level: float) -> Tensor:
        """Cells the level crosses that still hold an interpolated corner, as flat grid indices of
        their lowest corners (M,). Only the box that `_reach` bounds is read."""
        reach = self._reach(level)
        if reach is None:
            return self.index.new_zeros(0)
        r = self.grid.resolution
        lo, hi = (reach[0] - 1).clamp(min=0).tolist(), reach[1].tolist()  # a crossed cell's lowest corner
        box = (slice(lo[0], hi[0] + 1), slice(lo[1], hi[1] + 1), slice(lo[2], hi[2] + 1))
        above = self.grid.values[box] > level
        crossed = _corner_reduce(above, torch.logical_or) & ~_corner_reduce(above, torch.logical_and)
        cells = (crossed & ~_corner_reduce(self.exact[box], torch.logical_and)).nonzero()  # (M, 3)
        cells += torch.tensor(lo, device=cells.device)
        return (cells[:, 0] * r + cells[:, 1]) * r + cells[:, 2]

    def trace(self, level: float) -> int:
        """Query the field at every corner of every cell the `level` surface crosses; returns the
        points queried.

        Starting from the cells the level crosses on the grid as it is, the corners not yet exact
        are queried; a surface that, with the exact values, crosses a face into a neighbouring cell
        makes that cell crossed (the face's corners are exact and straddle the level), so the
        cells around the new vertices are checked in turn, until no crossed cell holds an
        interpolated corner. Every surface that the grid shows somewhere is so followed to its
        whole exact extent, however thin; marching cubes then reads only exact values there.
        """
        r = self.grid.resolution
        flat_values, flat_exact = self.grid.values.view(-1), self.exact.view(-1)
        cells = self._cells_to_trace(level)
        queried = 0
        while len(cells) > 0:
            corners = (cells[:, None] + self.corners_of).reshape(-1)
            todo = torch.unique(corners[~flat_exact[corners]])
            if len(todo) == 0:
                break
            ijk = torch.stack((todo // (r * r), todo // r % r, todo % r), dim=-1)  # (T, 3)
            flat_values[todo] = _density(self.field, self.axis[ijk], self.chunk_points)
            flat_exact[todo] = True
            queried += len(todo)
            lo, hi = ijk.amin(0), ijk.amax(0)
            if self.traced is not None:
                lo, hi = torch.minimum(lo, self.traced[0]), torch.maximum(hi, self.traced[1])
            self.traced = (lo, hi)
            # The cells that hold a new vertex: those the level crosses now, unless exact already.
            around = (ijk[:, None, :] - self.steps).reshape(-1, 3)
            around = around[((around >= 0) & (around <= r - 2)).all(-1)]
            around = torch.unique((around[:, 0] * r + around[:, 1]) * r + around[:, 2])
            at = around[:, None] + self.corners_of  # (C, 8)
            above = flat_values[at] > level
            cells = around[above.any(-1) & ~above.all(-1) & ~flat_exact[at].all(-1)]
        return queried


@torch.no_grad()
def sample_density_near_surface(
    field: Field,
    resolution: int,
    level: float | None = None,
    chunk_points: int = 1 << 18,
    stride: int = COARSE_STRIDE,
) -> tuple[DensityGrid, Level]:
    """The density grid of `sample_density`, queried exactly only where the surface is; and the level.

    The field is first sampled every `stride` grid vertices and the rest of the grid interpolated
    (geometrically: `_upsample_log`). Then the surface at the level is traced
    (`_SurfaceTracer.trace`): every vertex of every cell it crosses is queried exactly, so
    marching cubes meets the values of the fully sampled grid wherever it makes a face. With the
    automatic level, chosen first on the interpolated grid, the surfaces at SHELL multiples of it
    are traced too: the level rule reads the shell around the surface, which they pin down. The
    level is then chosen again, and the rounds repeat (at most 4) until it settles; its surface
    is traced last. A surface the interpolated grid does not show anywhere (a part thinner than
    about `stride` vertices that no coarse sample comes near) is missed: the stride stays small.
    """
    if resolution < 4 * stride or stride <= 1:
        grid = sample_density(field, resolution, chunk_points)
        return grid, _choose_level(grid, level)
    tracer = _SurfaceTracer(field, resolution, stride, chunk_points)
    chosen = _choose_level(tracer.grid, level)
    for _ in range(4):
        tracer.trace(chosen.value)
        if level is not None:
            return tracer.grid, chosen
        for factor in SHELL:
            tracer.trace(chosen.value * factor)
        previous, chosen = chosen, _choose_level(tracer.grid, level)
        if abs(chosen.value - previous.value) <= LEVEL_SETTLED * previous.value:
            break
    tracer.trace(chosen.value)
    return tracer.grid, chosen


def _choose_level(grid: DensityGrid, level: float | None) -> Level:
    return auto_level(grid) if level is None else Level(float(level), "manual", 0)
