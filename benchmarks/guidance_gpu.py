"""Seconds per training iteration with Stable Diffusion 2.1-base and DeepFloyd IF stage-I guidance,
on random weights in the real architectures (nothing is downloaded), float16 on CUDA.

    python benchmarks/guidance_gpu.py                      # both backends, default settings and preset
    python benchmarks/guidance_gpu.py --variants default eager channels_last compile+channels_last
    python benchmarks/guidance_gpu.py --smoke              # tiny shapes on the CPU: checks the script
    python benchmarks/guidance_gpu.py --backends stable-diffusion --field.hash-kernel torch  # config flags

For each backend and variant (guidance config switches joined by '+': compile, channels_last,
perp_neg, vae_slicing; 'default' is the backend config defaults, which compile on CUDA; 'eager' is
the defaults with compiling off):
1. the training step of the project's Trainer at the default preset, unsynchronized: seconds per
   iteration and peak GPU memory;
2. the same steps with the device synchronized around each phase: render, VAE encode, U-Net, rest of
   guidance, backward (field + VAE encoder), optimizer;
3. the parts alone: the U-Net forward at the classifier-free-guidance batch (2 x batch) and the VAE
   encoder forward + backward at 512, to compare with the issue's reference numbers (34.5 ms and
   30 ms on an H100, eager float16).
Writes JSON (--out) and prints a table. Any other arguments are config flags, as `dreamfusion
generate` takes them (`--field.hash-kernel torch`); the guidance settings come from the variants.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from dreamfusion.api import apply_flags, resolve_config
from dreamfusion.bench.provenance import git_commit, machine_info
from dreamfusion.config import Config, GuidanceConfig, guidance_config
from dreamfusion.training.trainer import Trainer

# SD 2.1-base (stable-diffusion-2-1-base/unet and /vae config.json): 866M-parameter U-Net on 64x64x4
# latents with 1024-wide OpenCLIP-H text states; VAE with 8x downsampling.
SD21_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
)
SD21_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=512,
    scaling_factor=0.18215,
)
# IF-I-XL-v1.0/unet: model_channels 704, channel_mult (1, 2, 3, 4), 3 res blocks, attention below the
# top level, T5-XXL states (4096) projected to 2816; this gives the published 4.3B parameters.
IF_I_XL_UNET = dict(
    sample_size=64,
    in_channels=3,
    out_channels=6,
    layers_per_block=3,
    block_out_channels=(704, 1408, 2112, 2816),
    down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
    cross_attention_dim=2816,
    encoder_hid_dim=4096,
    attention_head_dim=64,
    addition_embed_type="text",
    addition_embed_type_num_heads=64,
    cross_attention_norm="group_norm",
    resnet_time_scale_shift="scale_shift",
    act_fn="gelu",
)
TEXT = {"stable-diffusion": (77, 1024), "deepfloyd-if": (77, 4096)}  # (tokens, width) of the text states

# --smoke: the same code on tiny shapes, on the CPU.
TINY_SD_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=4,
)
TINY_SD_VAE = dict(
    block_out_channels=(8, 16),
    latent_channels=4,
    norm_num_groups=4,
    sample_size=16,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
)
TINY_IF_UNET = dict(
    IF_I_XL_UNET,
    sample_size=16,
    layers_per_block=1,
    block_out_channels=(16, 32),
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    cross_attention_dim=32,
    encoder_hid_dim=32,
    attention_head_dim=8,
    addition_embed_type_num_heads=2,
    norm_num_groups=8,
)
TINY_TEXT = (77, 32)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timed:
    """Wraps a callable; when `on`, synchronizes around each call and adds its wall time to totals[name]."""

    def __init__(self, fn: Any, name: str, totals: dict[str, float], device: torch.device):
        self.fn, self.name, self.totals, self.device, self.on = fn, name, totals, device, False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.on:
            return self.fn(*args, **kwargs)
        sync(self.device)
        start = time.perf_counter()
        out = self.fn(*args, **kwargs)
        sync(self.device)
        self.totals[self.name] = self.totals.get(self.name, 0.0) + time.perf_counter() - start
        return out


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_guidance(backend: str, gcfg: GuidanceConfig, cfg: Config, device: torch.device, smoke: bool):
    """The real backend class around random-weight components; text states are random too."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    tokens, width = TINY_TEXT if smoke else TEXT[backend]

    def load_text_encoder():
        return lambda texts: torch.randn(len(texts), tokens, width, device=device, dtype=dtype)

    info: dict[str, Any] = {}
    with torch.device(device):
        if backend == "stable-diffusion":
            from dreamfusion.guidance.stable_diffusion import StableDiffusionGuidance

            unet = UNet2DConditionModel(**(TINY_SD_UNET if smoke else SD21_UNET)).to(dtype)
            vae = AutoencoderKL(**(TINY_SD_VAE if smoke else SD21_VAE)).to(dtype)
            scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
            info.update(unet_parameters=count(unet), vae_parameters=count(vae))
            guidance = StableDiffusionGuidance(
                unet, vae, scheduler, gcfg, cfg.sds, load_text_encoder, "benchmark"
            )
        else:
            from dreamfusion.guidance.deepfloyd_if import DeepFloydIFGuidance

            unet = UNet2DConditionModel(**(TINY_IF_UNET if smoke else IF_I_XL_UNET)).to(dtype)
            scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
            info.update(unet_parameters=count(unet))
            guidance = DeepFloydIFGuidance(unet, scheduler, gcfg, cfg.sds, load_text_encoder, "benchmark")
    info["attention_processors"] = sorted({type(p).__name__ for p in unet.attn_processors.values()})
    return guidance, info


def time_loop(fn: Any, n: int, device: torch.device) -> float:
    """Mean seconds of fn() over n calls after one untimed call."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - start) / n


def parts_alone(
    guidance: Any, backend: str, batch: int, text: tuple[int, int], device: torch.device, n: int
) -> dict[str, float]:
    """The U-Net forward at batch 2 x batch, and (SD) the VAE encoder forward + backward, alone."""
    model = guidance.model
    size = guidance.image_size // getattr(guidance, "latent_factor", 1)
    z = torch.randn(2 * batch, model.channels, size, size, device=device)
    t = torch.full((2 * batch,), 500, device=device, dtype=torch.long)
    emb = torch.randn(2 * batch, *text, device=device, dtype=model.dtype)
    out: dict[str, float] = {}
    with torch.no_grad():
        out["unet_forward_cfg_batch_s"] = time_loop(lambda: model.eps(z, t, emb), n, device)
    if backend == "stable-diffusion":
        images = torch.rand(batch, 3, 64, 64, device=device, requires_grad=True)

        def vae_step() -> None:
            guidance.encode_images(images).sum().backward()

        out["vae_encoder_forward_backward_s"] = time_loop(vae_step, n, device)
    return out


def bench(backend: str, variant: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    switches = set() if variant in ("default", "eager") else set(variant.split("+"))
    known = {"compile", "channels_last", "perp_neg", "vae_slicing"}
    if switches - known:
        raise SystemExit(
            f"unknown variant switches {sorted(switches - known)}; use {sorted(known)}, default or eager"
        )
    settings = {s: True for s in switches}
    if variant == "eager":
        settings["compile"] = False
    cfg = resolve_config("smoke" if args.smoke else "default", device=str(device))
    cfg = apply_flags(cfg, args.flags, "benchmarks/guidance_gpu.py")
    gcfg = guidance_config(backend, embedding_cache=False, **settings)
    cfg = dataclasses.replace(
        cfg,
        guidance=gcfg,
        camera=dataclasses.replace(cfg.camera, resolution=16) if args.smoke else cfg.camera,
        shading=dataclasses.replace(
            cfg.shading, albedo_warmup_steps=0
        ),  # lit renders need normals: the real cost
        train=dataclasses.replace(
            cfg.train,
            steps=10**6,
            progress=False,
            preview_every=0,
            checkpoint_every=10**9,
            batch_size=args.batch or cfg.train.batch_size,
        ),
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
    guidance, info = build_guidance(backend, gcfg, cfg, device, args.smoke)
    totals: dict[str, float] = {}
    # The U-Net's call as the guidance makes it (a CUDA graph replay by default), not the module:
    # a replay never enters the module's forward.
    timed = [Timed(guidance.model._forward, "unet", totals, device)]
    guidance.model._forward = timed[0]
    if backend == "stable-diffusion":
        timed.append(Timed(guidance.vae.encode, "vae_encode", totals, device))
        guidance.vae.encode = timed[1]

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer("a ceramic mug", cfg, Path(tmp) / "run", guidance)
        compile_start = time.perf_counter()
        for _ in range(args.warmup):
            trainer.train_step()
        sync(device)
        warmup_s = time.perf_counter() - compile_start
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        sync(device)
        per_iteration = (time.perf_counter() - start) / args.steps
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

        trainer.timer.totals.clear()
        trainer.timer.sync = True
        for t in timed:
            t.on = True
        for _ in range(args.steps):
            trainer.train_step()
        for t in timed:
            t.on = False
        phases = {k: v / args.steps for k, v in trainer.timer.totals.items()}
        inner = {k: v / args.steps for k, v in totals.items()}
        skipped = trainer.skipped_steps
    breakdown = {
        "render": phases.get("render", 0.0),
        "vae_encode": inner.get("vae_encode", 0.0),
        "unet": inner.get("unet", 0.0),
        "guidance_other": phases.get("guidance", 0.0) - inner.get("vae_encode", 0.0) - inner.get("unet", 0.0),
        "backward": phases.get("backward", 0.0),
        "optimizer": phases.get("optimizer", 0.0),
    }
    text = TINY_TEXT if args.smoke else TEXT[backend]
    parts = parts_alone(guidance, backend, cfg.train.batch_size, text, device, args.steps)
    del trainer, guidance
    return {
        "backend": backend,
        "variant": variant,
        "resolution": cfg.camera.resolution,
        "batch_size": cfg.train.batch_size,
        "field": cfg.field.kind,
        "hash_kernel": cfg.field.hash_kernel,
        "seconds_per_iteration": per_iteration,
        "iterations_10k_minutes": per_iteration * 10_000 / 60,
        "peak_memory_gib": peak,
        "breakdown_seconds_synchronized": breakdown,
        "parts_alone_seconds": parts,
        "warmup_seconds": warmup_s,
        "skipped_nonfinite_steps": skipped,
        **info,
    }


def _machine() -> dict[str, Any]:
    import diffusers

    return machine_info(diffusers=diffusers.__version__)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", nargs="+", default=["stable-diffusion", "deepfloyd-if"])
    parser.add_argument("--variants", nargs="+", default=["default"])
    parser.add_argument("--steps", type=int, default=30, help="timed steps (each pass)")
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed steps first (compilation happens here)"
    )
    parser.add_argument("--batch", type=int, default=0, help="views per step (0: the preset's)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shapes on the CPU, 2 steps: checks the script"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/guidance_gpu.json"))
    args, args.flags = parser.parse_known_args()  # the rest: config flags, as `generate` takes them
    if any(flag.startswith("--guidance.") for flag in args.flags):
        raise SystemExit("the guidance settings come from --backends and --variants, not --guidance.* flags")
    if args.smoke:
        args.device, args.steps, args.warmup = "cpu", 2, 1
    device = torch.device(args.device)
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # random weights cast with .to(): nothing to warn about
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes every step: let cuDNN pick its kernels once

    rows = []
    for backend in args.backends:
        for variant in args.variants:
            rows.append(bench(backend, variant, args, device))
    report = {
        "machine": _machine(),
        "commit": git_commit(),
        "steps": args.steps,
        "warmup": args.warmup,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(f"machine: {report['machine']}")
    keys = ("render", "vae_encode", "unet", "guidance_other", "backward", "optimizer")
    print(
        f"{'backend':17s} {'variant':24s} {'ms/it':>7s} {'10k min':>7s} {'peak GiB':>8s}  "
        + " ".join(f"{k:>9s}" for k in keys)
        + "   parts alone (ms)"
    )
    for r in rows:
        ms = " ".join(f"{1000 * r['breakdown_seconds_synchronized'][k]:9.1f}" for k in keys)
        parts = ", ".join(
            f"{k.removesuffix('_s')} {1000 * v:.1f}" for k, v in r["parts_alone_seconds"].items()
        )
        peak = f"{r['peak_memory_gib']:8.2f}" if r["peak_memory_gib"] is not None else f"{'-':>8s}"
        print(
            f"{r['backend']:17s} {r['variant']:24s} {1000 * r['seconds_per_iteration']:7.1f} "
            f"{r['iterations_10k_minutes']:7.1f} {peak}  {ms}   {parts}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
