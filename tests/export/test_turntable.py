"""Turntables of an analytic sphere: frame count and size per mode, hand-computed pixels, relighting."""

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from dreamfusion.cli import main
from dreamfusion.config import Config
from dreamfusion.errors import UserError
from dreamfusion.export.turntable import (
    MODES,
    Light,
    TurntableOptions,
    parse_light,
    render_turntable,
    write_video,
)
from dreamfusion.fields import ConstantBackground, SphereField
from tests.conftest import tiny_config

RADIUS, COLOR, BOUND = 0.45, (0.8, 0.2, 0.2), 0.8
ALBEDO_8BIT = np.array(COLOR) * 255.0  # (204, 51, 51)


def _frames(mode, frames=4, size=24, light="camera:0,0", elevation=0.0):
    field, background = SphereField(RADIUS, COLOR, BOUND), ConstantBackground((1.0, 1.0, 1.0))
    options = TurntableOptions(
        frames=frames, size=size, mode=mode, elevation=elevation, light=parse_light(light)
    )
    return render_turntable(field, background, Config(), options)


def _center(frame):  # (H, W, 3) -> the mean of the 2 x 2 central pixels, as float
    h, w = frame.shape[:2]
    return frame[h // 2 - 1 : h // 2 + 1, w // 2 - 1 : w // 2 + 1].reshape(-1, 3).mean(0)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_gives_the_requested_frames_and_size(mode):
    frames = _frames(mode, frames=5, size=20)
    assert frames.shape == (5, 20, 20, 3) and frames.dtype == np.uint8
    corner = frames[0, 0, 0].astype(int)
    assert corner.tolist() == ([0, 0, 0] if mode == "depth" else [255, 255, 255])


def test_center_pixels_match_hand_computed_shading():
    """The center ray of an elevation-0 camera meets the sphere head-on, normal = toward the camera.

    With the light at the camera (camera:0,0) the Lambert term is 1, so c = albedo (0.9 + 0.1);
    with the light behind the object (world:180,0 seen from azimuth 0) only the ambient 0.1 is left.
    """
    np.testing.assert_allclose(_center(_frames("albedo")[0]), ALBEDO_8BIT, atol=2)
    np.testing.assert_allclose(_center(_frames("color")[0]), ALBEDO_8BIT, atol=3)
    np.testing.assert_allclose(_center(_frames("textureless")[0]), [255, 255, 255], atol=3)
    np.testing.assert_allclose(_center(_frames("color", light="world:180,0")[0]), 0.1 * ALBEDO_8BIT, atol=2)
    # Frame 0 looks from +x: the normal (1, 0, 0) shows as ((1 + 1) / 2, 1/2, 1/2).
    np.testing.assert_allclose(_center(_frames("normal")[0]), [255, 127.5, 127.5], atol=4)
    depth = _frames("depth")[0]
    assert _center(depth).min() >= 250  # the nearest visible point is white
    assert 0 < depth[12, 3, 0] < 250  # toward the silhouette: farther, darker, still not background


def test_a_world_light_stays_put_while_the_object_turns():
    """Light fixed at (2.6, 0, 0); cameras every 45 degrees. Seen from azimuth 45 the center point is
    p = 0.45 (cos 45, sin 45, 0), n = p / 0.45, and n . (L - p) / |L - p| = 0.6027, so
    c = albedo (0.9 * 0.6027 + 0.1) = 0.6424 albedo; from 90 degrees on only the ambient 0.1 is left."""
    frames = _frames("color", frames=8, light="world:0,0")
    np.testing.assert_allclose(_center(frames[0]), ALBEDO_8BIT, atol=3)
    np.testing.assert_allclose(_center(frames[1]), 0.6424 * ALBEDO_8BIT, atol=4)
    for k in (2, 3, 4, 5, 6):
        np.testing.assert_allclose(_center(frames[k]), 0.1 * ALBEDO_8BIT, atol=2)
    np.testing.assert_allclose(_center(frames[7]), _center(frames[1]), atol=2)  # mirror of 45 degrees
    # A light that follows the camera sees the same sphere from every side.
    following = _frames("color", frames=4, light="camera:30,30")
    assert np.abs(following.astype(int) - following[:1].astype(int)).max() <= 2


def test_light_parsing():
    assert parse_light("camera") == Light("camera", 30.0, 30.0, None)
    assert parse_light("camera:-45,10") == Light("camera", -45.0, 10.0, None)
    assert parse_light("world:90,60,3") == Light("world", 90.0, 60.0, 3.0)
    for bad in ("sun", "world", "world:1", "camera:1,2,3", "world:a,b", "world:0,0,-1"):
        with pytest.raises(UserError, match="light"):
            parse_light(bad)


def test_video_files_hold_every_frame(tmp_path):
    frames = _frames("color", frames=6, size=32, light="world:0,0")
    mp4 = write_video(frames, tmp_path / "t.mp4", fps=10)
    with imageio.get_reader(mp4, format="FFMPEG") as reader:
        assert reader.count_frames() == 6
        assert reader.get_data(0).shape == (32, 32, 3)
    gif = write_video(frames, tmp_path / "t.gif", fps=10)
    with Image.open(gif) as image:
        assert image.n_frames == 6 and image.size == (32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.gif", "t.mp4"]


# ------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from dreamfusion.api import generate

    out = tmp_path_factory.mktemp("run") / "run"
    generate("a red sphere", out=out, config=tiny_config(steps=2), export_mesh=False, turntable=False)
    return out


def test_render_command_on_a_saved_run(run, tmp_path, capsys):
    video = tmp_path / "spin.mp4"
    argv = ["render", str(run), "--video", str(video), "--frames", "3", "--size", "32", "--mode", "normal"]
    assert main([*argv, "--light", "world:0,45"]) == 0
    assert f"turntable:   {video} (3 frames, 32x32, normal)" in capsys.readouterr().out
    with imageio.get_reader(video, format="FFMPEG") as reader:
        assert reader.count_frames() == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode", "wireframe"], "unknown mode 'wireframe'"),
        (["--size", "8"], "--size must be between"),
        (["--size", "5000"], "--size must be between"),
        (["--size", "33"], "even --size"),
        (["--frames", "0"], "--frames must be between"),
        (["--elevation", "95"], "--elevation"),
        (["--light", "sun"], "--light must be"),
        (["--video", "{tmp}"], "is a folder"),
        (["--video", "{tmp}/t.avi"], "must end in .mp4 or .gif"),
        (["--mesh", "{tmp}/none.glb"], "no mesh file at"),
    ],
)
def test_render_bad_input_gets_one_line_and_writes_nothing(run, tmp_path, capsys, args, message):
    before = sorted(p.name for p in run.rglob("*"))
    code = main(["render", str(run), *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(p.name for p in run.rglob("*")) == before and list(tmp_path.iterdir()) == []


def test_render_of_a_folder_without_checkpoint(tmp_path, capsys):
    assert main(["render", str(tmp_path), "--video", str(tmp_path / "t.gif")]) == 2
    assert "no checkpoint in" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _no_ffmpeg(monkeypatch, tmp_path):
    """imageio-ffmpeg pointed at an ffmpeg that does not exist, as on a machine without one."""
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(tmp_path / "no-such-ffmpeg"))


def test_an_mp4_without_ffmpeg_is_one_line_and_writes_nothing(monkeypatch, tmp_path):
    _no_ffmpeg(monkeypatch, tmp_path)
    with pytest.raises(UserError, match="pip install imageio-ffmpeg"):
        write_video(_frames("color", frames=2, size=16), tmp_path / "t.mp4")
    assert not (tmp_path / "t.mp4").exists()


def test_assets_fall_back_to_a_gif_without_ffmpeg_and_time_each_stage(monkeypatch, tmp_path):
    from dreamfusion.export.assets import write_assets

    _no_ffmpeg(monkeypatch, tmp_path)
    field, background = SphereField(RADIUS, COLOR, BOUND), ConstantBackground((1.0, 1.0, 1.0))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assets = write_assets(run_dir, field, background, tiny_config(steps=2), mesh=True, video=True)
    assert assets.video == run_dir / "turntable.gif" and assets.mesh == run_dir / "mesh.glb"
    with Image.open(assets.video) as image:  # a turning sphere: Pillow keeps one frame of them all
        assert image.format == "GIF" and image.size[0] == image.size[1] > 0
    assert set(assets.seconds) == {"mesh", "video"} and all(s > 0 for s in assets.seconds.values())


def test_assets_take_the_turntable_from_the_mesh_unless_told_otherwise(tmp_path):
    """By default the video shows the mesh just written, rasterized; the sphere's silhouette and
    color are the volume render's (turntable_from="field"), but for the field's soft edge; without a
    mesh the field is rendered."""
    from dreamfusion.export.assets import asset_options, write_assets

    field, background = SphereField(RADIUS, COLOR, BOUND), ConstantBackground((1.0, 1.0, 1.0))
    config = tiny_config(steps=2)
    for name in ("field", "mesh", "no-mesh"):
        (tmp_path / name).mkdir()
    from_field = write_assets(tmp_path / "field", field, background, config, turntable_from="field")
    from_mesh = write_assets(tmp_path / "mesh", field, background, config)
    without_mesh = write_assets(tmp_path / "no-mesh", field, background, config, mesh=False)
    assert from_mesh.mesh is not None and from_mesh.video is not None and without_mesh.mesh is None
    frames = [np.stack(list(imageio.mimread(a.video))).astype(float) for a in (from_field, from_mesh)]
    assert np.array_equal(np.stack(list(imageio.mimread(without_mesh.video))), frames[0])
    options = asset_options(config)[1]
    assert frames[1].shape == frames[0].shape == (options.frames, options.size, options.size, 3)
    covered = [(f < 250).any(-1) for f in frames]  # not the white background
    # The field's soft edge widens its silhouette by a pixel or so at this size, and the mesh's lies
    # within it.
    assert (covered[0] & covered[1]).sum() / (covered[0] | covered[1]).sum() > 0.75
    assert (covered[1] & ~covered[0]).mean() < 0.01
    assert np.abs(_center(frames[1][0]) - _center(frames[0][0])).max() < 12  # of 255
    with pytest.raises(UserError, match="--turntable-from must be one of field, mesh"):
        write_assets(tmp_path / "mesh", field, background, config, turntable_from="nerf")


def test_render_command_rasterizes_a_mesh_file(run, tmp_path, capsys):
    from dreamfusion.export import ExportOptions, export_mesh

    mesh = export_mesh(
        SphereField(RADIUS, COLOR, BOUND), tmp_path / "ball.glb", ExportOptions(resolution=48)
    ).path
    video = tmp_path / "spin.gif"
    argv = ["render", str(run), "--mesh", str(mesh), "--video", str(video), "--frames", "3", "--size", "32"]
    assert main(argv) == 0
    assert f"turntable:   {video} (3 frames, 32x32, color)" in capsys.readouterr().out
    frames = np.stack(imageio.mimread(video))[..., :3].astype(float)
    assert frames.shape == (3, 32, 32, 3)
    assert np.abs(_center(frames[0]) - ALBEDO_8BIT).max() < 0.35 * 255  # the red sphere, lit
    damaged = tmp_path / "damaged.glb"
    damaged.write_bytes(b"glTF not really")
    for args, message in (
        (["--mesh", str(mesh), "--mode", "depth"], "'depth' needs the field"),
        (["--mesh", str(damaged)], "cannot read the mesh"),
    ):
        assert main(["render", str(run), *args, "--video", str(tmp_path / "bad.gif")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not (tmp_path / "bad.gif").exists()
