"""The albedo onto the mesh: xatlas UV unwrap and a baked texture, or per-vertex colors.

Baking: every texel whose center falls inside a triangle of the UV atlas gets the field's albedo
at the matching 3D point on that triangle; empty texels take the color of the nearest filled one,
so bilinear filtering and mipmaps never bleed the background into the seams.
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh
import xatlas
from PIL import Image
from scipy.ndimage import distance_transform_edt
from torch import Tensor

from dreamfusion.fields.base import Field, device_of

UNWRAP_PIECE_FACES = 2500  # faces xatlas charts at a time (see unwrap)


@torch.no_grad()
def albedo_at(field: Field, points: np.ndarray | Tensor, chunk_points: int = 1 << 18) -> np.ndarray:
    """The field's albedo (N, 3) in [0, 1] at world points (N, 3), queried a chunk at a time.

    Points already on the field's device stay there: the texels of a bake go straight from the
    rasterizer to the field, and only the colors come back.
    """
    device = device_of(field)
    flat = torch.as_tensor(points, dtype=torch.float32, device=device)
    parts = [field(chunk)[1].float().clamp(0.0, 1.0) for chunk in flat.split(chunk_points)]
    return torch.cat(parts).cpu().numpy() if parts else np.zeros((0, 3), np.float32)


def unwrap(mesh: trimesh.Trimesh, texture_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts packed for a square texture of `texture_size` texels.

    Returns vmapping (V',) into the input vertices, faces (F, 3) into the new vertices (in the
    input's face order), and uv (V', 2) in [0, 1] (OpenGL convention: v grows upward, as trimesh
    expects).

    xatlas's chart computation takes time that grows faster than a mesh's face count, so a mesh
    of more than UNWRAP_PIECE_FACES faces is cut into slabs of about that many along its longest
    side, each charted on its own (a chart never crosses a cut); the charts of all slabs are packed
    into the one texture together.
    """
    pieces = _unwrap_pieces(mesh)
    atlas = xatlas.Atlas()
    for chunk in pieces:
        used, local = np.unique(mesh.faces[chunk], return_inverse=True)
        atlas.add_mesh(mesh.vertices[used].astype(np.float32), local.reshape(-1, 3).astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = texture_size
    pack.padding = 2  # texels of gutter between charts
    pack.bilinear = True
    chart = xatlas.ChartOptions()
    # Charts grown in one pass, without the iterations that merge and regrow them: on the bumpy
    # surface of a trained field those iterations cost most of the unwrap and gain little packing.
    chart.max_iterations = 0
    atlas.generate(chart_options=chart, pack_options=pack)
    vmapping, faces, uv = [], np.empty((len(mesh.faces), 3), np.int64), []
    start = 0
    for i, chunk in enumerate(pieces):
        used = np.unique(mesh.faces[chunk])
        piece_vmapping, piece_faces, piece_uv = atlas[i]
        vmapping.append(used[piece_vmapping])
        faces[chunk] = piece_faces.astype(np.int64) + start
        uv.append(piece_uv)
        start += len(piece_vmapping)
    return np.concatenate(vmapping).astype(np.int64), faces, np.concatenate(uv).astype(np.float32)


def _unwrap_pieces(mesh: trimesh.Trimesh) -> list[np.ndarray]:
    """Face indices (sorted) of the slabs `unwrap` charts one at a time: one slab up to
    UNWRAP_PIECE_FACES faces, else about that many each, by face center along the longest side."""
    count = max(1, round(len(mesh.faces) / UNWRAP_PIECE_FACES))
    if count == 1:
        return [np.arange(len(mesh.faces))]
    centers = mesh.triangles_center[:, int(np.argmax(mesh.extents))]
    return [np.sort(chunk) for chunk in np.array_split(np.argsort(centers, kind="stable"), count)]


def rasterize_uv(uv_faces: Tensor, size: int, max_pairs: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """Which triangle covers each texel center, with barycentric coordinates.

    uv_faces (F, 3, 2) in [0, 1] (v up) -> face index (S, S) long (-1 where none) and
    barycentrics (S, S, 3), row 0 being the top of the image. Each triangle tests only the
    texels of its bounding box; triangles go in batches of at most `max_pairs` (triangle, texel)
    candidates to bound memory.
    """
    device = uv_faces.device
    # Texel (row y, col x) has its center at pixel coordinates (x + 0.5, y + 0.5); v points up.
    pix = torch.stack([uv_faces[..., 0] * size, (1.0 - uv_faces[..., 1]) * size], dim=-1)  # (F, 3, 2)
    lo = torch.ceil(pix.amin(1) - 0.5).clamp(0, size - 1).long()  # (F, 2) first texel inside the box
    hi = torch.floor(pix.amax(1) - 0.5).clamp(0, size - 1).long()
    extent = (hi - lo + 1).clamp(min=0)  # (F, 2)
    count = extent[:, 0] * extent[:, 1]  # (F,)

    face_id = torch.full((size * size,), -1, dtype=torch.long, device=device)
    bary = torch.zeros(size * size, 3, device=device)
    cumulative = count.cumsum(0)
    start = 0
    while start < pix.shape[0]:
        # The largest batch of triangles whose candidate texels fit max_pairs (at least one triangle).
        base = cumulative[start - 1] if start > 0 else cumulative.new_zeros(())
        end = int(torch.searchsorted(cumulative, base + max_pairs, right=True))
        end = max(end, start + 1)
        faces = torch.arange(start, end, device=device)
        reps = torch.repeat_interleave(faces, count[start:end])  # (P,)
        local = torch.arange(reps.shape[0], device=device) - (cumulative[reps] - count[reps])
        width = extent[reps, 0]
        x = lo[reps, 0] + local % width.clamp(min=1)
        y = lo[reps, 1] + local // width.clamp(min=1)
        p = torch.stack([x, y], dim=-1).float() + 0.5  # (P, 2)
        a, b, c = pix[reps, 0], pix[reps, 1], pix[reps, 2]  # (P, 2) each

        def cross(u: Tensor, v: Tensor) -> Tensor:
            return u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]

        area = cross(b - a, c - a)
        safe = torch.where(area.abs() > 1e-12, area, torch.ones_like(area))
        w = (
            torch.stack([cross(b - p, c - p), cross(c - p, a - p), cross(a - p, b - p)], dim=-1)
            / safe[:, None]
        )
        inside = (w >= -1e-6).all(-1) & (area.abs() > 1e-12)
        texel = (y * size + x)[inside]
        face_id[texel] = reps[inside]
        bary[texel] = w[inside]
        start = end
    return face_id.reshape(size, size), bary.reshape(size, size, 3)


def bake_texture(
    field: Field, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, size: int
) -> tuple[np.ndarray, float]:
    """The albedo texture (S, S, 3) uint8 of a UV-mapped mesh, and the fraction of texels covered.

    vertices (V, 3) world positions, faces (F, 3), uv (V, 2) per vertex in [0, 1].
    """
    device = device_of(field)
    uv_faces = torch.as_tensor(uv[faces], dtype=torch.float32, device=device)  # (F, 3, 2)
    face_id, bary = rasterize_uv(uv_faces, size)
    covered = face_id >= 0  # (S, S)
    tri = torch.as_tensor(vertices[faces], dtype=torch.float32, device=device)  # (F, 3, 3)
    points = (bary[covered][:, :, None] * tri[face_id[covered]]).sum(1)  # (C, 3)
    colors = albedo_at(field, points)
    image = np.zeros((size, size, 3), np.float32)
    mask = covered.cpu().numpy()
    image[mask] = colors
    if mask.any() and not mask.all():
        # Each empty texel copies its nearest covered texel: a gutter with no seams of black.
        _, (rows, cols) = distance_transform_edt(~mask, return_indices=True)
        image = image[rows, cols]
    return (image * 255.0 + 0.5).astype(np.uint8), float(mask.mean())


def textured_visuals(image: np.ndarray, uv: np.ndarray) -> trimesh.visual.TextureVisuals:
    """A matte PBR material (metallic 0, roughness 1) whose base color is the baked albedo."""
    texture = Image.fromarray(image)
    material = trimesh.visual.material.PBRMaterial(
        name="albedo",
        baseColorTexture=texture,
        metallicFactor=0.0,
        roughnessFactor=1.0,
        doubleSided=False,
    )
    return trimesh.visual.TextureVisuals(uv=uv, image=texture, material=material)


def vertex_colored(field: Field, mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The fallback when there is no texture: the albedo at each vertex as its color."""
    colors = albedo_at(field, mesh.vertices)
    rgba = np.concatenate([colors, np.ones_like(colors[:, :1])], axis=-1)
    out = mesh.copy()
    out.visual = trimesh.visual.ColorVisuals(out, vertex_colors=(rgba * 255.0 + 0.5).astype(np.uint8))
    return out


def textured(field: Field, mesh: trimesh.Trimesh, texture_size: int) -> tuple[trimesh.Trimesh, float]:
    """Unwrap, bake and attach the texture; returns the new mesh (vertices split along seams) and coverage."""
    vmapping, faces, uv = unwrap(mesh, texture_size)
    vertices = mesh.vertices[vmapping]
    image, coverage = bake_texture(field, vertices, faces, uv, texture_size)
    out = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    out.visual = textured_visuals(image, uv)
    return out, coverage
