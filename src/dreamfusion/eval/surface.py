"""Points on the true surface, and the metrics measured there: surface color and Chamfer distance.

Surface points come from the object's exact SDF: points drawn uniformly in the cube, kept when
within a thin band of the surface (so they are close to uniform in area), then projected onto the
zero level along the SDF gradient, p <- p - sdf(p) grad sdf(p), a few times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree
from torch import Tensor

from dreamfusion.eval.geometry import REFERENCE_VOXEL, aligned_points, field_device
from dreamfusion.fields.base import Field
from dreamfusion.world import COLOR_NAMES, COLORS, OBJECTS, WorldObject

ALBEDO_INSET = 0.5 * REFERENCE_VOXEL
"""Read the field's albedo this far inside the true surface: where the rendering weights of a
solid field peak, rather than on the edge where its density (and what it learned) fades out."""

_STEP = 1e-4  # finite-difference step of the SDF gradient; the SDFs are float32


def sdf_gradient(obj: WorldObject, points: Tensor) -> Tensor:
    """Unit SDF gradient (N, 3) by central differences (the outward normal on the surface)."""
    offsets = torch.eye(3, dtype=points.dtype, device=points.device) * _STEP
    plus = obj.sdf((points[:, None, :] + offsets).reshape(-1, 3)).reshape(-1, 3)
    minus = obj.sdf((points[:, None, :] - offsets).reshape(-1, 3)).reshape(-1, 3)
    return torch.nn.functional.normalize(plus - minus, dim=-1)


def surface_points(
    obj: WorldObject | str,
    n: int = 8192,
    seed: int = 0,
    band: float = 0.02,
    bound: float = 0.7,
    device: torch.device | str = "cpu",
    tolerance: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """`n` points (n, 3) on the object's surface and their outward normals (n, 3).

    Candidates are uniform in [-bound, bound]^3 (the world's objects lie within radius 0.65) and
    kept within `band` of the surface; after projection, points still farther than `tolerance`
    from it (on a crease) are dropped. Deterministic for a seed.
    """
    obj = OBJECTS[obj] if isinstance(obj, str) else obj
    generator = torch.Generator().manual_seed(seed)
    kept: list[Tensor] = []
    count = 0
    for _ in range(1000):
        candidates = ((torch.rand(1 << 17, 3, generator=generator) * 2.0 - 1.0) * bound).to(device)
        candidates = candidates[obj.sdf(candidates).abs() < band]
        for _ in range(3):
            candidates = candidates - obj.sdf(candidates)[:, None] * sdf_gradient(obj, candidates)
        candidates = candidates[obj.sdf(candidates).abs() < tolerance]
        kept.append(candidates)
        count += len(candidates)
        if count >= n:
            break
    points = torch.cat(kept)[:n]
    if len(points) < n:
        raise RuntimeError(f"found only {len(points)} of {n} surface points of {obj.name}")
    return points, sdf_gradient(obj, points)


def body_mask(obj: WorldObject, points: Tensor) -> Tensor:
    """(N,) bool: the point's nearest part takes the caption color (not a fixed one such as a nose)."""
    free = torch.tensor([part.color is None for part in obj.parts], device=points.device)
    return free[obj.part_distances(points).argmin(dim=-1)]


def nearest_color(rgb: Tensor) -> str:
    """The world's named color nearest (Euclidean in RGB) to an albedo (3,)."""
    palette = rgb.new_tensor([COLORS[name] for name in COLOR_NAMES])  # (C, 3)
    return COLOR_NAMES[int((palette - rgb).norm(dim=-1).argmin())]


@dataclass
class ColorResult:
    error: float
    """Mean RGB distance |albedo_field - albedo_true| over surface points, parts of fixed color included."""
    body_albedo: tuple[float, float, float]
    """Per-channel median of the field's albedo over the points of caption color."""
    nearest: str
    """The named color nearest to body_albedo."""
    correct: bool
    """nearest is the named color of the prompt."""


@torch.no_grad()
def surface_color(
    field: Field,
    obj: WorldObject | str,
    color: str,
    scale: float = 1.0,
    shift: float = 0.0,
    n: int = 4096,
    seed: int = 0,
    inset: float = ALBEDO_INSET,
) -> ColorResult:
    """The field's albedo at the true surface (mapped into the field by the alignment), against the truth.

    The truth is `obj` painted `color`. Points move `inset` inward along the true normal first.
    """
    obj = (OBJECTS[obj] if isinstance(obj, str) else obj).with_color(color)
    device = field_device(field)
    points, normals = surface_points(obj, n, seed, device=device)
    true_albedo = obj.albedo(points)  # (n, 3)
    _, albedo = field(aligned_points(points - inset * normals, scale, shift))
    albedo = albedo.float()
    error = float((albedo - true_albedo).norm(dim=-1).mean())
    body = albedo[body_mask(obj, points)]
    median = body.median(dim=0).values  # (3,)
    name = nearest_color(median)
    return ColorResult(error, tuple(round(float(c), 4) for c in median), name, name == color)


@dataclass
class ChamferResult:
    chamfer: float
    """(accuracy + completeness) / 2, in world units."""
    accuracy: float
    """Mean distance from mesh points to the true surface (is what was made there?)."""
    completeness: float
    """Mean distance from true-surface points to the mesh (is all of the truth there?)."""


def chamfer_distance(
    mesh: trimesh.Trimesh, obj: WorldObject | str, n: int = 20000, seed: int = 0, reference: int = 8
) -> ChamferResult:
    """Symmetric L1 Chamfer distance between a mesh (world units, +z up) and the true surface.

    `n` area-uniform points of each surface are the queries; each finds its nearest neighbor
    among `reference` x n points of the other surface (k-d trees). The denser reference keeps the
    floor that sampling puts under a perfect mesh small: about half the reference spacing,
    0.5 sqrt(area / (reference n)), 0.002 for the sphere at the defaults.
    """
    truth, _ = surface_points(obj, reference * n, seed)
    truth_np = truth.double().numpy()
    mesh_points = np.asarray(
        trimesh.sample.sample_surface(mesh, reference * n, seed=seed)[0], dtype=np.float64
    )
    accuracy = float(cKDTree(truth_np).query(mesh_points[:n])[0].mean())
    completeness = float(cKDTree(mesh_points).query(truth_np[:n])[0].mean())
    return ChamferResult(0.5 * (accuracy + completeness), accuracy, completeness)
