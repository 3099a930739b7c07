"""Turntables: orbit renders of a field at any resolution, under a light the user places, as video.

Modes: color (lit albedo over the background), albedo, textureless (lit white), normal (world
normals as RGB = (n + 1) / 2 over white) and depth (near = white, far = black, background black).

Lights (--light): `camera` or `camera:AZ,EL` keeps the light AZ, EL degrees off each camera,
turning with it (default camera:30,30, as the previews); `world:AZ,EL[,DIST]` fixes it in the
world while the object turns under it (relighting). DIST defaults to twice the camera distance.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dreamfusion.config import Config
from dreamfusion.errors import UserError
from dreamfusion.export.files import atomic_output, check_output
from dreamfusion.export.write import FORMATS, read_mesh
from dreamfusion.fields.base import Background, Field, device_of
from dreamfusion.render.renderer import RenderOutput, render_views
from dreamfusion.scene.cameras import Cameras, orbit_cameras, spherical_to_position

MODES = ("color", "albedo", "textureless", "normal", "depth")
SHADING_OF_MODE = {
    "color": "lambertian",
    "albedo": "albedo",
    "textureless": "textureless",
    "normal": "albedo",
    "depth": "albedo",
}
VIDEO_SUFFIXES = (".mp4", ".gif")
SIZE_RANGE = (16, 2048)
FRAMES_RANGE = (1, 3600)


@dataclass
class Light:
    """Where the point light sits: relative to each camera, or fixed in the world."""

    frame: str = "camera"  # "camera" or "world"
    azimuth: float = 30.0  # degrees (added to the camera's azimuth when frame == "camera")
    elevation: float = 30.0  # degrees (added to the camera's elevation when frame == "camera")
    distance: float | None = None  # None: twice the camera distance


@dataclass
class TurntableOptions:
    """One orbit of the camera around the object."""

    frames: int = 120
    size: int = 256
    mode: str = "color"
    elevation: float = 15.0
    distance: float = 1.3
    focal_multiplier: float = 1.0
    light: Light = dataclasses.field(default_factory=Light)
    fps: int = 30
    views_per_batch: int = 4  # frames rendered together (bounds memory with chunk_rays)
    chunk_rays: int = 8192


def parse_light(text: str) -> Light:
    """`camera`, `camera:AZ,EL` or `world:AZ,EL[,DIST]` -> Light; UserError naming the form otherwise."""
    frame, _, numbers = text.strip().partition(":")
    usage = "--light must be camera, camera:AZ,EL or world:AZ,EL[,DIST] (degrees)"
    if frame not in ("camera", "world"):
        raise UserError(f"{usage}; got '{text}'")
    if not numbers:
        if frame == "world":
            raise UserError(f"{usage}; world needs AZ,EL")
        return Light()
    try:
        values = [float(v) for v in numbers.split(",")]
    except ValueError:
        raise UserError(f"{usage}; got '{text}'") from None
    if len(values) not in ((2,) if frame == "camera" else (2, 3)):
        raise UserError(f"{usage}; got '{text}'")
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"--light angles and distance must be finite numbers; got '{text}'")
    if len(values) == 3 and not values[2] > 0:
        raise UserError(f"light distance must be positive; got '{text}'")
    return Light(frame, values[0], values[1], values[2] if len(values) == 3 else None)


def validate(options: TurntableOptions) -> None:
    """UserError (one line) for options out of range, before any rendering."""
    if options.mode not in MODES:
        raise UserError(f"unknown mode '{options.mode}'; choose one of: {', '.join(MODES)}")
    lo, hi = SIZE_RANGE
    if not lo <= options.size <= hi:
        raise UserError(f"--size must be between {lo} and {hi} pixels (got {options.size})")
    lo, hi = FRAMES_RANGE
    if not lo <= options.frames <= hi:
        raise UserError(f"--frames must be between {lo} and {hi} (got {options.frames})")
    if not -89.0 <= options.elevation <= 89.0:
        raise UserError(f"--elevation must be between -89 and 89 degrees (got {options.elevation})")
    if not options.distance > 0 or not options.fps > 0:
        raise UserError("--distance and --fps must be positive")


def turntable_cameras(options: TurntableOptions) -> Cameras:
    """`frames` cameras evenly around the object, each with the light placed by `options.light`."""
    light = options.light
    cameras = orbit_cameras(
        options.frames,
        options.size,
        elevation=options.elevation,
        distance=options.distance,
        focal_multiplier=options.focal_multiplier,
        light_offset=(light.azimuth, light.elevation),
    )
    distance = light.distance if light.distance is not None else 2.0 * options.distance
    if light.frame == "camera":
        # orbit_cameras already put it at (azimuth, elevation) off each camera; only rescale.
        scale = distance / cameras.light_position.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        cameras.light_position = cameras.light_position * scale
    else:
        n = options.frames
        fixed = spherical_to_position(
            torch.full((n,), light.elevation), torch.full((n,), light.azimuth), torch.full((n,), distance)
        )
        cameras.light_position = fixed.float()
    return cameras


def visible_depth_range(depth: Tensor, alpha: Tensor) -> tuple[float, float]:
    """Nearest and farthest mean depth over pixels at least half opaque (depth, alpha: (B, 1, H, W))."""
    mean = depth / alpha.clamp(min=1e-6)
    seen = mean[alpha > 0.5]
    if seen.numel() == 0:
        return 0.0, 1.0
    return float(seen.min()), float(seen.max())


def depth_frames(depth: Tensor, alpha: Tensor, depth_range: tuple[float, float] | None = None) -> Tensor:
    """(B, 1, H, W) expected depth and opacity -> (B, H, W, 3) uint8: the nearest visible depth of
    `depth_range` (by default these frames' own) white, the farthest dark grey, the background black."""
    near, far = depth_range or visible_depth_range(depth, alpha)
    mean = depth / alpha.clamp(min=1e-6)
    closeness = 1.0 - 0.75 * ((mean - near) / max(far - near, 1e-6)).clamp(0.0, 1.0)
    return _to_uint8((closeness * alpha).expand(-1, 3, -1, -1))


def _to_uint8(rgb: Tensor) -> Tensor:  # (B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8
    return (rgb.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def frames_from_render(out: RenderOutput, mode: str) -> Tensor:
    """Render outputs -> (B, H, W, 3) uint8 frames for one mode."""
    if mode == "normal":
        return _to_uint8(0.5 * (out.normal + out.alpha) + (1.0 - out.alpha))  # sum w (n + 1) / 2 over white
    if mode == "depth":
        return depth_frames(out.depth, out.alpha)
    return _to_uint8(out.image)


def render_turntable(
    field: Field, background: Background, config: Config, options: TurntableOptions
) -> np.ndarray:
    """(frames, size, size, 3) uint8 RGB frames of one orbit, rendered on the field's device."""
    validate(options)
    cameras = turntable_cameras(options).to(device_of(field))
    shading = SHADING_OF_MODE[options.mode]
    frames, depths, alphas = [], [], []
    for start in range(0, options.frames, options.views_per_batch):
        batch = cameras[start : start + options.views_per_batch]
        out = render_views(
            field, background, batch, shading, config.render, config.shading, chunk_rays=options.chunk_rays
        )
        if options.mode == "depth":  # normalized over the whole orbit below, so it does not flicker
            depths.append(out.depth.cpu())
            alphas.append(out.alpha.cpu())
        else:
            frames.append(frames_from_render(out, options.mode).cpu())
    if options.mode == "depth":
        frames = [depth_frames(torch.cat(depths), torch.cat(alphas))]
    return torch.cat(frames).numpy()


def mp4_available() -> bool:
    """Whether an ffmpeg executable is found (imageio-ffmpeg's, $IMAGEIO_FFMPEG_EXE or the system's)."""
    import shutil

    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return False
    # $IMAGEIO_FFMPEG_EXE is returned as given, existing or not.
    return shutil.which(exe) is not None


def check_video(path: Path, width: int, height: int) -> None:
    """UserError unless a video of this size can be written to `path` here: an mp4 needs even
    sides and an ffmpeg; a GIF needs neither."""
    if path.suffix.lower() != ".mp4":
        return
    if width % 2 or height % 2:
        raise UserError(f"an mp4 needs an even --size (got {width}x{height}); or write a .gif")
    if not mp4_available():
        raise UserError(
            f"cannot write {path}: an mp4 needs ffmpeg, which was not found; "
            "run `pip install imageio-ffmpeg`, or write a .gif"
        )


def write_video(frames: np.ndarray, path: Path, fps: int = 30) -> Path:
    """Write (F, H, W, 3) uint8 frames as MP4 (H.264) or looping GIF, atomically."""
    import imageio.v2 as imageio
    import imageio.v3 as iio

    path = check_output(path, VIDEO_SUFFIXES)
    check_video(path, frames.shape[2], frames.shape[1])
    with atomic_output(path) as tmp:
        if path.suffix.lower() == ".mp4":
            # macro_block_size=1 keeps the requested size (imageio would otherwise round up to 16).
            writer = imageio.get_writer(
                tmp,
                format="FFMPEG",
                mode="I",
                fps=fps,
                codec="libx264",
                quality=8,
                macro_block_size=1,
                pixelformat="yuv420p",
                ffmpeg_log_level="error",
            )
            with writer:
                for frame in frames:
                    writer.append_data(frame)
        else:
            # Pillow stores a run of identical frames once, with their summed duration.
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
    return path


TURNTABLE_SOURCES = ("field", "mesh")
MESH_SUFFIXES = tuple(f".{fmt}" for fmt in FORMATS)  # the files `export` writes


def check_turntable_from(source: str) -> None:
    """UserError unless `source` names where turntables come from."""
    if source not in TURNTABLE_SOURCES:
        raise UserError(f"--turntable-from must be one of {', '.join(TURNTABLE_SOURCES)} (got '{source}')")


def render_mesh_turntable(
    mesh_path: Path,
    background: Background,
    config: Config,
    options: TurntableOptions,
    device: torch.device | None = None,
) -> np.ndarray:
    """(frames, size, size, 3) uint8 RGB frames of one orbit around an exported mesh file
    (`render.raster`), on `device` (default: the background's): the asset as the user downloads
    it, at a small share of a volume render's cost. Depth turntables come from the field only."""
    from dreamfusion.render.raster import MESH_MODES, MeshTensors, render_mesh

    validate(options)
    mesh_path = Path(mesh_path)
    if mesh_path.suffix.lower() not in MESH_SUFFIXES or not mesh_path.is_file():
        raise UserError(
            f"no mesh file at {mesh_path} (a {', '.join(MESH_SUFFIXES)} file, as `export` writes)"
        )
    if options.mode not in MESH_MODES:
        shows = ", ".join(MESH_MODES)
        raise UserError(f"a turntable of the mesh shows {shows}; '{options.mode}' needs the field")
    device = device or device_of(background)
    try:
        loaded = read_mesh(mesh_path)
    except Exception as e:  # noqa: BLE001 - trimesh raises many kinds on a damaged file
        raise UserError(f"cannot read the mesh {mesh_path} ({type(e).__name__}: {str(e)[:120]})") from None
    if len(loaded.faces) == 0:
        raise UserError(f"the mesh {mesh_path} has no faces")
    mesh = MeshTensors.from_trimesh(loaded, device)
    cameras = turntable_cameras(options).to(device)
    frames = []
    with torch.no_grad():
        for start in range(0, options.frames, options.views_per_batch):
            batch = cameras[start : start + options.views_per_batch]
            images = render_mesh(mesh, background, batch, options.mode, config.shading)
            frames.append(_to_uint8(images.permute(0, 3, 1, 2)).cpu())
    return torch.cat(frames).numpy()


def write_mesh_turntable(
    mesh_path: Path,
    background: Background,
    config: Config,
    path: str | Path,
    options: TurntableOptions,
    device: torch.device | None = None,
) -> Path:
    """`write_turntable` of an exported mesh file instead of the field (`render_mesh_turntable`)."""
    path = check_output(Path(path), VIDEO_SUFFIXES)
    validate(options)
    check_video(path, options.size, options.size)
    frames = render_mesh_turntable(mesh_path, background, config, options, device)
    return write_video(frames, path, options.fps)


def write_turntable(
    field: Field, background: Background, config: Config, path: str | Path, options: TurntableOptions
) -> Path:
    """Render a turntable and write it to `path` (.mp4 or .gif). Bad input: UserError before rendering."""
    path = check_output(Path(path), VIDEO_SUFFIXES)
    validate(options)
    check_video(path, options.size, options.size)  # before the (slower) render
    return write_video(render_turntable(field, background, config, options), path, options.fps)
