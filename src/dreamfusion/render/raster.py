"""Meshes to images: a z-buffer rasterizer in plain PyTorch, for turntables of the exported mesh.

A volume render queries the field at every sample of every ray; a mesh of a few ten thousand
faces covers each pixel once, so its frames cost a small share of the field's. Each face is
projected through the same pinhole cameras as the volume renderer (`scene.rays`: pixel centers,
-z forward), every pixel center inside its bounding box is tested against its edges, and the
nearest face per pixel wins (`scatter_reduce` of the depths). Attributes are interpolated
perspective-correctly; the color is the texture's (or the vertex colors') under the renderer's
own shading (`render.shading.lambertian`), over the run's background, supersampled for smooth
edges. No compiled extension: it runs wherever PyTorch does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from torch import Tensor

from dreamfusion.fields.base import Background
from dreamfusion.render.shading import ShadingConfig, lambertian
from dreamfusion.scene.cameras import Cameras
from dreamfusion.scene.rays import pixel_rays

MESH_MODES = ("color", "albedo", "textureless", "normal")
MAX_CANDIDATES = 1 << 22
"""(face, pixel) pairs tested at once: memory for one run of faces, whatever the camera."""


@dataclass
class MeshTensors:
    """A triangle mesh in the world frame (+z up) on one device."""

    vertices: Tensor  # (V, 3)
    faces: Tensor  # (F, 3) int64
    normals: Tensor  # (V, 3) unit, outward, smooth across UV seams
    uv: Tensor | None  # (V, 2), v up (trimesh's convention)
    texture: Tensor | None  # (1, 3, T, T) in [0, 1], row 0 at the top
    colors: Tensor | None  # (V, 3) in [0, 1], for meshes without a texture

    @classmethod
    def from_trimesh(cls, mesh: trimesh.Trimesh, device: torch.device | str = "cpu") -> MeshTensors:
        vertices = np.asarray(mesh.vertices, dtype=np.float32)
        faces = np.asarray(mesh.faces, dtype=np.int64)
        uv = texture = colors = None
        visual = mesh.visual
        if isinstance(visual, trimesh.visual.TextureVisuals) and visual.uv is not None:
            material = visual.material
            image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
            if image is not None:
                uv = torch.tensor(np.asarray(visual.uv, dtype=np.float32))
                pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
                texture = torch.tensor(pixels).permute(2, 0, 1)[None]
        if texture is None:
            colored = visual if isinstance(visual, trimesh.visual.ColorVisuals) else visual.to_color()
            rgba = np.asarray(colored.vertex_colors, dtype=np.float32)
            colors = torch.tensor(rgba[:, :3] / 255.0)
        return cls(
            vertices=torch.tensor(vertices, device=device),
            faces=torch.tensor(faces, device=device),
            normals=torch.tensor(smooth_normals(vertices, faces), device=device),
            uv=None if uv is None else uv.to(device),
            texture=None if texture is None else texture.to(device),
            colors=None if colors is None else colors.to(device),
        )


def smooth_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (V, 3), shared by vertices at one position.

    A textured mesh splits its vertices along UV seams; normals of the split copies taken apart
    would each see only their side's faces and show the seam as a crease.
    """
    _, position = np.unique(vertices.round(6), axis=0, return_inverse=True)
    position = position.reshape(-1)
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    face_normals = np.cross(b - a, c - a)  # length = twice the area: area weighting for free
    sums = np.zeros((position.max() + 1, 3), dtype=np.float64)
    for k in range(3):
        np.add.at(sums, position[faces[:, k]], face_normals)
    normals = sums[position]
    return (normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def rasterize(
    vertices: Tensor, faces: Tensor, c2w: Tensor, focal: float, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """The nearest face at each pixel center of one camera, and the point's barycentric coordinates.

    vertices (V, 3) world, faces (F, 3), c2w (4, 4) -> face index (H, W) int64 (-1 where no face
    covers the pixel) and perspective-correct barycentrics (H, W, 3) of the point seen.
    """
    camera = (vertices - c2w[:3, 3]) @ c2w[:3, :3]  # R^T (v - o), row by row
    depth = -camera[:, 2]  # the camera looks along its -z axis
    safe = depth.clamp(min=1e-6)
    u = 0.5 * width + focal * camera[:, 0] / safe
    v = 0.5 * height - focal * camera[:, 1] / safe
    fu, fv, fd = u[faces], v[faces], depth[faces]  # (F, 3) each
    # Columns i whose center i + 0.5 lies within the face's extent, clipped to the image.
    x0 = (fu.amin(1) - 0.5).ceil().clamp(min=0).long()
    x1 = (fu.amax(1) - 0.5).floor().clamp(max=width - 1).long()
    y0 = (fv.amin(1) - 0.5).ceil().clamp(min=0).long()
    y1 = (fv.amax(1) - 0.5).floor().clamp(max=height - 1).long()
    w, h = (x1 - x0 + 1).clamp(min=0), (y1 - y0 + 1).clamp(min=0)
    counts = torch.where((fd > 1e-6).all(1), w * h, torch.zeros_like(w))
    device = faces.device
    nearest = torch.full((height * width,), float("inf"), device=device)
    face_index = torch.full((height * width,), -1, dtype=torch.long, device=device)
    barycentric = torch.zeros(height * width, 3, device=device)
    # Faces go in runs of at most MAX_CANDIDATES (face, pixel) pairs, so that a camera close to the
    # surface (faces many pixels wide) costs time, not memory; a later run's nearer point replaces
    # an earlier one's at its pixel.
    ends = counts.cumsum(0)
    first = 0
    while first < len(faces):
        stop = int(torch.searchsorted(ends, ends[first] - counts[first] + MAX_CANDIDATES, right=True))
        stop = max(stop, first + 1)
        chunk = slice(first, stop)
        face = first + torch.repeat_interleave(torch.arange(stop - first, device=device), counts[chunk])
        before = ends - counts  # pairs of the faces before each face
        local = torch.arange(len(face), device=device) + before[first] - before[face]
        px, py = x0[face] + local % w[face], y0[face] + local // w[face]

        # Edge functions at the pixel centers give the screen-space barycentrics.
        cx, cy = px.float() + 0.5, py.float() + 0.5
        au, av = fu[face].unbind(1), fv[face].unbind(1)
        area = (au[1] - au[0]) * (av[2] - av[0]) - (av[1] - av[0]) * (au[2] - au[0])
        b0 = ((au[1] - cx) * (av[2] - cy) - (av[1] - cy) * (au[2] - cx)) / area
        b1 = ((au[2] - cx) * (av[0] - cy) - (av[2] - cy) * (au[0] - cx)) / area
        screen = torch.stack((b0, b1, 1.0 - b0 - b1), dim=1)
        inside = (screen >= 0).all(1) & (area != 0)
        # Perspective-correct: interpolate 1/depth in screen space.
        weighted = screen / fd[face]
        point_depth = 1.0 / weighted.sum(1)
        bary = weighted * point_depth[:, None]

        pixel = py * width + px
        pixel, point_depth, face, bary = pixel[inside], point_depth[inside], face[inside], bary[inside]
        nearest.scatter_reduce_(0, pixel, point_depth, reduce="amin")
        front = point_depth == nearest[pixel]
        # Ties (a pixel center on a shared edge) go to the later candidate: either is right.
        candidate = torch.arange(len(pixel), device=device)
        winner = torch.full((height * width,), -1, dtype=torch.long, device=device)
        winner.scatter_reduce_(0, pixel[front], candidate[front], reduce="amax")
        won = winner >= 0
        face_index[won] = face[winner[won]]
        barycentric[won] = bary[winner[won]]
        first = stop
    return face_index.view(height, width), barycentric.view(height, width, 3)


def _albedo(mesh: MeshTensors, corners: Tensor, bary: Tensor) -> Tensor:
    """(P, 3) surface color at points given by face corners (P, 3) and barycentrics (P, 3)."""
    if mesh.texture is None or mesh.uv is None:
        assert mesh.colors is not None
        return (mesh.colors[corners] * bary[..., None]).sum(1)
    uv = (mesh.uv[corners] * bary[..., None]).sum(1)
    # grid_sample: x right, y down in [-1, 1]; trimesh's v points up.
    grid = torch.stack((uv[:, 0] * 2.0 - 1.0, 1.0 - uv[:, 1] * 2.0), dim=-1)[None, None]
    sampled = torch.nn.functional.grid_sample(mesh.texture, grid, mode="bilinear", align_corners=False)
    return sampled[0, :, 0].t()


def render_mesh(
    mesh: MeshTensors,
    background: Background,
    cameras: Cameras,
    mode: str,
    shading_cfg: ShadingConfig,
    supersample: int = 2,
) -> Tensor:
    """(B, H, W, 3) float frames of `mesh` seen by `cameras`, in a turntable mode (MESH_MODES).

    Each frame is rasterized at `supersample` times its size and averaged down, so edges are
    smooth; pixels no face covers show `background` (white in normal mode), as in a volume render.
    """
    if mode not in MESH_MODES:
        raise ValueError(f"unknown mesh mode '{mode}' (use one of {', '.join(MESH_MODES)})")
    s = supersample
    height, width = cameras.height * s, cameras.width * s
    frames = []
    for b in range(len(cameras)):
        c2w, focal = cameras.c2w[b], float(cameras.focal[b]) * s
        face, bary = rasterize(mesh.vertices, mesh.faces, c2w, focal, height, width)
        _, directions = pixel_rays(c2w[None], cameras.focal[b : b + 1] * s, height, width)
        directions = directions.reshape(-1, 3)
        if mode == "normal":
            image = torch.ones_like(directions)
        else:  # a copy: the faces are written into it, and a background may hand out a shared view
            image = background(directions).float().clone(memory_format=torch.contiguous_format)
        face, bary = face.reshape(-1), bary.reshape(-1, 3)
        seen = face >= 0
        corners, weights = mesh.faces[face[seen]], bary[seen]
        points = (mesh.vertices[corners] * weights[..., None]).sum(1)
        normals = torch.nn.functional.normalize((mesh.normals[corners] * weights[..., None]).sum(1), dim=-1)
        if mode == "normal":
            color = 0.5 * (normals + 1.0)
        else:
            albedo = torch.ones_like(points) if mode == "textureless" else _albedo(mesh, corners, weights)
            light, ambient = cameras.light_position[b], shading_cfg.ambient
            if mode == "albedo":
                color = albedo
            else:
                color = lambertian(albedo, normals, points, light, ambient, shading_cfg.light_intensity)
        image[seen] = color.to(image.dtype)
        image = image.view(1, height, width, 3).permute(0, 3, 1, 2)
        frames.append(torch.nn.functional.avg_pool2d(image, s).permute(0, 2, 3, 1))
    return torch.cat(frames)
