"""Throughput of the world's data renderer: `python -m dreamfusion.world.benchmark --device cpu`."""

from __future__ import annotations

import argparse
import time

import torch

from dreamfusion.world.config import WorldConfig
from dreamfusion.world.dataset import sample_batch


def images_per_second(
    batch: int, device: str, cfg: WorldConfig, repeats: int = 5, seed: int = 0
) -> tuple[float, float, float]:
    """Images per second, wall seconds and process CPU seconds per batch of `sample_batch`,
    after one warm-up batch (which compiles the fused step on CUDA). CPU seconds stay
    meaningful on a machine shared with others."""
    generator = torch.Generator().manual_seed(seed)

    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    sample_batch(batch, generator, device, cfg=cfg)
    sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        sample_batch(batch, generator, device, cfg=cfg)
    sync()
    seconds = (time.perf_counter() - start) / repeats
    cpu_seconds = (time.process_time() - cpu_start) / repeats
    return batch / seconds, seconds, cpu_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--supersample", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--fused", choices=["auto", "yes", "no"], default="auto", help="GPU strategy (see WorldConfig.fused)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for k in args.supersample:
        fused = {"auto": None, "yes": True, "no": False}[args.fused]
        cfg = WorldConfig(supersample=k, fused=fused)
        rate, seconds, cpu_seconds = images_per_second(args.batch, args.device, cfg, args.repeats)
        print(
            f"device={args.device} threads={torch.get_num_threads()} batch={args.batch} "
            f"resolution=64 supersample={k} fused={args.fused}: {seconds * 1000:.0f} ms/batch, "
            f"{rate:.0f} images/s "
            f"({cpu_seconds:.2f} CPU s/batch)"
        )


if __name__ == "__main__":
    main()
