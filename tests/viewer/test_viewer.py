"""The web viewer: camera conversion, field renders, and `dreamfusion view` seen by headless Chromium."""

import base64
import json
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

from dreamfusion.cli import main
from dreamfusion.config import Config
from dreamfusion.export.turntable import TurntableOptions, parse_light, render_turntable
from dreamfusion.fields import ConstantBackground, SphereField
from dreamfusion.scene.cameras import orbit_cameras
from dreamfusion.viewer.server import Viewer, camera_from_viser
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
    """Where screenshots are kept: $DREAMFUSION_TEST_ARTIFACTS if set, else the test's tmp folder."""
    folder = Path(os.environ.get("DREAMFUSION_TEST_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class _Chromium:
    """Headless Debian chromium driven over the DevTools protocol, so the test waits in real time
    (a --virtual-time-budget screenshot can fire before the websocket has delivered the scene)."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--use-gl=swiftshader", "--enable-unsafe-swiftshader", "--window-size=800,600",
             "--remote-debugging-port=0"]  # fmt: skip

    def __init__(self):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="chromium-")
        self.proc = subprocess.Popen(
            [CHROMIUM, *self.FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        active = Path(self.profile) / "DevToolsActivePort"  # chromium writes its port and path here
        deadline = time.monotonic() + 60
        while not (active.is_file() and len(active.read_text().split()) == 2):
            assert time.monotonic() < deadline and self.proc.poll() is None, "chromium did not start"
            time.sleep(0.2)
        port, path = active.read_text().split()
        self.ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=30)
        self.next_id = 0
        self.session = None

    def call(self, method: str, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:  # skip events until our answer
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url=url)["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def screenshot(self, path: Path) -> np.ndarray:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return np.asarray(Image.open(path).convert("RGB")).astype(int)

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)


def _start_viewer(run: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamfusion.cli", "view", str(run), "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline, lines = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if line.startswith("viewer: http"):
            url = line.split(" ", 1)[1].strip()
            assert url == f"http://localhost:{port}"
            return proc, url
    proc.kill()
    raise AssertionError(f"the viewer did not start; its output:\n{''.join(lines)}")


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


def _wait_for_object(browser: _Chromium, shot: Path, timeout: float = 60.0) -> float:
    """Screenshot every second until the object covers 30% of the central region (or time is up)."""
    deadline, fraction = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        fraction = _object_fraction(browser.screenshot(shot))
        if fraction > 0.3:
            break
        time.sleep(1.0)
    print(f"viewer screenshot: {shot} (object covers {fraction:.0%} of the central region)")
    return fraction


@pytest.mark.parametrize("show", ["mesh", "field"])
def test_view_command_draws_the_object_in_headless_chromium(run, tmp_path, show):
    """`dreamfusion view RUN` after `dreamfusion export RUN`: the browser draws the mesh (WebGL),
    or shows the field rendered by the server from the browser's camera."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    if not (run / "mesh.glb").exists():
        assert main(["export", str(run), "--resolution", "32", "--texture-size", "64"]) == 0
    viewer, url = _start_viewer(run, "--show", show)
    browser = None
    try:
        browser = _Chromium()
        browser.open(url)
        shot = _artifact_dir(tmp_path) / f"viewer_{show}.png"
        assert _wait_for_object(browser, shot) > 0.3, f"no object drawn in {shot}"
    finally:
        if browser is not None:
            browser.close()
        viewer.terminate()
        viewer.wait(timeout=30)


def test_view_bad_input_gets_one_line(run, tmp_path, capsys):
    for argv, message in [
        (["view", str(run), "--show", "wireframe"], "--show must be mesh or field"),
        (["view", str(run), "--port", "70000"], "--port must be between"),
        (["view", str(run), "--mesh", str(tmp_path / "nope.glb")], "does not exist"),
        (["view", str(tmp_path)], "no checkpoint in"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
