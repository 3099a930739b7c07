"""How big a run's checkpoint is, and what storing its field in half precision would change.

    python benchmarks/checkpoint_size.py --preset default
    python benchmarks/checkpoint_size.py --run outputs/a-red-sphere    # a trained run: render difference

Without --run: builds the preset's field, background and occupancy grid (untrained: the sizes do not
depend on training), takes one Adam step so its moments exist, and writes the checkpoint a run saves
while training (with Adam's state) and the one a finished run keeps (without). With --run: renders
the run's final field at 4 orbit views, albedo and lit, with its weights as trained and rounded
through float16 and bfloat16, and prints the largest and mean pixel difference.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from dreamfusion.config import to_dict
from dreamfusion.fields import build_background, build_field
from dreamfusion.presets import PRESETS
from dreamfusion.render.occupancy import OccupancyGrid
from dreamfusion.render.renderer import render_views
from dreamfusion.scene.cameras import orbit_cameras
from dreamfusion.training.checkpoint import flatten_optimizer, save_checkpoint
from dreamfusion.training.loading import load_run
from dreamfusion.training.optim import build_optimizer

MODES = ("albedo", "lambertian")


def sizes(preset: str) -> None:
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
    field_mb = sum(v.numel() * v.element_size() for k, v in tensors.items() if k.startswith("field.")) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        lean = save_checkpoint(Path(tmp) / "lean.safetensors", 0, "x", to_dict(cfg), tensors, {})
        everything, meta = {**tensors, **optim_tensors}, {"optim": rest}
        full = save_checkpoint(Path(tmp) / "full.safetensors", 0, "x", to_dict(cfg), everything, meta)
        print(
            f"{preset}: field {field_mb:.1f} MB in float32; checkpoint while training "
            f"{full.stat().st_size / 1e6:.1f} MB, finished {lean.stat().st_size / 1e6:.1f} MB"
        )


@torch.no_grad()
def half_difference(run_dir: str) -> None:
    run = load_run(run_dir)
    cameras = orbit_cameras(4, 64, elevation=15.0, distance=1.3)

    def images() -> torch.Tensor:
        cfg = run.config
        views = [render_views(run.field, run.background, cameras, m, cfg.render, cfg.shading) for m in MODES]
        return torch.cat([v.image for v in views])

    reference, state = images(), {k: v.clone() for k, v in run.field.state_dict().items()}
    for dtype in (torch.float16, torch.bfloat16):
        run.field.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})
        diff = (images() - reference).abs()
        print(f"{dtype}: largest pixel difference {diff.max():.2e}, mean {diff.mean():.2e} (of 1)")
    run.field.load_state_dict(state)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--run", help="a trained run folder: measure the half-precision render difference")
    args = parser.parse_args()
    if args.run:
        half_difference(args.run)
    else:
        sizes(args.preset)
