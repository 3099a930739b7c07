"""The web viewer: camera conversion, field renders, and `dreamfusion view` seen by headless Chromium."""

import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from dreamfusion.cameras import orbit_cameras
from dreamfusion.cli import main
from dreamfusion.config import Config
from dreamfusion.fields import ConstantBackground, SphereField
from dreamfusion.turntable import TurntableOptions, parse_light, render_turntable
from dreamfusion.viewer import Viewer, camera_from_viser
from tests.conftest import tiny_config

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _viser_pose_at_front(distance: float) -> tuple[np.ndarray, np.ndarray]:
    """A viser (OpenCV) camera on +x looking at the origin with +z up: x right, y down, z forward."""
    right, down, forward = [0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]
    xyzw = Rotation.from_matrix(np.array([right, down, forward]).T).as_quat()
    return np.array([distance, 0.0, 0.0]), np.roll(xyzw, 1)  # -> wxyz


def test_viser_camera_becomes_the_matching_orbit_camera():
    position, wxyz = _viser_pose_at_front(1.3)
    fov = 2.0 * math.atan(0.5)  # focal = height
    ours = camera_from_viser(position, wxyz, fov, aspect=1.0, height=32, light_azimuth=0, light_elevation=0)
    orbit = orbit_cameras(1, 32, elevation=0.0, distance=1.3)
    torch.testing.assert_close(ours.c2w, orbit.c2w, atol=1e-5, rtol=0)
    assert ours.focal.item() == pytest.approx(32.0) and (ours.width, ours.height) == (32, 32)
    torch.testing.assert_close(ours.light_position, torch.tensor([[2.6, 0.0, 0.0]]), atol=1e-5, rtol=0)


class _FakeClient:
    """What Viewer.render_client touches of a viser client: its camera and its background image."""

    def __init__(self, position, wxyz, fov):
        self.camera = type("Camera", (), {"position": position, "wxyz": wxyz, "fov": fov, "aspect": 1.0})()
        self.images = []
        self.scene = type(
            "Scene", (), {"set_background_image": lambda _, image, format="jpeg": self.images.append(image)}
        )()


def test_field_render_in_the_viewer_equals_the_turntable_frame():
    field, background = SphereField(0.45, (0.8, 0.2, 0.2), 0.8), ConstantBackground((1.0, 1.0, 1.0))
    viewer = Viewer(field, background, Config(), mesh=None, port=_free_port(), render_height=32)
    try:
        viewer.mode.value = "albedo"
        position, wxyz = _viser_pose_at_front(1.3)
        client = _FakeClient(position, wxyz, 2.0 * math.atan(0.5))
        viewer.render_client(client)
    finally:
        viewer.stop()
    options = TurntableOptions(frames=1, size=32, mode="albedo", elevation=0.0, light=parse_light("camera"))
    expected = render_turntable(field, background, Config(), options)[0]
    assert len(client.images) == 1 and client.images[0].shape == (32, 32, 3)
    assert np.abs(client.images[0].astype(int) - expected.astype(int)).max() <= 1
    assert client.images[0][16, 16].tolist() == [204, 51, 51]


# ------------------------------------------------------------------------- the browser test
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from dreamfusion.api import generate

    out = tmp_path_factory.mktemp("run") / "run"
    generate("a red sphere", out=out, config=tiny_config(steps=2), export_mesh=False, turntable=False)
    return out


def _artifact_dir(tmp_path: Path) -> Path:
    """Where the screenshot is kept: $DREAMFUSION_TEST_ARTIFACTS if set, else the test's tmp folder."""
    folder = Path(os.environ.get("DREAMFUSION_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait_for_url(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        if line.startswith("viewer: http"):
            return line.split(" ", 1)[1].strip()
    raise AssertionError(f"the viewer did not start; its output:\n{''.join(lines)}")


def _screenshot(url: str, path: Path) -> np.ndarray:
    """Headless Chromium with software WebGL (SwiftShader): the page after 15 s of virtual time."""
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--use-gl=swiftshader", "--enable-unsafe-swiftshader",
             "--window-size=800,600", "--virtual-time-budget=15000", f"--screenshot={path}", url],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _object_fraction(image: np.ndarray) -> float:
    """Share of the central region that differs from the page background.

    The viewer frames the object to fill 85% of the view's height, so the bottom rows right of
    the axes gizmo are background; the region leaves out the corners where viser draws its
    panel and notices.
    """
    h, w = image.shape[:2]
    background = np.median(image[h - 6 :, w // 4 :].reshape(-1, 3), axis=0)
    assert background.min() > 200, f"expected viser's light page background, got {background}"
    region = image[h // 4 : 3 * h // 4, w // 4 : 3 * w // 5]
    return float((np.abs(region - background).max(-1) > 12).mean())


def test_view_command_draws_the_object_in_headless_chromium(run, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    assert main(["export", str(run), "--resolution", "32", "--texture-size", "64"]) == 0
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamfusion.cli", "view", str(run), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = _wait_for_url(proc, timeout=90)
        assert url == f"http://localhost:{port}"
        shot = _artifact_dir(tmp_path) / "viewer_screenshot.png"
        fraction = 0.0
        for _ in range(3):  # the page may still be loading the mesh on a busy machine
            fraction = _object_fraction(_screenshot(url, shot))
            if fraction > 0.3:
                break
        print(f"viewer screenshot: {shot} (object covers {fraction:.0%} of the central region)")
        assert fraction > 0.3, f"no object drawn in {shot}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
