"""The density on a regular grid, and the automatic iso-level that turns it into a surface.

The level rule (documented in docs/export.md): the mesh surface should sit where the renders
put it, that is where a ray's transmittance falls to 1/2 (optical depth ln 2). Every grid line
along +-x, +-y, +-z is such a ray of an orthographic view; for each line that becomes at least
half opaque we read the density at its ln 2 crossing. Lines that meet the surface obliquely
accumulate ln 2 at a lower density (a longer path through the soft shell), so only crossings
seen within 30 degrees of head-on (judged by the density gradient) vote; the level is the
median of their densities. A fixed level (say 10 or 25) is wrong for most fields: too low
swells a soft field, too high empties a faint one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamfusion.fields.base import Field

LN2 = math.log(2.0)
HEAD_ON_COS = math.cos(math.radians(30.0))


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
    param = next(iter(field.parameters()), None) if isinstance(field, torch.nn.Module) else None
    device = param.device if param is not None else torch.device("cpu")
    bound = float(field.bound_radius)
    axis = torch.linspace(-bound, bound, resolution, device=device)
    yz = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)  # (R^2, 2)
    values = torch.empty(resolution, resolution * resolution, device=device)
    slabs = max(1, chunk_points // (resolution * resolution))
    for start in range(0, resolution, slabs):
        xs = axis[start : start + slabs]  # (s,)
        points = torch.cat(
            [xs[:, None, None].expand(-1, yz.shape[0], 1), yz[None].expand(xs.shape[0], -1, -1)], dim=-1
        ).reshape(-1, 3)
        values[start : start + xs.shape[0]] = field.density(points).float().reshape(xs.shape[0], -1)
    return DensityGrid(values.reshape(resolution, resolution, resolution).clamp(min=0.0), bound)


def _line_crossings(values: Tensor, spacing: float, axis: int, flip: bool) -> tuple[Tensor, Tensor]:
    """Where each grid line along `axis` (entering from the far end if `flip`) reaches optical depth ln 2.

    Returns the density at each crossing (M,) and the crossing's grid index (M, 3), for the M
    lines that become at least half opaque. Optical depth uses the trapezoid rule; the density
    is interpolated linearly between the two samples that bracket the crossing.
    """
    lines = values.movedim(axis, -1)  # (R, R, R): the other two axes first, in order
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
    first, second = line_ids // r, line_ids % r
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
    for axis in range(3):
        for flip in (False, True):
            sigma, index = _line_crossings(values, grid.spacing, axis, flip)
            gradient = _gradient_at(values, index)
            cos = gradient[:, axis].abs() / gradient.norm(dim=-1).clamp(min=1e-12)
            votes.append(sigma[cos >= HEAD_ON_COS])
    voted = torch.cat(votes)
    if voted.numel() > 0:
        level = float(voted.median())
        if 0.0 < level < peak:
            return Level(level, "transmittance", int(voted.numel()))
    return Level(0.5 * peak, "half-max", 0)
