"""Occupancy of a field on a voxel grid, and its IoU with the world's ground truth.

Occupancy is "density above DENSITY_LEVEL" at the centers of a resolution^3 grid of cells over
the cube [-bound, bound]^3 (bound defaults to the field's bounding radius, so no density escapes
the grid). The level is fixed in world units, so IoUs of fields with different bounds or grids
compare: it is the density at which one reference voxel (edge 0.025, the cell of a 64^3 grid over
the default bounding cube [-0.8, 0.8]^3) of material is 50% opaque, ln 2 / 0.025 = 27.7. See
docs/evaluation.md for why.

IoU after alignment searches the isotropic scale s and vertical shift dz that make the prediction,
scaled about the origin and then shifted along z, best match the truth: pred((x - dz e_z) / s)
against truth(x). It answers "is the shape right apart from its size and height?".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamfusion.fields.base import Field
from dreamfusion.render.occupancy import hidden_cells
from dreamfusion.world import OBJECTS, WorldObject

REFERENCE_VOXEL = 0.025
"""Edge of the reference voxel: 1.6 / 64, a cell of the 64^3 grid over the default bounding cube."""

DENSITY_LEVEL = math.log(2.0) / REFERENCE_VOXEL
"""Occupancy threshold (about 27.7): a reference voxel of this density transmits exactly half the light."""

SUPPORT_FLOOR = 0.1
"""Cells below this fraction of the peak density are left out of the plateau estimate (empty space)."""


def support_level(density: Tensor) -> float:
    """Half the field's plateau density: the iso-level of its geometric support.

    The plateau is the 90th percentile of the densities above SUPPORT_FLOOR of the maximum (a
    robust peak: a lone floater cannot set it). Half of it is where a step-like density profile
    crosses from outside to inside, whatever the density scale, even for a field too faint for
    the render (transmittance) level, which then sits inside the object. Raises ValueError for an
    empty field.
    """
    peak = float(density.max())
    if not peak > 0.0:
        raise ValueError("the field is empty (zero density everywhere in its bounding cube)")
    body = density[density > SUPPORT_FLOOR * peak].float()
    if body.numel() > 1 << 24:  # torch.quantile's input limit; a strided subsample keeps the estimate
        body = body[:: body.numel() // (1 << 24) + 1]
    return 0.5 * float(torch.quantile(body, 0.9))


def opaque_occupancy(density: Tensor, bound: float) -> Tensor:
    """(R, R, R) bool: the cells that light from outside the grid reaches less than half
    transmitted, from each of the six axis directions (optical depth >= ln 2 to every face).

    This is the solid that renders show: the same half-transmittance rule as the render level,
    integrated along rays rather than applied cell by cell, so an opaque body whose hidden inside
    is a noisy plateau around the level still counts as full, while a hole open along an axis
    (a torus seen from above) stays empty.
    """
    return hidden_cells(density, 2.0 * bound / density.shape[0])


COARSE_SCALES = tuple(float(s) for s in torch.logspace(math.log10(0.6), math.log10(1.6), 15))
"""Scales tried by the alignment search before refining (geometric, 0.6 to 1.6, about 7% apart)."""

COARSE_SHIFTS = tuple(float(s) for s in torch.linspace(-0.2, 0.2, 9))
"""Vertical shifts tried by the alignment search before refining (0.05 apart)."""


def field_device(field: Field) -> torch.device:
    """The device of a field's parameters (CPU for a field without any)."""
    params = field.parameters() if isinstance(field, torch.nn.Module) else iter(())
    first = next(iter(params), None)
    if first is None and isinstance(field, torch.nn.Module):
        first = next(iter(field.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def grid_points(resolution: int, bound: float, device: torch.device | str = "cpu") -> Tensor:
    """(R^3, 3) cell centers of a resolution^3 grid over [-bound, bound]^3, x slowest, z fastest."""
    step = 2.0 * bound / resolution
    axis = torch.linspace(-bound + step / 2, bound - step / 2, resolution, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


@torch.no_grad()
def density_grid(
    field: Field, resolution: int = 64, bound: float | None = None, chunk: int = 1 << 16
) -> Tensor:
    """Field density at the cell centers: (R, R, R) float32 indexed [x, y, z], on the field's device."""
    bound = float(field.bound_radius) if bound is None else bound
    points = grid_points(resolution, bound, field_device(field))
    values = torch.cat([field.density(points[i : i + chunk]).float() for i in range(0, len(points), chunk)])
    return values.reshape(resolution, resolution, resolution)


def occupancy_grid(
    field: Field, resolution: int = 64, bound: float | None = None, level: float = DENSITY_LEVEL
) -> Tensor:
    """(R, R, R) bool: the field's density exceeds `level` at each cell center."""
    return density_grid(field, resolution, bound) > level


@functools.lru_cache(maxsize=64)
def _truth_grid(obj: WorldObject, resolution: int, bound: float, device: str) -> Tensor:
    return obj.occupancy(grid_points(resolution, bound, device)).reshape(resolution, resolution, resolution)


def truth_grid(obj: WorldObject | str, resolution: int = 64, bound: float = 0.8, device="cpu") -> Tensor:
    """(R, R, R) bool ground-truth occupancy of a world object at the same cell centers (cached)."""
    obj = OBJECTS[obj] if isinstance(obj, str) else obj
    return _truth_grid(obj, resolution, float(bound), str(torch.device(device)))


def iou(pred: Tensor, gt: Tensor) -> float:
    """|pred & gt| / |pred | gt| of two boolean grids of the same shape (1.0 when both are empty)."""
    if pred.shape != gt.shape:
        raise ValueError(f"grids differ in shape: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    union = (pred | gt).sum()
    if union == 0:
        return 1.0
    return float((pred & gt).sum() / union)


def resample(values: Tensor, bound: float, points: Tensor) -> Tensor:
    """Trilinear interpolation at points (N, 3) of a cell-centered grid (R, R, R) over [-bound, bound]^3.

    Zero outside the grid: a field's density is zero outside its bounding sphere anyway.
    """
    # grid_sample reads (x, y, z) as (W, H, D); the grid is indexed [x, y, z] = [D, H, W].
    coords = (points / bound).flip(-1).reshape(1, -1, 1, 1, 3).to(values.dtype)
    out = F.grid_sample(
        values[None, None], coords, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.reshape(-1)


def resample_occupancy(occupied: Tensor, bound: float, points: Tensor) -> Tensor:
    """Occupancy (N,) bool at points (N, 3) from a cell-centered boolean grid (R, R, R).

    Interpolates the 0/1 occupancy and keeps what is at least half occupied, which puts the
    surface halfway between an inside and an outside cell center. Interpolating the density
    instead and thresholding it would swell a sharp field by up to a cell: a jump from 0 to a
    peak of 1000 crosses a level of 28 within 3% of the outside cell.
    """
    return resample(occupied.float(), bound, points) >= 0.5


def aligned_points(points: Tensor, scale: float, shift: float) -> Tensor:
    """Truth-frame points (N, 3) -> the field-frame points that alignment (scale, shift) maps onto them."""
    return (points - points.new_tensor((0.0, 0.0, shift))) / scale


@dataclass
class Alignment:
    """The best isotropic scale and vertical shift of the prediction, and the IoU they reach."""

    iou: float
    scale: float
    """Multiply the prediction by this to match the truth's size (> 1: the prediction is too small)."""
    shift: float
    """Then move it up by this (world units)."""


def aligned_iou(
    density: Tensor,
    bound: float,
    gt: WorldObject | str,
    level: float = DENSITY_LEVEL,
    scales: Iterable[float] = COARSE_SCALES,
    shifts: Iterable[float] = COARSE_SHIFTS,
    refine: bool = True,
) -> Alignment:
    """Search scale x shift on a grid, then (with `refine`) on a 5x5 grid a third as wide around the best.

    `density` (R, R, R) is the field's density grid over [-bound, bound]^3 (see `density_grid`);
    the truth is evaluated at the same cell centers. Always tries (1, 0), so the result is never
    below the IoU at true scale.
    """
    resolution = density.shape[0]
    points = grid_points(resolution, bound, density.device)
    truth = truth_grid(gt, resolution, bound, density.device).reshape(-1)

    occupied = density > level

    def score(scale: float, shift: float) -> float:
        if scale == 1.0 and shift == 0.0:
            return iou(occupied.reshape(-1), truth)
        return iou(resample_occupancy(occupied, bound, aligned_points(points, scale, shift)), truth)

    scales, shifts = list(scales), list(shifts)
    best = Alignment(score(1.0, 0.0), 1.0, 0.0)
    for s in scales:
        for dz in shifts:
            value = score(s, dz)
            if value > best.iou:
                best = Alignment(value, s, dz)
    if refine and len(scales) > 1 and len(shifts) > 1:
        ratio = (scales[-1] / scales[0]) ** (1.0 / (len(scales) - 1))
        dz_step = (shifts[-1] - shifts[0]) / (len(shifts) - 1)
        center = best
        for k in torch.linspace(-1.0, 1.0, 5).tolist():
            for j in torch.linspace(-1.0, 1.0, 5).tolist():
                s, dz = center.scale * ratio ** (k / 3.0), center.shift + j * dz_step / 3.0
                value = score(s, dz)
                if value > best.iou:
                    best = Alignment(value, s, dz)
    return best


def identify_shape(
    density: Tensor,
    bound: float,
    level: float = DENSITY_LEVEL,
    candidates: Iterable[str] | None = None,
    aligned: bool = False,
) -> tuple[str, dict[str, float]]:
    """The world object whose ground truth has the highest IoU with the prediction, and every IoU.

    "none" when the prediction overlaps no candidate at all (an empty field, for one).

    aligned=False compares at true scale (the world's sizes are part of its shapes); aligned=True
    takes each candidate's best scale and shift first (slower: one search per candidate).
    """
    names = list(candidates) if candidates is not None else list(OBJECTS)
    if aligned:
        scores = {name: aligned_iou(density, bound, name, level).iou for name in names}
    else:
        occupied = density > level
        scores = {
            name: iou(occupied, truth_grid(name, density.shape[0], bound, density.device)) for name in names
        }
    best = max(scores, key=scores.__getitem__)
    return (best if scores[best] > 0.0 else "none"), scores
