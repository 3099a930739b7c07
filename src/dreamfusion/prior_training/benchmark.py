"""Speed of the prior's training: `python -m dreamfusion.prior_training.benchmark --device cuda --batch 256`.

Prints the parameter count, the size of the float16 weights file, milliseconds per optimizer step
(U-Net forward and backward, AdamW, EMA; the pool left as it is) and per render of one block of
the world pool, each after warm-up, and the steps per second they add up to with the preset's
render_every. Add --compile to time the torch.compile'd U-Net.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from dreamfusion.prior.model import save_prior
from dreamfusion.prior.unet import count_parameters
from dreamfusion.prior_training.recipes import PRIOR_PRESETS
from dreamfusion.prior_training.train import PriorTrainer, StepStats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    preset: str, device: str, batch: int, steps: int, warmup: int, compile: bool, block: int = 0
) -> dict[str, float]:
    """Timings of one preset; `block` overrides its render_batch (the pool is one block)."""
    recipe = PRIOR_PRESETS[preset]()
    block = block or recipe.train.render_batch
    train = dataclasses.replace(
        recipe.train, device=device, batch_size=batch, pool_size=block, render_batch=block, progress=False
    )
    recipe = dataclasses.replace(recipe, train=train)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = PriorTrainer(recipe, Path(tmp) / "run", compile=compile)  # renders (and compiles) once
        dev = trainer.device
        weights = Path(tmp) / "prior.safetensors"
        save_prior(trainer.model, weights)
        size_mib = weights.stat().st_size / 2**20
        trainer.pool.advance = lambda step: None  # time the model alone
        stats = StepStats()
        for _ in range(warmup):
            trainer.train_step(stats)
        _sync(dev)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(stats)
        _sync(dev)
        step_ms = (time.perf_counter() - start) / steps * 1000.0
        repeats = max(1, steps // recipe.train.render_every)
        start = time.perf_counter()
        for k in range(repeats):
            trainer.pool.render_block(k)
        _sync(dev)
        block_ms = (time.perf_counter() - start) / repeats * 1000.0
    return {
        "params_M": count_parameters(trainer.model) / 1e6,
        "weights_MiB": size_mib,
        "step_ms": step_ms,
        "block_ms": block_ms,
        "block": block,
        "every": recipe.train.render_every,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="bundled", choices=sorted(PRIOR_PRESETS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--block", type=int, default=0, help="images per pool render (0: the preset's)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = measure(args.preset, args.device, args.batch, args.steps, args.warmup, args.compile, args.block)
    per_step = r["step_ms"] + r["block_ms"] / r["every"]
    print(
        f"preset={args.preset} device={args.device} batch={args.batch} compile={args.compile}: "
        f"{r['params_M']:.2f}M parameters, weights {r['weights_MiB']:.1f} MiB (float16), "
        f"{r['step_ms']:.1f} ms/step, {r['block_ms']:.1f} ms per {r['block']} rendered images every "
        f"{r['every']} steps -> about {1000.0 / per_step:.2f} steps/s with data"
    )


if __name__ == "__main__":
    main()
