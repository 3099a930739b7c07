"""A local web viewer (viser, which serves its own client): the mesh, and the field rendered live.

    dreamfusion view RUN [--port 8080] [--host 127.0.0.1]

On a headless server, forward the port (ssh -L 8080:localhost:8080 host) and open
http://localhost:8080. The panel switches between the mesh (drawn by the browser) and the
field (volume-rendered here from the browser's camera, in any turntable mode, with the light
placed by two sliders). `generate --view` shows the field as it trains, refreshed every second.
"""

from __future__ import annotations

import ipaddress
import sys
import threading
import time
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
import trimesh

from dreamfusion.config import Config
from dreamfusion.errors import UserError
from dreamfusion.export.turntable import MODES, SHADING_OF_MODE, frames_from_render
from dreamfusion.export.write import read_mesh
from dreamfusion.fields.base import Background, Field, device_of
from dreamfusion.render.renderer import render_views
from dreamfusion.scene.cameras import Cameras

DEFAULT_PORT = 8080


def _quaternion_to_matrix(wxyz: np.ndarray) -> np.ndarray:
    w, x, y, z = wxyz / np.linalg.norm(wxyz)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def camera_from_viser(
    position: np.ndarray,
    wxyz: np.ndarray,
    fov: float,
    aspect: float,
    height: int,
    light_azimuth: float,
    light_elevation: float,
) -> Cameras:
    """One of our Cameras from a viser camera (OpenCV axes: looks along +z, y down).

    Our cameras are OpenGL (look along -z, y up): flip the y and z columns. The light is fixed
    in the world at (azimuth, elevation) degrees, twice the camera's distance away.
    """
    rot = _quaternion_to_matrix(np.asarray(wxyz, dtype=np.float64)) @ np.diag([1.0, -1.0, -1.0])
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = rot, position
    width = max(1, int(round(height * aspect)))
    distance = float(np.linalg.norm(position))
    el, az = np.radians(light_elevation), np.radians(light_azimuth)
    light = (
        2.0 * max(distance, 1e-3) * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    )
    return Cameras(
        c2w=torch.tensor(c2w, dtype=torch.float32)[None],
        focal=torch.tensor([0.5 * height / np.tan(0.5 * fov)], dtype=torch.float32),
        width=width,
        height=height,
        elevation=torch.tensor(
            [np.degrees(np.arcsin(position[2] / max(distance, 1e-9)))], dtype=torch.float32
        ),
        azimuth=torch.tensor([np.degrees(np.arctan2(position[1], position[0]))], dtype=torch.float32),
        distance=torch.tensor([distance], dtype=torch.float32),
        light_position=torch.tensor(light, dtype=torch.float32)[None],
    )


def _frozen_copy(module):
    if not isinstance(module, torch.nn.Module):
        return module
    copy = deepcopy(module).eval()
    copy.requires_grad_(False)
    return copy


def exposure_warning(host: str) -> str | None:
    """The one-line warning for a viewer reachable from other machines (None on loopback): the page
    has no login, and whoever reaches the port sees the run and drives its renders."""
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a host name other than localhost: it may resolve to any interface
    return (
        f"warning: the viewer listens on {host}, and it has no authentication: anyone who can reach "
        "this port sees the run; use --host 127.0.0.1 with ssh -L to keep it private"
    )


class Viewer:
    """A viser server showing `mesh` (+z up, world units) and renders of `field` from each client's camera."""

    def __init__(
        self,
        field: Field,
        background: Background,
        config: Config,
        mesh: trimesh.Trimesh | None = None,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        render_height: int = 192,
        refresh_seconds: float = 0.0,
        title: str = "dreamfusion",
        live: bool = False,
        show: str = "mesh",
    ):
        """live=True: the field is being trained in another thread; each render works on a
        snapshot of it, refreshed every second (unless `refresh_seconds` says otherwise)."""
        import viser  # imported here: only the viewer needs it

        self.field, self.background, self.config = field, background, config
        self.live = live
        self.refresh_seconds = refresh_seconds or (1.0 if live else 0.0)
        warning = exposure_warning(host)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        self.server = viser.ViserServer(host=host, port=port, label=title, verbose=False)
        self.server.scene.set_up_direction("+z")
        # Frame the object: its bounding radius fills 85% of the half field of view, seen from
        # 20 degrees up and 20 degrees to the side of the front (+x).
        radius = (
            float(np.linalg.norm(mesh.vertices, axis=1).max()) if mesh is not None else field.bound_radius
        )
        fov = np.radians(50.0)
        distance = radius / np.sin(0.5 * fov) / 0.85
        el, az = np.radians(20.0), np.radians(20.0)
        direction = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        self.server.initial_camera.position = tuple(distance * direction)
        self.server.initial_camera.look_at = (0.0, 0.0, 0.0)
        self.server.initial_camera.fov = fov

        gui = self.server.gui
        gui.add_markdown(f"**{title}**")
        choices = ("mesh", "field") if mesh is not None else ("field",)
        self.show = gui.add_dropdown("show", choices, initial_value=show if show in choices else choices[0])
        self.mode = gui.add_dropdown("field mode", MODES, initial_value="color")
        self.height = gui.add_slider("field pixels", 32, 512, 16, render_height)
        self.light_azimuth = gui.add_slider("light azimuth", -180.0, 180.0, 5.0, 30.0)
        self.light_elevation = gui.add_slider("light elevation", -85.0, 85.0, 5.0, 45.0)
        self.mesh_handle = self.server.scene.add_mesh_trimesh("/mesh", mesh) if mesh is not None else None

        self._dirty = threading.Event()
        self._ready: set[int] = set()  # clients whose camera is known
        self._stop = threading.Event()
        for handle in (self.show, self.mode, self.height, self.light_azimuth, self.light_elevation):
            handle.on_update(lambda _: self._dirty.set())
        self.server.on_client_connect(self._on_connect)
        self._worker = threading.Thread(target=self._render_loop, name="dreamfusion-viewer", daemon=True)
        self._worker.start()

    @property
    def port(self) -> int:
        """The port in use (viser moves to the next free one when the requested one is taken)."""
        return self.server.get_port()

    @property
    def url(self) -> str:
        host = self.server.get_host()
        return f"http://{'localhost' if host in ('0.0.0.0', '127.0.0.1') else host}:{self.port}"

    def _on_connect(self, client) -> None:
        # Until the browser reports its camera, viser holds a placeholder pose: render only after.
        def camera_moved(_) -> None:
            self._ready.add(client.client_id)
            self._dirty.set()

        client.camera.on_update(camera_moved)

    def render_client(self, client) -> None:
        """Render the field from one client's camera and send it as that client's background."""
        if self.show.value != "field":
            client.scene.set_background_image(None)
            return
        cam = client.camera
        cameras = camera_from_viser(
            np.asarray(cam.position),
            np.asarray(cam.wxyz),
            float(cam.fov),
            float(cam.aspect),
            int(self.height.value),
            float(self.light_azimuth.value),
            float(self.light_elevation.value),
        )
        field, background = self.field, self.background
        if self.live:
            # The optimizer updates parameters in place between our forward and the normals'
            # backward; a frozen copy keeps autograd from seeing tensors change under it.
            field, background = _frozen_copy(field), _frozen_copy(background)
        device = device_of(field)
        out = render_views(
            field,
            background,
            cameras.to(device),
            SHADING_OF_MODE[self.mode.value],
            self.config.render,
            self.config.shading,
            chunk_rays=8192,
        )
        image = frames_from_render(out, self.mode.value)[0]
        client.scene.set_background_image(image.cpu().numpy(), format="jpeg")

    def _render_loop(self) -> None:
        """One worker renders for every client whenever a camera or setting changed (or on a timer)."""
        last = time.monotonic()
        while not self._stop.is_set():
            timer = self.refresh_seconds > 0 and time.monotonic() - last >= self.refresh_seconds
            if not (self._dirty.wait(0.05) or timer):
                continue
            self._dirty.clear()
            last = time.monotonic()
            if self.mesh_handle is not None:
                self.mesh_handle.visible = self.show.value == "mesh"
            for client_id, client in list(self.server.get_clients().items()):
                if client_id not in self._ready:
                    continue
                try:
                    self.render_client(client)
                except Exception as e:  # a render error must not kill the viewer; show it instead
                    print(f"viewer: render failed ({type(e).__name__}: {e})", flush=True)

    def stop(self) -> None:
        self._stop.set()
        self._worker.join(timeout=5.0)
        self.server.stop()


def serve_run(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    mesh: Path | None = None,
    resolution: int = 128,
    device: str | torch.device = "cpu",
    show: str = "mesh",
    block: bool = True,
) -> Viewer:
    """`dreamfusion view RUN`: load the run, find or extract its mesh, serve until Ctrl-C."""
    from dreamfusion.export import ExportOptions, build_mesh, validate_options
    from dreamfusion.export.texture import vertex_colored
    from dreamfusion.training.loading import load_run

    if show not in ("mesh", "field"):
        raise UserError(f"--show must be mesh or field (got '{show}')")
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be between 1 and 65535 (got {port})")
    if mesh is not None and not Path(mesh).is_file():
        raise UserError(f"mesh file {mesh} does not exist")
    options = ExportOptions(resolution=resolution, texture_size=0, max_faces=100_000)
    validate_options(options)
    run = load_run(run_dir, device)
    mesh = mesh or (run.run_dir / "mesh.glb" if (run.run_dir / "mesh.glb").is_file() else None)
    if mesh is not None:
        shown = read_mesh(Path(mesh))
    elif show == "field":
        shown = None  # no mesh on disk and the field asked for: no time spent extracting one
    else:
        try:
            shown = vertex_colored(run.field, build_mesh(run.field, options)[0])
        except UserError as e:
            print(f"viewer: no mesh ({e}); showing the field only", flush=True)
            shown = None
    # A first field render that takes seconds on the CPU is a poor welcome: start small there.
    height = 192 if torch.device(device).type == "cuda" else 96
    viewer = Viewer(
        run.field, run.background, run.config, shown, host=host, port=port, render_height=height,
        title=run.prompt, show=show,
    )  # fmt: skip
    print(f"viewer: {viewer.url}", flush=True)
    if block:
        try:
            while True:
                time.sleep(1.0)
        finally:
            viewer.stop()
    return viewer
