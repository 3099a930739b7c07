"""Speed of the prior's training: `python -m dreamfusion.prior.benchmark --device cuda --batch 256`.

Prints the parameter count, the size of the float16 weights file, milliseconds per optimizer step
(U-Net forward and backward, AdamW, EMA, on a pool of random images) and per refresh of the world
pool, each after warm-up steps. Add --compile to time the torch.compile'd U-Net.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from dreamfusion.prior.model import save_prior
from dreamfusion.prior.recipes import PRIOR_PRESETS
from dreamfusion.prior.train import PriorTrainer, StepStats
from dreamfusion.prior.unet import count_parameters


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    preset: str, device: str, batch: int, steps: int, warmup: int, compile: bool, fresh: int = 0
) -> dict[str, float]:
    recipe = PRIOR_PRESETS[preset]()
    fresh = fresh or recipe.train.fresh_per_step
    train = dataclasses.replace(
        recipe.train, device=device, batch_size=batch, pool_size=fresh, fresh_per_step=fresh, progress=False
    )
    recipe = dataclasses.replace(recipe, train=train)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = PriorTrainer(recipe, Path(tmp) / "run", compile=compile)
        dev = trainer.device
        weights = Path(tmp) / "prior.safetensors"
        save_prior(trainer.model, weights)
        size_mib = weights.stat().st_size / 2**20
        trainer.pool.advance = lambda step: None  # time the model alone first
        stats = StepStats()
        for _ in range(warmup):
            trainer.train_step(stats)
        _sync(dev)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(stats)
        _sync(dev)
        step_ms = (time.perf_counter() - start) / steps * 1000.0
        start = time.perf_counter()
        for block in range(steps):
            trainer.pool.render_block(block)
        _sync(dev)
        render_ms = (time.perf_counter() - start) / steps * 1000.0
    return {
        "params_M": count_parameters(trainer.model) / 1e6,
        "weights_MiB": size_mib,
        "step_ms": step_ms,
        "render_block_ms": render_ms,
        "fresh_per_step": recipe.train.fresh_per_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="bundled", choices=sorted(PRIOR_PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--fresh", type=int, default=0, help="images per pool refresh (0: the preset's)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = measure(args.preset, args.device, args.batch, args.steps, args.warmup, args.compile, args.fresh)
    print(
        f"preset={args.preset} device={args.device} batch={args.batch} compile={args.compile}: "
        f"{r['params_M']:.2f}M parameters, weights {r['weights_MiB']:.1f} MiB (float16), "
        f"{r['step_ms']:.1f} ms/step, {r['render_block_ms']:.1f} ms to render "
        f"{r['fresh_per_step']} pool images "
        f"-> about {1000.0 / (r['step_ms'] + r['render_block_ms']):.2f} steps/s with data"
    )


if __name__ == "__main__":
    main()
