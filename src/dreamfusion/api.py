"""The Python entry point: `dreamfusion.generate(prompt, ...)` returns paths and live objects."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dreamfusion.config import Config, apply_overrides, guidance_config
from dreamfusion.errors import UserError
from dreamfusion.guidance.base import Guidance
from dreamfusion.presets import PRESETS
from dreamfusion.training.run_dir import default_run_dir


def _closed_form(cfg: Config, device: torch.device) -> Guidance:
    from dreamfusion.guidance.closed_form import ClosedFormGuidance

    background = cfg.background.color if cfg.background.kind == "constant" else (1.0, 1.0, 1.0)
    return ClosedFormGuidance(cfg.guidance, cfg.sds, cfg.shading, background_color=background, device=device)


def _stable_diffusion(cfg: Config, device: torch.device) -> Guidance:
    from dreamfusion.guidance.stable_diffusion import load_stable_diffusion

    return load_stable_diffusion(cfg.guidance, cfg.sds, device)


def _deepfloyd_if(cfg: Config, device: torch.device) -> Guidance:
    from dreamfusion.guidance.deepfloyd_if import load_deepfloyd_if

    return load_deepfloyd_if(cfg.guidance, cfg.sds, device)


def _bundled(cfg: Config, device: torch.device) -> Guidance:
    from dreamfusion.guidance.bundled import load_bundled

    return load_bundled(cfg.guidance, cfg.sds, device)


# Choosing a backend is this one dict: name -> builder(config, device). Builders import lazily.
GUIDANCE_BACKENDS: dict[str, Callable[[Config, torch.device], Guidance]] = {
    "closed-form": _closed_form,
    "stable-diffusion": _stable_diffusion,
    "deepfloyd-if": _deepfloyd_if,
    "bundled": _bundled,
}


@dataclass
class GenerateResult:
    """What a finished run leaves: its folder, files, and the trained modules (on the run's device)."""

    prompt: str
    run_dir: Path
    checkpoint: Path
    preview: Path
    metrics: Path
    config: Config
    field: torch.nn.Module
    background: torch.nn.Module
    steps: int
    skipped_steps: int
    seconds: float
    mesh: Path | None = None  # RUN/mesh.glb unless export_mesh=False or the export failed
    video: Path | None = None  # RUN/turntable.mp4 unless turntable=False or it failed
    asset_seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # "mesh", "video": wall seconds


def auto_preset(device: str | None) -> tuple[str, str]:
    """What preset "auto" means here: (preset, device).

    The device asked for, else CUDA when this machine has it, else the CPU; then the `default`
    preset on CUDA and the short `cpu` preset on a CPU (`default` takes hours there)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_cuda = device.split(":")[0] == "cuda"
    return ("default" if on_cuda else "cpu"), device


def resolve_config(
    preset: str = "auto",
    steps: int | None = None,
    seed: int | None = None,
    guidance: str | None = None,
    device: str | None = None,
    config: Config | None = None,
) -> Config:
    """Start from `config` (or the named preset; "auto": see `auto_preset`) and apply the common overrides."""
    if config is None and preset == "auto":
        preset, device = auto_preset(device)
    if config is None:
        if preset not in PRESETS:
            raise UserError(f"unknown preset '{preset}'; choose one of: auto, {', '.join(PRESETS)}")
        config = PRESETS[preset]()
    train = config.train
    if steps is not None:
        if steps <= 0:
            raise UserError(f"--steps must be positive (got {steps})")
        train = dataclasses.replace(train, steps=steps)
    if seed is not None:
        train = dataclasses.replace(train, seed=seed)
    if device is not None:
        train = dataclasses.replace(train, device=device)
    config = dataclasses.replace(config, train=train)
    if guidance is not None and guidance != config.guidance.name:
        # Another backend starts from its own defaults: no setting means the same to two priors.
        config = dataclasses.replace(config, guidance=guidance_config(guidance))
    return config


def generate(
    prompt: str,
    *,
    preset: str = "auto",
    out: str | Path | None = None,
    steps: int | None = None,
    seed: int | None = None,
    guidance: str | None = None,
    device: str | None = None,
    model: str | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    config: Config | None = None,
    progress: bool | None = None,
    export_mesh: bool = True,
    turntable: bool = True,
    turntable_from: str = "mesh",
    view: bool = False,
    view_port: int = 8080,
) -> GenerateResult:
    """Turn a sentence into a trained 3D field. Raises UserError on bad input, before writing anything.

    After training, the mesh (RUN/mesh.glb) and a turntable (RUN/turntable.mp4) are written
    unless `export_mesh` / `turntable` is False; the turntable rasterizes that mesh, or volume-renders
    the field with `turntable_from` "field" (and without a mesh); `view` serves the field live on `view_port`.
    `guidance`, `model`, `preset`, `steps`, `seed` and `device` are the command line's choices;
    `overrides` sets any other field by its dotted name, e.g. {"sds.guidance_scale": 100, "optim.lr": 5e-3}.
    """
    from dreamfusion.export.turntable import check_turntable_from
    from dreamfusion.training.lifecycle import resolve_device
    from dreamfusion.training.trainer import Trainer

    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError('the prompt is empty; give a sentence such as "a ceramic mug"')
    check_turntable_from(turntable_from)
    cfg = resolve_config(preset, steps, seed, guidance, device, config)
    if model is not None:
        cfg = own_prior(apply_overrides(cfg, {"guidance.model": model}), [])
    cfg = apply_overrides(cfg, overrides or {})
    if progress is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=progress))
    run_dir = Path(out) if out is not None else default_run_dir(prompt.strip(), resume=resume)
    torch_device = resolve_device(cfg.train.device)
    try:
        backend = GUIDANCE_BACKENDS[cfg.guidance.name](cfg, torch_device)
    except ValueError as e:
        raise UserError(str(e)) from None
    trainer = Trainer(prompt, cfg, run_dir, backend, resume=resume)
    viewer = None
    if view:
        from dreamfusion.viewer.server import Viewer

        viewer = Viewer(trainer.field, trainer.background, cfg, port=view_port, live=True, title=prompt)
        print(f"viewer:      {viewer.url} (live while training)", flush=True)
    try:
        checkpoint = trainer.train()
    finally:
        if viewer is not None:
            viewer.stop()
    from dreamfusion.export.assets import write_assets

    assets = write_assets(
        trainer.run.path, trainer.field, trainer.background, cfg, export_mesh, turntable, turntable_from
    )
    return GenerateResult(
        prompt=trainer.prompt,
        run_dir=trainer.run.path,
        checkpoint=checkpoint,
        preview=trainer.run.previews / "final.png",
        metrics=trainer.run.metrics_file,
        config=cfg,
        field=trainer.field,
        background=trainer.background,
        steps=trainer.step,
        skipped_steps=trainer.skipped_steps,
        seconds=trainer.elapsed,
        mesh=assets.mesh,
        video=assets.video,
        asset_seconds=assets.seconds,
    )


def apply_flags(cfg, extra: list[str], prog: str):
    """Parse `--section.field VALUE` flags with tyro against `cfg` as the defaults (for scripts)."""
    if not extra:
        return cfg
    if not extra[0].startswith("-"):
        raise UserError(f"unexpected argument '{extra[0]}'; put a prompt with spaces in quotes")
    import tyro

    from dreamfusion.config import Config

    parsed = tyro.cli(Config, default=cfg, args=extra, prog=prog, config=(tyro.conf.CascadeSubcommandArgs,))
    if getattr(parsed.guidance, "model", None) != getattr(cfg.guidance, "model", None):
        parsed = own_prior(parsed, extra)
    return parsed


def own_prior(cfg, extra: list[str]):
    """A prior of the user's own (`--guidance.model`, `--model`) is distilled alone: the presets'
    high-noise expert is a fine-tune of the packaged prior, so it stays only when named
    (`--guidance.high-noise-model`)."""
    named = {"--guidance.high-noise-model", "--guidance.high_noise_model"}
    if cfg.guidance.name != "bundled" or any(flag.split("=", 1)[0] in named for flag in extra):
        return cfg
    return dataclasses.replace(cfg, guidance=dataclasses.replace(cfg.guidance, high_noise_model=None))
