"""Mesh files: GLB, OBJ (+ MTL and PNG) and PLY, all +y up, each written atomically.

The project's world is +z up with the object's front facing +x; glTF wants +y up with the
front facing +z. The cyclic axis swap (x, y, z) -> (y, z, x) is a proper rotation that does
exactly that (the object's right, -y, lands on glTF's right, -X). OBJ and PLY get the same
frame, the one Blender, three.js and game engines assume on import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from dreamfusion.export.files import atomic_output

FORMATS = ("glb", "obj", "ply")

# Rows map world (x, y, z) to file (X, Y, Z): X = y, Y = z, Z = x.
Z_UP_TO_Y_UP = np.array(
    [
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def to_y_up(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy of a +z-up mesh in the +y-up frame of the files."""
    out = mesh.copy()
    out.apply_transform(Z_UP_TO_Y_UP)
    return out


def read_mesh(path: Path) -> trimesh.Trimesh:
    """A mesh file written by `write_mesh` (+y up) back in the world frame (+z up)."""
    mesh = trimesh.load(path, force="mesh")
    mesh.apply_transform(Z_UP_TO_Y_UP.T)  # the inverse of a rotation is its transpose
    return mesh


def write_mesh(mesh: trimesh.Trimesh, path: Path, fmt: str) -> list[Path]:
    """Write a +z-up mesh as `fmt` at `path`; returns every file written (OBJ brings its MTL and PNG).

    The main file is renamed into place last, so it never exists without its companions.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown mesh format '{fmt}' (use one of: {', '.join(FORMATS)})")
    mesh = to_y_up(mesh)
    if fmt == "obj":
        return _write_obj(mesh, path)
    data = mesh.export(file_type=fmt)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return [path]


def _write_obj(mesh: trimesh.Trimesh, path: Path) -> list[Path]:
    material = getattr(mesh.visual, "material", None)
    if material is not None:
        material.name = f"{path.stem}_albedo"  # the texture's file name follows the material's
    text, companions = trimesh.exchange.obj.export_obj(
        mesh, include_texture=True, return_texture=True, mtl_name=f"{path.stem}.mtl"
    )
    written: list[Path] = []
    try:
        for name, data in companions.items():
            target = path.parent / name
            with atomic_output(target) as tmp:
                tmp.write_bytes(data)
            written.append(target)
        with atomic_output(path) as tmp:
            tmp.write_text(text)
    except BaseException:
        for target in written:  # no MTL or PNG left without its OBJ
            target.unlink(missing_ok=True)
        raise
    return [path, *written]
