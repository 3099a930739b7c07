"""From a density grid to a clean triangle mesh: marching cubes, floater removal, decimation."""

from __future__ import annotations

import numpy as np
import trimesh
from skimage.measure import marching_cubes

from dreamfusion.export.grid import DensityGrid


def clean(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Drop zero-area faces and every copy of a repeated face, then unused vertices.

    Both appear where marching cubes or an edge collapse pinches the surface; a face pair that
    repeats is a two-sided fin whose edges would be shared by four faces (not a manifold).
    """
    keep = mesh.nondegenerate_faces()
    _, inverse, counts = np.unique(
        np.sort(mesh.faces, axis=1), axis=0, return_inverse=True, return_counts=True
    )
    keep &= counts[inverse.reshape(-1)] == 1
    out = mesh.copy()
    out.update_faces(keep)
    out.remove_unreferenced_vertices()
    return out


def extract_surface(grid: DensityGrid, level: float) -> trimesh.Trimesh:
    """The `level` iso-surface of the density, in world units (z up), normals pointing outward.

    The grid is padded with one layer of zero density so every surface closes, even where the
    object touches the bounding cube: the result is watertight by construction (up to the rare
    pinched face that `clean` removes).
    """
    values = grid.values.detach().cpu().numpy()  # once per export, not a hot path
    if not float(values.min()) < level < float(values.max()):
        raise ValueError(
            f"iso-level {level:g} lies outside the density range [{values.min():g}, {values.max():g}]: "
            "the mesh would be empty"
        )
    padded = np.zeros(tuple(n + 2 for n in values.shape), values.dtype)
    padded[1:-1, 1:-1, 1:-1] = values
    # 'ascent' for a density (high inside): faces then wind counter-clockwise seen from outside,
    # so normals point out and the signed volume is positive.
    vertices, faces, _, _ = marching_cubes(padded, level=level, gradient_direction="ascent")
    vertices = (vertices - 1.0) * grid.spacing - grid.bound  # undo the padding, index -> world
    # scikit-image already shares vertices between faces: no merge pass (slow on noisy fields).
    return clean(trimesh.Trimesh(vertices=vertices, faces=faces, process=False))


def remove_floaters(mesh: trimesh.Trimesh, keep_fraction: float) -> tuple[trimesh.Trimesh, int]:
    """Drop connected components with fewer than `keep_fraction` times the largest one's faces.

    Returns the cleaned mesh and how many components were dropped. The largest component is
    always kept, so a non-empty mesh stays non-empty. Components are labelled on the face
    adjacency graph in one pass: a noisy field can hold thousands of them.
    """
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    sizes = np.bincount(labels)
    if len(sizes) <= 1:
        return mesh, 0
    kept = sizes >= keep_fraction * sizes.max()
    out = mesh.copy()
    out.update_faces(kept[labels])
    out.remove_unreferenced_vertices()
    return out, int((~kept).sum())


def decimate(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """Quadric-error decimation down to about `max_faces` faces (fast-simplification through trimesh).

    An edge collapse now and then pinches two sheets together (a non-manifold edge). When the
    input was watertight and the result is not, the decimation is redone at a gentler
    aggression; if that pinches too, the result nearest `max_faces` is kept.
    """
    if max_faces <= 0 or len(mesh.faces) <= max_faces:
        return mesh
    tries = []
    for aggression in (7, 2):
        result = clean(mesh.simplify_quadric_decimation(face_count=max_faces, aggression=aggression))
        if result.is_watertight or not mesh.is_watertight:
            break
        tries.append(result)
    else:
        # Neither kept the surface closed (a trained field's bumpy surface can pinch at any
        # aggression): the gentle pass stops far above the target, so take the one nearest it.
        result = min(tries, key=lambda m: abs(len(m.faces) - max_faces))
    if not result.is_winding_consistent:
        result.fix_normals()
    return result
