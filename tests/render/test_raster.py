"""The mesh rasterizer against geometry with a known image: a sphere's silhouette, its colors and
normals, and the volume render of the field the mesh was exported from."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from dreamfusion.config import Config
from dreamfusion.export import ExportOptions, export_mesh
from dreamfusion.export.turntable import TurntableOptions, render_turntable, turntable_cameras
from dreamfusion.export.write import read_mesh
from dreamfusion.render import raster
from dreamfusion.render.raster import MeshTensors, rasterize, render_mesh
from tests.export.test_export import BOUND, COLOR, RADIUS, GradientSphere

SIZE = 64


class Sky:
    """A background of one color, so covered and uncovered pixels tell apart."""

    def __call__(self, directions):
        return torch.tensor([0.1, 0.3, 0.9], device=directions.device).expand(directions.shape)


def _sphere(radius: float = RADIUS) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    mesh.visual.vertex_colors = np.tile([204, 51, 51, 255], (len(mesh.vertices), 1))
    return mesh


def test_a_sphere_covers_the_disc_its_projection_predicts():
    cameras = turntable_cameras(TurntableOptions(frames=3, size=SIZE))
    mesh = MeshTensors.from_trimesh(_sphere())
    for b in range(3):
        face, bary = rasterize(mesh.vertices, mesh.faces, cameras.c2w[b], float(cameras.focal[b]), SIZE, SIZE)
        # A sphere of radius r at distance d subtends a cone of half-angle asin(r / d).
        d = float(cameras.distance[b])
        disc = math.pi * (float(cameras.focal[b]) * math.tan(math.asin(RADIUS / d))) ** 2
        covered = face >= 0
        assert covered.sum().item() == pytest.approx(disc, rel=0.03)
        assert covered[SIZE // 2, SIZE // 2] and not covered[0, 0]
        torch.testing.assert_close(bary[covered].sum(-1), torch.ones(int(covered.sum())), atol=1e-5, rtol=0)
        assert (bary[covered] >= -1e-6).all()


def test_faces_in_runs_give_the_image_of_all_at_once(monkeypatch):
    """A camera close to the surface: the faces go in runs of a few thousand pairs and the image is
    the same as with all pairs at once."""
    mesh = MeshTensors.from_trimesh(_sphere())
    cameras = turntable_cameras(TurntableOptions(frames=1, size=SIZE, distance=0.6))
    at_once = rasterize(mesh.vertices, mesh.faces, cameras.c2w[0], float(cameras.focal[0]), SIZE, SIZE)
    monkeypatch.setattr(raster, "MAX_CANDIDATES", 3000)
    in_runs = rasterize(mesh.vertices, mesh.faces, cameras.c2w[0], float(cameras.focal[0]), SIZE, SIZE)
    assert (at_once[0] >= 0).float().mean() > 0.9  # the sphere fills the view
    assert torch.equal(in_runs[0], at_once[0])
    torch.testing.assert_close(in_runs[1], at_once[1])


def test_colors_shading_and_normals_of_a_sphere():
    cameras = turntable_cameras(TurntableOptions(frames=2, size=SIZE))
    mesh = MeshTensors.from_trimesh(_sphere())
    shading = Config().shading
    albedo = render_mesh(mesh, Sky(), cameras, "albedo", shading)
    c = SIZE // 2
    torch.testing.assert_close(albedo[:, c, c], torch.tensor([0.8, 0.2, 0.2]).expand(2, 3), atol=2e-3, rtol=0)
    torch.testing.assert_close(albedo[:, 0, 0], torch.tensor([0.1, 0.3, 0.9]).expand(2, 3), atol=1e-6, rtol=0)
    lit = render_mesh(mesh, Sky(), cameras, "color", shading)
    assert (lit[:, c, c] <= albedo[:, c, c] * (shading.ambient + shading.light_intensity) + 1e-5).all()
    normal = render_mesh(mesh, Sky(), cameras, "normal", shading)
    # The center pixel sees the point facing the camera: its normal points back along the view.
    facing = torch.nn.functional.normalize(cameras.position, dim=-1)
    torch.testing.assert_close(normal[:, c, c] * 2.0 - 1.0, facing, atol=0.05, rtol=0)
    torch.testing.assert_close(normal[:, 0, 0], torch.ones(2, 3))  # white where no face is
    with pytest.raises(ValueError, match="unknown mesh mode"):
        render_mesh(mesh, Sky(), cameras, "depth", shading)


def test_the_exported_mesh_looks_like_the_field_it_came_from(tmp_path):
    """Inside the silhouette, the textured mesh of a sphere whose every point has its own color shows
    the colors and shading of the volume render of its field."""
    field = GradientSphere(RADIUS, COLOR, BOUND)
    result = export_mesh(field, tmp_path / "ball.glb", ExportOptions(resolution=96, texture_size=512))
    mesh = MeshTensors.from_trimesh(read_mesh(result.path))
    assert mesh.texture is not None and mesh.uv is not None
    options = TurntableOptions(frames=3, size=SIZE)
    cameras = turntable_cameras(options)
    config = Config()
    for mode in ("albedo", "color"):
        from_mesh = render_mesh(mesh, Sky(), cameras, mode, config.shading)
        options.mode = mode
        from_field = torch.tensor(render_turntable(field, Sky(), config, options)).float() / 255.0
        # Compare well inside the silhouette, where the field's soft edge plays no part.
        y, x = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
        inner = (x - SIZE / 2) ** 2 + (y - SIZE / 2) ** 2 < (0.7 * 0.37 * SIZE) ** 2
        error = (from_mesh - from_field).abs()[:, inner]
        assert error.mean() < 0.01 and error.max() < 0.06, mode


def test_a_mesh_on_cuda_gives_the_cpus_frames():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: the rasterizer's GPU path")
    cameras = turntable_cameras(TurntableOptions(frames=2, size=SIZE))
    shading = Config().shading
    cpu = render_mesh(MeshTensors.from_trimesh(_sphere()), Sky(), cameras, "color", shading)
    mesh = MeshTensors.from_trimesh(_sphere(), "cuda")
    cuda = render_mesh(mesh, Sky(), cameras.to("cuda"), "color", shading)
    torch.testing.assert_close(cuda.cpu(), cpu, atol=2e-3, rtol=0)
