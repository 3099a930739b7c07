"""From a density grid to a clean triangle mesh: marching cubes, floater removal, decimation."""

from __future__ import annotations

import numpy as np
import trimesh
from skimage.measure import marching_cubes

from dreamfusion.export.grid import DensityGrid


def extract_surface(grid: DensityGrid, level: float) -> trimesh.Trimesh:
    """The `level` iso-surface of the density, in world units (z up), normals pointing outward.

    The grid is padded with one layer of zero density so every surface closes, even where the
    object touches the bounding cube: the result is watertight by construction.
    """
    values = grid.values.detach().cpu().numpy()  # once per export, not a hot path
    if not float(values.min()) < level < float(values.max()):
        raise ValueError(
            f"iso-level {level:g} lies outside the density range [{values.min():g}, {values.max():g}]: "
            "the mesh would be empty"
        )
    padded = np.pad(values, 1, mode="constant", constant_values=0.0)
    # 'ascent' for a density (high inside): faces then wind counter-clockwise seen from outside,
    # so normals point out and the signed volume is positive.
    vertices, faces, _, _ = marching_cubes(padded, level=level, gradient_direction="ascent")
    vertices = (vertices - 1.0) * grid.spacing - grid.bound  # undo the padding, index -> world
    return trimesh.Trimesh(vertices=vertices, faces=faces, process=True)


def remove_floaters(mesh: trimesh.Trimesh, keep_fraction: float) -> tuple[trimesh.Trimesh, int]:
    """Drop connected components with fewer than `keep_fraction` times the largest one's faces.

    Returns the cleaned mesh and how many components were dropped. The largest component is
    always kept, so a non-empty mesh stays non-empty.
    """
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh, 0
    largest = max(len(p.faces) for p in parts)
    kept = [p for p in parts if len(p.faces) >= keep_fraction * largest]
    return trimesh.util.concatenate(kept), len(parts) - len(kept)


def decimate(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """Quadric-error decimation down to about `max_faces` faces (fast-simplification through trimesh)."""
    if max_faces <= 0 or len(mesh.faces) <= max_faces:
        return mesh
    simplified = mesh.simplify_quadric_decimation(face_count=max_faces)
    # Collapses can leave unreferenced vertices or flip a sliver; tidy so the result stays a clean manifold.
    simplified.remove_unreferenced_vertices()
    simplified.fix_normals()
    return simplified
