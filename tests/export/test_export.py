"""Mesh export on analytic fields (no training): geometry, level rule, texture, files, bad input."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from torch import nn

from dreamfusion.cli import main
from dreamfusion.errors import UserError
from dreamfusion.export import (
    Z_UP_TO_Y_UP,
    ExportOptions,
    auto_level,
    build_mesh,
    export_mesh,
    rasterize_uv,
    sample_density,
    unwrap,
)
from dreamfusion.fields import SphereField
from tests.conftest import tiny_config

RADIUS, COLOR, BOUND = 0.45, (0.8, 0.2, 0.2), 0.8
SPHERE_VOLUME = 4.0 / 3.0 * math.pi * RADIUS**3


class GradientSphere(SphereField):
    """The analytic sphere with albedo (1 + x / |x|) / 2: every surface point has its own color."""

    def forward(self, points):
        direction = points / points.norm(dim=-1, keepdim=True).clamp(min=1e-9)
        return self.density(points), 0.5 * (1.0 + direction)


class PlacedSphere(GradientSphere):
    """GradientSphere with a parameter (zero), so that the export runs where the field is moved."""

    def __init__(self, *args):
        super().__init__(*args)
        self.offset = nn.Parameter(torch.zeros(()))

    def density(self, points):
        return super().density(points) + self.offset


class Blob(nn.Module):
    """density = peak * exp(-|x - center|^2 / (2 width^2)), grey albedo: a soft object, no surface."""

    def __init__(self, peak, width, center=(0.0, 0.0, 0.0), bound_radius=BOUND):
        super().__init__()
        self.peak, self.width, self.bound_radius = peak, width, bound_radius
        self.center = torch.tensor(center)

    def density(self, points):
        d2 = ((points - self.center) ** 2).sum(-1)
        inside = (points * points).sum(-1) <= self.bound_radius**2
        return torch.where(inside, self.peak * torch.exp(-d2 / (2 * self.width**2)), torch.zeros_like(d2))

    def forward(self, points):
        return self.density(points), torch.full_like(points, 0.5)


class Ellipsoid(SphereField):
    """A sharp ellipsoid with semi-axes (0.2, 0.3, 0.5) along world x, y, z."""

    AXES = (0.2, 0.3, 0.5)

    def density(self, points):
        scaled = points / points.new_tensor(self.AXES)
        return self.peak_density * torch.sigmoid(self.sharpness * 0.3 * (1.0 - scaled.norm(dim=-1)))


class SphereWithFloater(SphereField):
    """The sphere plus a small dense ball at x = 0.65: a floater."""

    def density(self, points):
        ball = ((points - points.new_tensor([0.65, 0.0, 0.0])) ** 2).sum(-1).sqrt()
        floater = self.peak_density * torch.sigmoid(self.sharpness * (0.05 - ball))
        return torch.maximum(super().density(points), floater)


def _sample_texture(mesh: trimesh.Trimesh, points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a loaded mesh's base-color texture at surface points on `faces`."""
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[faces], points)
    uv = (mesh.visual.uv[mesh.faces[faces]] * bary[:, :, None]).sum(1)
    image = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), dtype=np.float64) / 255.0
    h, w = image.shape[:2]
    x, y = uv[:, 0] * w - 0.5, (1.0 - uv[:, 1]) * h - 0.5  # trimesh uv: v up; texel centers at +0.5
    x0, y0 = np.clip(np.floor(x).astype(int), 0, w - 2), np.clip(np.floor(y).astype(int), 0, h - 2)
    fx, fy = np.clip(x - x0, 0, 1)[:, None], np.clip(y - y0, 0, 1)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _load_glb(path) -> trimesh.Trimesh:
    scene = trimesh.load(path)
    assert isinstance(scene, trimesh.Scene) and len(scene.geometry) == 1
    return next(iter(scene.geometry.values()))


# ----------------------------------------------------------------------------------- geometry
def test_sphere_mesh_is_watertight_with_the_true_volume():
    mesh, level, removed, watertight = build_mesh(
        SphereField(RADIUS, COLOR, BOUND), ExportOptions(resolution=64, max_faces=0)
    )
    assert watertight and mesh.is_watertight and removed == 0
    assert level.rule == "transmittance" and level.votes > 100
    # The sphere's density is 100 sigmoid(100 (r - |x|)); its optical depth from outside is
    # softplus(100 (r - |x|)), which reaches ln 2 exactly at |x| = r, where the density is 50.
    # Head-on lines vote 50 less the grid's discretization: a few units at 64^3.
    assert 40.0 < level.value < 50.0
    assert mesh.volume == pytest.approx(SPHERE_VOLUME, rel=0.03)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii - RADIUS).max() < 0.01


def test_decimation_keeps_the_budget_and_the_shape():
    full, *_ = build_mesh(SphereField(RADIUS, COLOR, BOUND), ExportOptions(resolution=64, max_faces=0))
    small, _, _, watertight = build_mesh(
        SphereField(RADIUS, COLOR, BOUND), ExportOptions(resolution=64, max_faces=2000)
    )
    assert len(full.faces) > 10_000 and 1500 <= len(small.faces) <= 2000
    assert watertight
    assert small.volume == pytest.approx(SPHERE_VOLUME, rel=0.03)


@pytest.mark.parametrize(
    "peak, width",
    [(0.05, 0.2), (1.0, 0.1), (10.0, 0.5), (30.0, 0.15), (3000.0, 0.05), (1e5, 0.3)],
)
def test_auto_level_never_yields_an_empty_mesh_on_a_blob(peak, width):
    mesh, level, _, watertight = build_mesh(Blob(peak, width), ExportOptions(resolution=40, max_faces=0))
    assert len(mesh.faces) > 0 and watertight and mesh.volume > 0
    assert 0.0 < level.value < peak
    if peak == 0.05:  # no line through it gets half opaque: the fallback
        assert level.rule == "half-max" and level.value == pytest.approx(0.5 * peak, rel=0.05)


def test_an_empty_field_is_refused_in_one_line():
    with pytest.raises(UserError, match="empty"):
        build_mesh(Blob(0.0, 0.2), ExportOptions(resolution=24))


def test_floaters_are_removed():
    field = SphereWithFloater(RADIUS, COLOR, BOUND)
    kept, _, removed, _ = build_mesh(field, ExportOptions(resolution=64, max_faces=0))
    both, _, none_removed, _ = build_mesh(field, ExportOptions(resolution=64, max_faces=0, keep_fraction=0.0))
    assert removed == 1 and none_removed == 0
    assert len(kept.split(only_watertight=False)) == 1 and len(both.split(only_watertight=False)) == 2
    assert kept.volume == pytest.approx(SPHERE_VOLUME, rel=0.03)


def test_manual_level_and_one_outside_the_density_range():
    mesh, level, _, _ = build_mesh(
        SphereField(RADIUS, COLOR, BOUND), ExportOptions(resolution=64, level=50.0)
    )
    assert level.rule == "manual" and mesh.volume == pytest.approx(SPHERE_VOLUME, rel=0.02)
    with pytest.raises(UserError, match="--level"):
        build_mesh(SphereField(RADIUS, COLOR, BOUND), ExportOptions(resolution=32, level=1000.0))


def test_auto_level_reads_the_grid_not_the_field():
    """Scaling the density scales the level by the same factor (the rule has no absolute number)."""
    a = auto_level(sample_density(Blob(10.0, 0.2), 40))
    b = auto_level(sample_density(Blob(1000.0, 0.2), 40))
    assert a.rule == b.rule == "transmittance"
    # Higher peak: the ln 2 crossing moves outward, to a lower fraction of the peak.
    assert b.value / 1000.0 < a.value / 10.0


# ------------------------------------------------------------------------------------ texture
def test_uv_rasterizer_covers_a_triangle_exactly():
    """The lower-left half of the UV square, on a 4 x 4 texture: texel centers with u + v <= 1."""
    tri = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    face, bary = rasterize_uv(tri, 4)
    centers = (torch.arange(4) + 0.5) / 4
    u, v = centers[None, :], 1.0 - centers[:, None]  # row 0 is the top (v near 1)
    assert torch.equal(face >= 0, (u + v <= 1.0).expand(4, 4))
    inside = face >= 0
    # Barycentrics of (u, v) w.r.t. (0,0), (1,0), (0,1) are (1 - u - v, u, v).
    expected = torch.stack([1 - u - v, u.expand(4, 4), v.expand(4, 4)], dim=-1)
    torch.testing.assert_close(bary[inside], expected[inside], atol=1e-5, rtol=0)


def test_unwrap_in_pieces_keeps_every_face_and_packs_one_texture(monkeypatch):
    """A mesh charted in slabs: the same triangles in the same order, one atlas whose charts
    (from different slabs too) do not overlap."""
    from dreamfusion.export import texture

    monkeypatch.setattr(texture, "UNWRAP_PIECE_FACES", 500)
    mesh = trimesh.creation.icosphere(subdivisions=4)  # 5120 faces: 10 slabs
    assert len(texture._unwrap_pieces(mesh)) == 10
    vmapping, faces, uv = unwrap(mesh, 512)
    np.testing.assert_array_equal(mesh.vertices[vmapping][faces], mesh.triangles)
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    corners = uv[faces]  # (F, 3, 2)
    (ux, uy), (vx, vy) = (corners[:, 1] - corners[:, 0]).T, (corners[:, 2] - corners[:, 0]).T
    area = 0.5 * np.abs(ux * vy - uy * vx).sum()
    face_id, _ = rasterize_uv(torch.tensor(corners), 512)
    covered = float((face_id >= 0).float().mean())
    assert covered == pytest.approx(area, rel=0.05)  # overlapping charts would cover less


def test_glb_texture_matches_the_albedo_at_the_surface(tmp_path):
    field = GradientSphere(RADIUS, COLOR, BOUND)
    result = export_mesh(
        field, tmp_path / "ball.glb", ExportOptions(resolution=48, texture_size=256, max_faces=4000)
    )
    assert result.texture_size == (256, 256) and result.texture_coverage > 0.3
    mesh = _load_glb(result.path)
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    assert mesh.visual.material.baseColorTexture.size == (256, 256)

    points, faces = trimesh.sample.sample_surface(mesh, 3000, seed=0)
    texture = _sample_texture(mesh, points, faces)
    world = points @ Z_UP_TO_Y_UP[:3, :3]  # file (+y up) -> world (+z up): the inverse rotation
    truth = field(torch.tensor(world, dtype=torch.float32))[1].numpy()
    error = np.abs(texture - truth).max(axis=1)
    # Tolerance: 8-bit quantization (0.002) plus the albedo varying inside a texel (|grad| ~ 1.1
    # per unit, texel ~ 0.004 units). Measured: median 0.001, 99th percentile 0.003; the few
    # worst samples sit on slivers thinner than a texel, whose color comes from the gutter fill.
    assert np.median(error) < 0.005
    assert np.percentile(error, 99) < 0.02
    assert np.mean(error > 0.1) < 0.005


def test_export_on_cuda_gives_the_cpu_mesh(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: the export's GPU path")
    options = ExportOptions(resolution=48, texture_size=256, max_faces=4000)
    cpu = export_mesh(PlacedSphere(RADIUS, COLOR, BOUND), tmp_path / "cpu.glb", options)
    cuda = export_mesh(PlacedSphere(RADIUS, COLOR, BOUND).cuda(), tmp_path / "cuda.glb", options)
    a, b = _load_glb(cpu.path), _load_glb(cuda.path)
    assert cpu.watertight and cuda.watertight
    assert abs(len(a.faces) - len(b.faces)) <= 0.02 * len(a.faces)
    b.merge_vertices(merge_tex=True, merge_norm=True)  # the UV seams split vertices; the surface is closed
    assert b.is_watertight
    assert b.volume == pytest.approx(a.volume, rel=0.01)
    assert cuda.texture_coverage == pytest.approx(cpu.texture_coverage, abs=0.02)


def test_glb_round_trips_with_y_up_and_front_along_z(tmp_path):
    result = export_mesh(
        Ellipsoid(0.49, COLOR, BOUND), tmp_path / "e.glb", ExportOptions(resolution=48, texture_size=64)
    )
    mesh = _load_glb(result.path)
    # World semi-axes (x, y, z) = (0.2, 0.3, 0.5) -> file (X, Y, Z) = (y, z, x): up (world z) is +Y,
    # the front (world +x) faces +Z.
    np.testing.assert_allclose(mesh.extents, [0.6, 1.0, 0.4], atol=0.03)
    assert mesh.visual.uv.shape == (len(mesh.vertices), 2)
    merged = mesh.copy()
    merged.merge_vertices(merge_tex=True, merge_norm=True)  # UV seams split vertices; geometry is closed
    assert merged.is_watertight and merged.volume > 0


def _winding_number(mesh: trimesh.Trimesh, points: np.ndarray, chunk: int = 200) -> np.ndarray:
    """Generalized winding number of a closed mesh at points (N, 3): 1 inside, 0 outside
    (the solid angles of its triangles, Van Oosterom and Strackee)."""
    out = []
    for p in np.array_split(points, max(1, len(points) // chunk)):
        a, b, c = (mesh.triangles[None, :, i] - p[:, None] for i in range(3))  # (P, F, 3) each
        la, lb, lc = (np.linalg.norm(v, axis=-1) for v in (a, b, c))
        det = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
        dots = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
        out.append(2.0 * np.arctan2(det, dots).sum(-1) / (4.0 * np.pi))
    return np.concatenate(out)


def test_textured_export_of_an_ellipsoid_keeps_its_inside(tmp_path):
    """The written mesh (default faces and texture settings, a 64^3 grid): closed, and inside it
    exactly where the field's density exceeds the level, but for a sliver along the surface."""
    field = Ellipsoid(0.49, COLOR, BOUND)
    result = export_mesh(field, tmp_path / "e.glb", ExportOptions(resolution=64, texture_size=256))
    mesh = _load_glb(result.path)
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    assert result.watertight and mesh.is_watertight
    mesh.apply_transform(np.linalg.inv(Z_UP_TO_Y_UP))  # back to the world frame
    points = np.random.default_rng(0).uniform(-1.0, 1.0, (1500, 3)) * np.array(Ellipsoid.AXES) * 1.2
    inside_mesh = _winding_number(mesh, points) > 0.5
    inside_field = (field.density(torch.tensor(points, dtype=torch.float32)) > result.level.value).numpy()
    iou = (inside_mesh & inside_field).sum() / (inside_mesh | inside_field).sum()
    assert iou > 0.98


def test_export_flags_map_to_their_options():
    from dreamfusion.commands import Export

    assert Export(run_path=Path("run")).options() == ExportOptions()
    flags = Export(
        run_path=Path("run"), resolution=64, texture_size=0, level="7.5", faces=900, keep_fraction=0.2
    )
    assert flags.options() == ExportOptions(
        resolution=64, level=7.5, texture_size=0, max_faces=900, keep_fraction=0.2
    )


def test_obj_brings_its_material_and_texture_and_ply_has_vertex_colors(tmp_path):
    field = SphereField(RADIUS, COLOR, BOUND)
    obj = export_mesh(field, tmp_path / "ball.obj", ExportOptions(resolution=32, texture_size=64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ball.mtl", "ball.obj", "ball_albedo.png"]
    assert {p.name for p in obj.files} == {"ball.obj", "ball.mtl", "ball_albedo.png"}
    loaded = trimesh.load(tmp_path / "ball.obj", force="mesh")
    assert loaded.visual.material.image.size == (64, 64)

    ply = export_mesh(field, tmp_path / "ball.ply", ExportOptions(resolution=32))
    assert ply.texture_size is None
    colors = trimesh.load(ply.path).visual.vertex_colors[:, :3]
    assert np.all(np.abs(colors.astype(int) - np.array(COLOR) * 255).max(axis=1) <= 1)


# --------------------------------------------------------------------------- runs, CLI, bad input
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A saved two-step run (no assets written by generate)."""
    from dreamfusion.api import generate

    out = tmp_path_factory.mktemp("run") / "run"
    generate("a red sphere", out=out, config=tiny_config(steps=2), export_mesh=False, turntable=False)
    return out


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_command_on_a_saved_run(run, tmp_path, capsys):
    out = tmp_path / "asset" / "m.glb"
    assert main(["export", str(run), "--out", str(out), "--resolution", "32", "--texture-size", "64"]) == 0
    printed = capsys.readouterr().out
    assert f"mesh:        {out}" in printed and "64x64 texture" in printed
    assert len(_load_glb(out).faces) > 0
    assert [p.name for p in out.parent.iterdir()] == ["m.glb"]  # no temporary left


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "fbx"], "unknown format 'fbx'"),
        (["--out", "{tmp}/m.stl"], "unknown format 'stl'"),
        (["--format", "obj", "--out", "{tmp}/m.glb"], "must end in .obj"),
        (["--resolution", "8"], "--resolution must be between"),
        (["--resolution", "100000"], "--resolution must be between"),
        (["--texture-size", "3"], "--texture-size must be"),
        (["--level", "dense"], "--level must be 'auto' or a number"),
        (["--level", "-1"], "--level must be a positive"),
        (["--out", "{tmp}"], "is a folder"),
        (["--faces", "-2"], "--faces"),
    ],
)
def test_export_bad_input_gets_one_line_and_writes_nothing(run, tmp_path, capsys, args, message):
    before = _tree(run)
    code = main(["export", str(run), *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert _tree(run) == before and list(tmp_path.iterdir()) == []


def test_export_of_a_folder_without_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint in" in err[0]
    assert list((tmp_path / "empty").iterdir()) == []
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_generate_writes_the_mesh_and_the_turntable(tmp_path):
    from dreamfusion.api import generate

    result = generate("a red sphere", out=tmp_path / "run", config=tiny_config(steps=2))
    assert result.mesh == tmp_path / "run" / "mesh.glb" and result.mesh.is_file()
    assert result.video == tmp_path / "run" / "turntable.mp4" and result.video.is_file()
    assert len(_load_glb(result.mesh).faces) > 0
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


def test_generate_flags_skip_the_assets(tmp_path):
    code = main(
        [
            "generate",
            "a red sphere",
            "--preset",
            "smoke",
            "--quiet",
            "--steps",
            "1",
            "--camera.resolution",
            "12",
            "--render.samples-per-ray",
            "12",
            "--train.preview-resolution",
            "16",
            "--out",
            str(tmp_path / "run"),
            "--no-mesh",
            "--no-video",
        ]
    )
    assert code == 0
    assert not (tmp_path / "run" / "mesh.glb").exists() and not (tmp_path / "run" / "turntable.mp4").exists()


def test_textured_export_is_decimated_before_the_unwrap_and_keeps_the_albedo(tmp_path):
    field = GradientSphere(RADIUS, COLOR, BOUND)
    options = ExportOptions(resolution=64, texture_size=256, max_faces=50_000, texture_faces=1500)
    result = export_mesh(field, tmp_path / "ball.glb", options)
    assert result.faces <= 1500 and result.watertight
    mesh = _load_glb(result.path)
    merged = mesh.copy()
    merged.merge_vertices(merge_tex=True, merge_norm=True)
    assert merged.is_watertight and merged.volume == pytest.approx(SPHERE_VOLUME, rel=0.03)
    points, faces = trimesh.sample.sample_surface(mesh, 3000, seed=0)
    truth = field(torch.tensor(points @ Z_UP_TO_Y_UP[:3, :3], dtype=torch.float32))[1].numpy()
    error = np.abs(_sample_texture(mesh, points, faces) - truth).max(axis=1)
    assert np.median(error) < 0.005 and np.percentile(error, 99) < 0.02
    # Vertex colors (PLY) keep every face up to max_faces.
    ply = export_mesh(field, tmp_path / "ball.ply", options)
    assert ply.faces > 5000
