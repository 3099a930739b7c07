"""Seconds per mesh-export stage, and the quality of what comes out, on a trained-looking field.

    python benchmarks/export_speed.py --device cpu
    python benchmarks/export_speed.py --device cpu --before-src ../main/src --rounds 3
    python benchmarks/export_speed.py --device cuda --object duck --resolution 256

The export's settings are those of `dreamfusion export`: its flags' defaults, overridable here by
the same flags (--resolution, --texture-size, --faces, --level, --keep-fraction).

The field (StandIn) is a world object's density and checkered albedo, roughened at every scale
by the `default` preset's hash-grid field with random tables, so the export meets what it meets
after training (a bumpy soft shell, texture detail at the finest levels) at a hash grid's query
cost, without a minute of fitting.

Stages are read from a cProfile of one `export_mesh` call (cumulative seconds of the export's
own functions), so the same script times any version of the pipeline. Quality:
- iou: the exported mesh's inside (ray parity along z through a --iou-grid^3 grid of cell
  centers) against the field's occupancy (density above the export's level) on the same points;
- faces, and watertight: of the geometry with UV-seam vertices merged back;
- texture: mean |texture color - field albedo| over points sampled on the mesh surface, and
  the PSNR of those samples.
Writes benchmarks/results/export_speed_<device>.json (a run is appended) and prints a table.

With --before-src, the export of the package at that source folder ("before") and of this
checkout ("after") are run alternately, --rounds times each, each in a fresh process; the file
is replaced by the two records, each holding the median seconds per stage over its rounds (and
every round's total), so a machine whose load changes meanwhile weighs on both alike.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import math
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from dreamfusion.bench.provenance import git_commit, machine_info
from dreamfusion.commands import Export
from dreamfusion.export import Z_UP_TO_Y_UP, ExportOptions, export_mesh
from dreamfusion.fields import build_field
from dreamfusion.presets import default
from dreamfusion.world.objects import OBJECTS

# Functions whose cumulative time is a stage, in pipeline order; names missing from a profile
# (another version of the pipeline) are left out of the table.
STAGES = (
    "sample_density",
    "sample_density_near_surface",
    "auto_level",
    "extract_surface",
    "remove_floaters",
    "decimate",
    "unwrap",
    "bake_texture",
    "albedo_at",
    "write_mesh",
)
CHECKER = 0.06  # world units per checker square: detail a texture must carry


class StandIn(torch.nn.Module):
    """A world object's shape and colors, roughened and priced like the `default` preset's field.

    density = 200 sigmoid(-120 sdf) exp(NOISE tanh h), albedo = part color x checker + NOISE (a - 1/2),
    where (h, a) are the density and albedo outputs of the default hash-grid field with its tables
    drawn uniformly in +-1 (not trained): noise at every scale from 1/16 to 1/1024 of the cube,
    as a trained field shows, and every query costs one full hash-grid forward pass.
    """

    NOISE = 1.0

    def __init__(self, name: str, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.obj = OBJECTS[name]
        self.net = build_field(default().field)
        with torch.no_grad():
            for table in self.net.encoding.tables:
                table.uniform_(-1.0, 1.0)
        self.bound_radius = self.net.bound_radius

    def _density(self, points: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        # Scaled so the density noise has a standard deviation of about 1 with these tables.
        raw = self.net.density_head(h)[:, 0] * 5000.0
        density = 200.0 * torch.sigmoid(-120.0 * self.obj.sdf(points)) * torch.exp(self.NOISE * raw.tanh())
        inside = (points * points).sum(-1) <= self.bound_radius**2
        return torch.where(inside, density, torch.zeros_like(density))

    def density(self, points: torch.Tensor) -> torch.Tensor:
        # As a trained field's: the albedo head and colors are not computed for a density query.
        return self._density(points, self.net._features(points))

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net._features(points)
        albedo = torch.sigmoid(self.net.albedo_head(h))
        cells = torch.floor(points / CHECKER).long().sum(-1) % 2
        base = self.obj.albedo(points) * (0.55 + 0.45 * cells[:, None].float())
        return self._density(points, h), (base + self.NOISE * (albedo - 0.5)).clamp(0.0, 1.0)


def inside_by_parity(mesh: trimesh.Trimesh, n: int, bound: float) -> np.ndarray:
    """(n, n, n) bool [x, y, z]: cell centers of the cube inside the closed mesh (z-ray parity)."""
    centers = (np.arange(n) + 0.5) / n * 2 * bound - bound
    tri = mesh.triangles  # (F, 3, 3)
    crossings: list[list[float]] = [[] for _ in range(n * n)]
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    lo = np.ceil((tri[:, :, :2].min(1) + bound) / (2 * bound) * n - 0.5).astype(int).clip(0, n - 1)
    hi = np.floor((tri[:, :, :2].max(1) + bound) / (2 * bound) * n - 0.5).astype(int).clip(0, n - 1)
    for f in np.nonzero(np.abs(area) > 1e-15)[0]:
        xs, ys = centers[lo[f, 0] : hi[f, 0] + 1], centers[lo[f, 1] : hi[f, 1] + 1]
        if len(xs) == 0 or len(ys) == 0:
            continue
        px, py = np.meshgrid(xs, ys, indexing="ij")
        w1 = ((px - a[f, 0]) * (c[f, 1] - a[f, 1]) - (py - a[f, 1]) * (c[f, 0] - a[f, 0])) / area[f]
        w2 = ((b[f, 0] - a[f, 0]) * (py - a[f, 1]) - (b[f, 1] - a[f, 1]) * (px - a[f, 0])) / area[f]
        w0 = 1 - w1 - w2
        hit = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        z = w0 * a[f, 2] + w1 * b[f, 2] + w2 * c[f, 2]
        for i, j, zz in zip(*np.nonzero(hit), z[hit], strict=True):
            crossings[(lo[f, 0] + i) * n + lo[f, 1] + j].append(zz)
    out = np.zeros((n, n, n), bool)
    for k, zs in enumerate(crossings):
        if len(zs) >= 2:
            zs = np.sort(zs)
            for z0, z1 in zip(zs[0::2], zs[1::2], strict=False):
                out[k // n, k % n] |= (centers > z0) & (centers < z1)
    return out


def quality(field, result, n: int, samples: int) -> dict[str, float]:
    scene = trimesh.load(result.path)
    mesh = next(iter(scene.geometry.values())) if isinstance(scene, trimesh.Scene) else scene
    merged = mesh.copy()
    merged.merge_vertices(merge_tex=True, merge_norm=True)
    world = merged.copy()
    world.apply_transform(np.linalg.inv(Z_UP_TO_Y_UP))
    bound = float(field.bound_radius)
    inside = inside_by_parity(world, n, bound)
    axis = torch.tensor((np.arange(n) + 0.5) / n * 2 * bound - bound, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    device = next(field.parameters()).device
    with torch.no_grad():
        density = torch.cat([field.density(p.to(device)).cpu() for p in grid.split(1 << 17)])
    occupied = (density > result.level.value).numpy().reshape(n, n, n)
    iou = float((inside & occupied).sum() / max(1, (inside | occupied).sum()))
    out = {"iou": iou, "faces": len(merged.faces), "watertight": bool(merged.is_watertight)}
    if isinstance(mesh.visual, trimesh.visual.TextureVisuals):
        points, faces = trimesh.sample.sample_surface(mesh, samples, seed=0)
        bary = trimesh.triangles.points_to_barycentric(mesh.triangles[faces], points)
        uv = (mesh.visual.uv[mesh.faces[faces]] * bary[:, :, None]).sum(1)
        image = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"), np.float64) / 255.0
        h, w = image.shape[:2]
        x, y = uv[:, 0] * w - 0.5, (1.0 - uv[:, 1]) * h - 0.5
        x0, y0 = np.clip(np.floor(x).astype(int), 0, w - 2), np.clip(np.floor(y).astype(int), 0, h - 2)
        fx, fy = np.clip(x - x0, 0, 1)[:, None], np.clip(y - y0, 0, 1)[:, None]
        top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
        color = top * (1 - fy) + (image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx) * fy
        world_points = torch.tensor(points @ Z_UP_TO_Y_UP[:3, :3], dtype=torch.float32, device=device)
        with torch.no_grad():
            truth = field(world_points)[1].clamp(0, 1).cpu().numpy()
        mse = float(np.mean((color - truth) ** 2))
        out["texture_mae"] = float(np.mean(np.abs(color - truth)))
        out["texture_psnr"] = -10.0 * math.log10(max(mse, 1e-12))
    return out


def export_options(args: argparse.Namespace) -> ExportOptions:
    """The settings `dreamfusion export` builds from these flags."""
    command = Export(
        run_path=Path("."),
        resolution=args.resolution,
        texture_size=args.texture_size,
        level=args.level,
        faces=args.faces,
        keep_fraction=args.keep_fraction,
    )
    if hasattr(command, "options"):
        options = command.options()
    else:  # a version of the command that builds them in run()
        level = None if args.level == "auto" else float(args.level)
        options = ExportOptions(
            resolution=args.resolution,
            level=level,
            texture_size=args.texture_size,
            max_faces=args.faces,
            keep_fraction=args.keep_fraction,
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # a version without ExportOptions.threads runs with these
        if hasattr(options, "threads"):
            options = dataclasses.replace(options, threads=args.threads)
    return options


def run(args: argparse.Namespace) -> dict:
    load = [round(x, 2) for x in os.getloadavg()]  # other processes' demand on the cores, as it starts
    field = StandIn(args.object).to(args.device).eval()
    options = export_options(args)
    with tempfile.TemporaryDirectory() as tmp:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        profile = cProfile.Profile()
        wall, cpu = time.perf_counter(), time.process_time()
        profile.enable()
        result = export_mesh(field, Path(tmp) / "mesh.glb", options)
        profile.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        stats = pstats.Stats(profile).stats
        stages = {}
        for (_, _, name), (_, _, _, cumulative, _) in stats.items():
            if name in STAGES:
                stages[name] = max(stages.get(name, 0.0), cumulative)
        stages = {name: round(stages[name], 3) for name in STAGES if name in stages}
        q = quality(field, result, args.iou_grid, args.samples)
    return {
        "object": args.object,
        "options": dataclasses.asdict(options),
        "seconds_total": round(wall, 3),
        "cpu_seconds_total": round(cpu, 3),
        "threads": getattr(result, "threads", torch.get_num_threads()),
        "load_average": load,
        "stages": stages,
        "level": result.level.value,
        "texture_coverage": result.texture_coverage,
        **q,
    }


def compare(args: argparse.Namespace, argv: list[str], out: Path) -> list[dict]:
    """Before (--before-src) and after (this checkout), alternately, --rounds times each: the median
    seconds per stage of each."""
    here = Path(__file__).resolve()
    sources = {"before": Path(args.before_src).resolve(), "after": here.parent.parent / "src"}
    passed = []  # this script's flags, less the comparison's own
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in ("--before-src", "--rounds", "--out", "--label"):
            skip = True
        elif not token.startswith(("--before-src=", "--rounds=", "--out=", "--label=")):
            passed.append(token)
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for label, src in sources.items():
                record = Path(tmp) / f"{label}_{round_}.json"
                env = {**os.environ, "PYTHONPATH": str(src)}
                cmd = [sys.executable, str(here), *passed, "--label", label, "--out", str(record)]
                subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
                runs[label].append(json.loads(record.read_text())[0])
                print(f"{label:<7}round {round_ + 1}: {runs[label][-1]['seconds_total']:.2f} s", flush=True)
    records = []
    for done in runs.values():
        record = dict(done[0])
        for key in ("seconds_total", "cpu_seconds_total"):
            record[key] = round(statistics.median(r[key] for r in done), 3)
        record["stages"] = {
            name: round(statistics.median(r["stages"].get(name, 0.0) for r in done), 3)
            for name in done[0]["stages"]
        }
        record["rounds_seconds_total"] = [r["seconds_total"] for r in done]
        record["rounds_threads"] = [r["threads"] for r in done]
        records.append(record)
    out.write_text(json.dumps(records, indent=2) + "\n")
    return records


def main() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(Export)}
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--object", default="house", choices=sorted(OBJECTS))
    parser.add_argument("--resolution", type=int, default=defaults["resolution"])
    parser.add_argument("--texture-size", type=int, default=defaults["texture_size"])
    parser.add_argument("--faces", type=int, default=defaults["faces"])
    parser.add_argument("--level", default=defaults["level"])
    parser.add_argument("--keep-fraction", type=float, default=defaults["keep_fraction"])
    parser.add_argument("--threads", type=int, default=None, help="ExportOptions.threads (default: its own)")
    parser.add_argument("--iou-grid", type=int, default=64, help="cells per axis of the IoU grid")
    parser.add_argument("--samples", type=int, default=20000, help="surface points for the texture error")
    parser.add_argument("--label", default="", help="stored with the result (e.g. before / after)")
    parser.add_argument("--before-src", default=None, help="source folder of the version to compare against")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each version with --before-src")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(__file__).parent / "results" / f"export_speed_{args.device.split(':')[0]}.json"
    if args.before_src:
        records = compare(args, sys.argv[1:], out)
    else:
        record = {**run(args), "label": args.label, "commit": git_commit(), "machine": machine_info()}
        runs = json.loads(out.read_text()) if out.is_file() else []
        runs.append(record)
        out.write_text(json.dumps(runs, indent=2) + "\n")
        records = [record]
    names = [name for name in STAGES if any(name in r["stages"] for r in records)]
    print(f"{'':<28}" + "".join(f"{r['label'] or 'run':>12}" for r in records))
    for name in names:
        print(f"{name:<28}" + "".join(f"{r['stages'].get(name, float('nan')):>12.2f}" for r in records))
    for key in ("seconds_total", "cpu_seconds_total", "threads", "faces", "watertight", "iou", "level"):
        print(f"{key:<28}" + "".join(f"{_fmt(r.get(key)):>12}" for r in records))
    for key in ("texture_mae", "texture_psnr", "texture_coverage"):
        print(f"{key:<28}" + "".join(f"{_fmt(r.get(key)):>12}" for r in records))
    print(f"wrote {out}")


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
