"""Mesh export: density grid -> iso-surface -> cleanup -> UV atlas + baked albedo -> GLB/OBJ/PLY.

field --sample_density_near_surface--> DensityGrid, Level (auto_level)
      --extract_surface--> mesh --remove_floaters--> --decimate--> --textured--> write_mesh
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import trimesh

from dreamfusion.errors import UserError
from dreamfusion.export.files import atomic_output, check_output
from dreamfusion.export.grid import (
    COARSE_STRIDE,
    DensityGrid,
    Level,
    auto_level,
    sample_density,
    sample_density_near_surface,
)
from dreamfusion.export.mesh import decimate, extract_surface, remove_floaters
from dreamfusion.export.texture import albedo_at, bake_texture, rasterize_uv, textured, unwrap, vertex_colored
from dreamfusion.export.threads import export_threads
from dreamfusion.export.write import FORMATS, Z_UP_TO_Y_UP, to_y_up, write_mesh
from dreamfusion.fields.base import Field, device_of

__all__ = [
    "FORMATS",
    "Z_UP_TO_Y_UP",
    "DensityGrid",
    "ExportOptions",
    "ExportResult",
    "Level",
    "albedo_at",
    "atomic_output",
    "auto_level",
    "bake_texture",
    "build_mesh",
    "check_output",
    "decimate",
    "export_mesh",
    "extract_surface",
    "rasterize_uv",
    "remove_floaters",
    "sample_density",
    "sample_density_near_surface",
    "to_y_up",
    "unwrap",
    "validate_options",
    "write_mesh",
]

RESOLUTION_RANGE = (16, 512)
TEXTURE_RANGE = (16, 8192)


@dataclass
class ExportOptions:
    """How a field becomes a mesh file."""

    resolution: int = 256
    """Marching-cubes grid vertices per axis over the bounding cube."""
    level: float | None = None
    """Density iso-level; None chooses it by the transmittance rule (see export/grid.py)."""
    texture_size: int = 1024
    """Width and height of the baked albedo texture; 0 stores per-vertex colors instead."""
    max_faces: int = 50_000
    """Decimate to about this many faces (0: keep every marching-cubes face)."""
    texture_faces: int = 20_000
    """A textured mesh gets at most this many faces when `max_faces` asks for more: the UV
    unwrap's time grows faster than the face count, and a 1024^2 texture carries the detail.
    0 lifts this cap; so does max_faces = 0 (every face). Vertex-colored meshes keep `max_faces`."""
    keep_fraction: float = 0.05
    """Components with fewer faces than this fraction of the largest are floaters and dropped."""
    chunk_points: int = 1 << 18
    """Field queries per batch (bounds memory)."""
    coarse_stride: int = COARSE_STRIDE
    """The field is queried every this many grid vertices, then at every vertex only near the
    surface (see export/grid.py); 1 queries the whole grid."""
    threads: int = 0
    """Torch CPU threads for an export on the CPU; 0: as many as other processes leave cores idle
    (see export/threads.py)."""


@dataclass
class ExportResult:
    """What an export wrote and measured."""

    path: Path
    files: list[Path]
    format: str
    faces: int
    vertices: int
    level: Level
    floaters_removed: int
    watertight: bool  # of the geometry before UV seams split its vertices
    texture_size: tuple[int, int] | None  # (width, height), None with vertex colors
    texture_coverage: float  # share of texels inside a triangle (0 with vertex colors)
    seconds: float
    threads: int  # torch CPU threads the export ran with


def validate_options(options: ExportOptions) -> None:
    """UserError (one line) for options out of range, before any work."""
    lo, hi = RESOLUTION_RANGE
    if not lo <= options.resolution <= hi:
        raise UserError(f"--resolution must be between {lo} and {hi} (got {options.resolution})")
    lo, hi = TEXTURE_RANGE
    if options.texture_size != 0 and not lo <= options.texture_size <= hi:
        raise UserError(
            f"--texture-size must be 0 (vertex colors) or between {lo} and {hi} (got {options.texture_size})"
        )
    if options.texture_faces < 0:
        raise UserError(f"texture_faces must be >= 0 (got {options.texture_faces})")
    if options.max_faces < 0:
        raise UserError(f"--faces must be >= 0 (got {options.max_faces})")
    if options.level is not None and not options.level > 0:
        raise UserError(f"--level must be a positive density or 'auto' (got {options.level})")
    if not 0.0 <= options.keep_fraction <= 1.0:
        raise UserError(f"--keep-fraction must be in [0, 1] (got {options.keep_fraction})")
    if options.threads < 0:
        raise UserError(f"threads must be >= 0 (got {options.threads})")


def build_mesh(field: Field, options: ExportOptions) -> tuple[trimesh.Trimesh, Level, int, bool]:
    """The cleaned, decimated, uncolored mesh in world units (+z up).

    Returns (mesh, level, floaters removed, watertight).
    """
    try:
        grid, level = sample_density_near_surface(
            field, options.resolution, options.level, options.chunk_points, options.coarse_stride
        )
        mesh = extract_surface(grid, level.value)
    except ValueError as e:
        raise UserError(f"{e}; try another --level" if options.level is not None else str(e)) from None
    mesh, removed = remove_floaters(mesh, options.keep_fraction)
    mesh = decimate(mesh, options.max_faces)
    return mesh, level, removed, bool(mesh.is_watertight)


def export_mesh(
    field: Field, path: str | Path, options: ExportOptions | None = None, fmt: str | None = None
) -> ExportResult:
    """Export `field` as a mesh file; `fmt` defaults to the path's extension.

    Raises UserError (one line) on a bad path or option before any work; nothing is left
    behind on failure (files are written under temporary names and renamed).
    """
    start = time.perf_counter()
    options = options or ExportOptions()
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    check_output(path, (f".{fmt}",))
    validate_options(options)

    # PLY has no standard texture reference, so it always carries vertex colors.
    texturing = options.texture_size > 0 and fmt != "ply"
    if texturing and 0 < options.texture_faces < options.max_faces:
        options = dataclasses.replace(options, max_faces=options.texture_faces)
    with export_threads(device_of(field), options.threads) as threads:
        mesh, level, removed, watertight = build_mesh(field, options)
        if texturing:
            mesh, coverage = textured(field, mesh, options.texture_size)
            image = mesh.visual.material.baseColorTexture
            texture = (image.width, image.height)
        else:
            mesh, coverage, texture = vertex_colored(field, mesh), 0.0, None
        files = write_mesh(mesh, path, fmt)
    return ExportResult(
        path=path,
        files=files,
        format=fmt,
        faces=len(mesh.faces),
        vertices=len(mesh.vertices),
        level=level,
        floaters_removed=removed,
        watertight=watertight,
        texture_size=texture,
        texture_coverage=coverage,
        seconds=time.perf_counter() - start,
        threads=threads,
    )
