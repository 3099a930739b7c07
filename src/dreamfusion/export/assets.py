"""What `generate` leaves beside the checkpoints: RUN/mesh.glb and RUN/turntable.mp4 (.gif where
no ffmpeg is found).

On CUDA they are full size (256-grid mesh, 50k faces, 1024 texture; 120 frames of 256 px).
On the CPU, where one field query with normals costs microseconds, they are sized from the
training resolution R and kept to seconds: a 2R grid (32-128), 10k faces, a 16R texture
(128-512), and 24 frames of 2R px (32-128). `dreamfusion export` / `render` redo either at any size.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

from dreamfusion.config import Config
from dreamfusion.errors import UserError
from dreamfusion.export import ExportOptions, export_mesh
from dreamfusion.export.turntable import (
    TurntableOptions,
    check_turntable_from,
    mp4_available,
    write_mesh_turntable,
    write_turntable,
)
from dreamfusion.fields.base import Background, Field, device_of

log = logging.getLogger(__name__)

MESH_NAME = "mesh.glb"
VIDEO_NAME = "turntable.mp4"
GIF_NAME = "turntable.gif"  # where no ffmpeg is found: a turntable the user can still open


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def asset_options(config: Config) -> tuple[ExportOptions, TurntableOptions]:
    """Export and turntable settings for the run's device and training resolution."""
    if config.train.device.startswith("cuda"):
        return ExportOptions(), TurntableOptions(frames=120, size=256, mode="color")
    side = _clamp(2 * config.camera.resolution, 32, 128) // 2 * 2  # even: H.264 needs it
    texture = _clamp(16 * config.camera.resolution, 128, 512)
    export = ExportOptions(resolution=side, texture_size=texture, max_faces=10_000)
    return export, TurntableOptions(frames=24, size=side, mode="color")


@dataclass
class Assets:
    mesh: Path | None
    video: Path | None
    seconds: dict[str, float] = dataclass_field(default_factory=dict)
    """Wall seconds of each asset written: "mesh", "video"."""


def write_assets(
    run_dir: Path,
    field: Field,
    background: Background,
    config: Config,
    mesh: bool = True,
    video: bool = True,
    turntable_from: str = "mesh",
) -> Assets:
    """Export the mesh and the turntable into `run_dir`; a failure is logged, never raised.

    The turntable rasterizes the mesh just written (`turntable_from` "mesh": the asset as
    downloaded, far cheaper than a volume render of the field); with "field", or without a mesh,
    the field is volume-rendered.

    Training has already succeeded and its checkpoint is saved, so an asset that cannot be made
    (an empty field, say) must not turn the run into an error: `dreamfusion export` and
    `dreamfusion render` can redo either with other settings.
    """
    check_turntable_from(turntable_from)
    export_options, turntable_options = asset_options(config)
    out = Assets(None, None)
    was_training = getattr(field, "training", False)
    if hasattr(field, "eval"):
        field.eval()
    try:
        if mesh:
            start = time.perf_counter()
            try:
                out.mesh = export_mesh(field, run_dir / MESH_NAME, export_options).path
            except UserError as e:
                log.warning(
                    "no mesh written: %s (retry with `dreamfusion export %s --level ...`)", e, run_dir
                )
            out.seconds["mesh"] = time.perf_counter() - start
        if video:
            start = time.perf_counter()
            name = VIDEO_NAME
            if not mp4_available():
                name = GIF_NAME
                log.warning(
                    "no ffmpeg found: writing %s instead of %s (pip install imageio-ffmpeg)", name, VIDEO_NAME
                )
            try:
                if turntable_from == "mesh" and out.mesh is not None:
                    out.video = write_mesh_turntable(
                        out.mesh, background, config, run_dir / name, turntable_options, device_of(field)
                    )
                else:
                    out.video = write_turntable(field, background, config, run_dir / name, turntable_options)
            except UserError as e:
                log.warning("no turntable written: %s", e)
            out.seconds["video"] = time.perf_counter() - start
    finally:
        if was_training:
            field.train()
    return out
