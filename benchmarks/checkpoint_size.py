"""How big a run's checkpoints are, and how much half precision changes a finished run's renders.

    python benchmarks/checkpoint_size.py --preset default
    python benchmarks/checkpoint_size.py --run RUN/checkpoints/step_0000200.safetensors   # render difference

Without --run: builds the preset's field, background and occupancy grid (untrained: the sizes do not
depend on training), takes one Adam step so its moments exist, and writes the checkpoint a run saves
while training (with Adam's state, float32), the one a finished run keeps (without, in half
precision: `lean`) and, for comparison, that one in float32. With --run: renders the run's field at
8 orbit views, albedo and lit, with its weights as loaded, as a finished run's checkpoint stores
them (checkpoint.narrow) and in bfloat16, and prints the largest and mean pixel difference; then
exports the mesh from the weights as loaded and as stored, with the settings `generate` uses for
the run, and compares them (faces, vertices, iso-level, and the IoU of the occupancy at that level
on a 128^3 grid). The weights compared must be float32: pass a checkpoint written while training
(a run with --train.keep-checkpoints 0 keeps them all). --out also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch

from dreamfusion.bench.provenance import git_commit, machine_info
from dreamfusion.config import to_dict
from dreamfusion.eval.geometry import density_grid, iou
from dreamfusion.export import export_mesh
from dreamfusion.export.assets import asset_options
from dreamfusion.fields import build_background, build_field
from dreamfusion.presets import PRESETS
from dreamfusion.render.occupancy import OccupancyGrid
from dreamfusion.render.renderer import render_views
from dreamfusion.scene.cameras import orbit_cameras
from dreamfusion.training.checkpoint import flatten_optimizer, load_checkpoint, narrow, save_checkpoint, widen
from dreamfusion.training.loading import find_checkpoint, load_run
from dreamfusion.training.optim import build_optimizer

MODES = ("albedo", "lambertian")


def sizes(preset: str) -> dict:
    cfg = PRESETS[preset]()
    torch.manual_seed(0)
    field, background = build_field(cfg.field), build_background(cfg.background)
    optimizer = build_optimizer(field, background, cfg.optim)
    sum(p.sum() for p in [*field.parameters(), *background.parameters()]).backward()
    optimizer.step()
    tensors = {f"field.{k}": v for k, v in field.state_dict().items()}
    tensors.update({f"background.{k}": v for k, v in background.state_dict().items()})
    if cfg.render.occupancy_grid:
        grid = OccupancyGrid(cfg.field.bound_radius, cfg.render.occupancy_resolution)
        tensors.update({f"occupancy.{k}": v for k, v in grid.state_dict().items()})
    tensors["rng.cpu"] = torch.Generator().get_state()
    optim_tensors, rest = flatten_optimizer(optimizer.state_dict())
    with tempfile.TemporaryDirectory() as tmp:

        def written(name: str, tensors: dict, meta: dict, lean: bool = False) -> int:
            path = save_checkpoint(Path(tmp) / name, 0, "x", to_dict(cfg), tensors, meta, lean=lean)
            return path.stat().st_size

        report = {
            "preset": preset,
            "field_float32_bytes": sum(
                v.numel() * v.element_size() for k, v in tensors.items() if k.startswith("field.")
            ),
            "training_checkpoint_bytes": written("full", {**tensors, **optim_tensors}, {"optim": rest}),
            "finished_checkpoint_bytes": written("lean", tensors, {}, lean=True),
            "finished_checkpoint_float32_bytes": written("float32", tensors, {}),
        }
    mb = {k: v / 1e6 for k, v in report.items() if k.endswith("_bytes")}
    print(
        f"{preset}: field {mb['field_float32_bytes']:.1f} MB in float32; checkpoint while training "
        f"{mb['training_checkpoint_bytes']:.1f} MB, finished {mb['finished_checkpoint_bytes']:.1f} MB "
        f"in half precision ({mb['finished_checkpoint_float32_bytes']:.1f} MB in float32)"
    )
    return report


def _as_stored(state: dict) -> dict:
    return widen(*narrow(state))


def _bfloat16(state: dict) -> dict:
    return {k: v.bfloat16().float() if v.is_floating_point() else v for k, v in state.items()}


@torch.no_grad()
def half_difference(run_dir: str) -> dict:
    if load_checkpoint(find_checkpoint(run_dir)).stored_as:
        raise SystemExit(
            f"{run_dir}: its newest checkpoint is already in half precision (a finished run's); pass a "
            "checkpoint written while training (run with --train.keep-checkpoints 0 to keep them)"
        )
    run = load_run(run_dir)
    cameras = orbit_cameras(8, 64, elevation=15.0, distance=1.3)

    def images() -> torch.Tensor:
        cfg = run.config
        views = [render_views(run.field, run.background, cameras, m, cfg.render, cfg.shading) for m in MODES]
        return torch.cat([v.image for v in views])

    reference = images()
    modules = (run.field, run.background)
    states = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    report = {"run": str(run_dir), "step": run.step}
    for name, rounded in (("as_stored", _as_stored), ("bfloat16", _bfloat16)):
        for module, state in zip(modules, states, strict=True):
            module.load_state_dict(rounded(state))
        diff = (images() - reference).abs()
        largest, mean = diff.max().item(), diff.mean().item()
        report[name] = {"max_pixel_difference": largest, "mean_pixel_difference": mean}
        print(f"{name}: largest pixel difference {largest:.2e}, mean {mean:.2e} (of 1)")
    for module, state in zip(modules, states, strict=True):
        module.load_state_dict(state)
    report["mesh"] = mesh_difference(run)
    return report


@torch.no_grad()
def mesh_difference(run) -> dict:
    stored = copy.deepcopy(run.field)
    stored.load_state_dict(_as_stored(run.field.state_dict()))
    options, _ = asset_options(run.config)
    meshes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, field in (("float32", run.field), ("as_stored", stored)):
            result = export_mesh(field, Path(tmp) / f"{name}.glb", options)
            meshes[name] = {"faces": result.faces, "vertices": result.vertices, "level": result.level.value}
    level = meshes["float32"]["level"]  # the run's own surface, read at one level for both
    occupancy = iou(density_grid(run.field, 128) > level, density_grid(stored, 128) > level)
    for name, mesh in meshes.items():
        faces, vertices = mesh["faces"], mesh["vertices"]
        print(f"mesh from {name} weights: {faces} faces, {vertices} vertices, level {mesh['level']:.4g}")
    print(f"occupancy IoU at that level, 128^3 grid: {occupancy:.6f}")
    return {**meshes, "occupancy_iou_128": occupancy}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--run", help="a run folder or checkpoint of float32 weights: the render difference")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    report = half_difference(args.run) if args.run else sizes(args.preset)
    if args.out:
        record = {"benchmark": "checkpoint_size", **report, "commit": git_commit(), "machine": machine_info()}
        args.out.write_text(json.dumps(record, indent=2) + "\n")
