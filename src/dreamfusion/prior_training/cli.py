"""`dreamfusion prior train` and `dreamfusion prior sample`: one dataclass each (its fields are the flags);
the work is imported lazily.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from dreamfusion.errors import UserError


@dataclass
class PriorTrain:
    """Train the prior on renders of the procedural world (docs/prior.md)."""

    out: Path
    """Run folder (checkpoints, metrics, prior.safetensors)."""
    preset: str = "bundled"
    """tiny | bundled | bundled-camera-text (ignored with --resume)."""
    steps: int | None = None
    """Total optimizer steps (default: the preset's)."""
    batch_size: int | None = None
    """Images per step (default: the preset's)."""
    device: str | None = None
    """cpu or cuda (default: the preset's; bundled: cuda)."""
    seed: int | None = None
    """Random seed (default: the preset's)."""
    init: Path | None = None
    """Start from these prior weights (e.g. the packaged src/dreamfusion/weights/prior.safetensors) and
    train on with a fresh schedule; fresh runs only."""
    lr: float | None = None
    """Peak learning rate (default: the preset's)."""
    objects: tuple[str, ...] | None = None
    """Objects to render training images of; a name given k times is drawn k times as often (e.g.
    --objects cube cube sphere ... to fine-tune a weak shape); fresh runs only (default: the preset's)."""
    timesteps: tuple[float, float] | None = None
    """LO HI: draw t from this fraction of the timesteps, e.g. 0.6 1.0 for the noisy end where the
    camera matters most; fresh runs only (default: 0 1)."""
    timesteps_share: float | None = None
    """Share of each batch drawn from --timesteps; the rest from all timesteps (default 1)."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint."""
    max_minutes: float = 0.0
    """Stop (with a checkpoint) after this many minutes; 0: no limit."""
    fit_minutes: float = 0.0
    """Set --steps so the run takes about this many minutes here (timed on its first steps; fresh runs
    only); 0: use --steps."""
    compile: bool = False
    """torch.compile the U-Net (CUDA)."""
    quiet: bool = False
    """No progress bar."""

    def run(self, argv: list[str], default: PriorTrain | None) -> int:
        return _train(self)


@dataclass
class PriorSample:
    """Sample images of a prompt from the prior."""

    prompt: Annotated[str, tyro.conf.arg(metavar="PROMPT"), tyro.conf.Positional]
    """What to draw, in the world's words, e.g. "a red cube, front view"."""
    n: Annotated[int, tyro.conf.arg(aliases=("-n",))] = 16
    """Number of images."""
    out: Path = Path("grid.png")
    """PNG grid."""
    model: Path | None = None
    """Weights file (default: the packaged prior)."""
    steps: int = 50
    """DDIM steps."""
    guidance_scale: float = 3.0
    """Classifier-free guidance."""
    mode: str = "any"
    """Shading to ask for: any | albedo | lambertian | textureless."""
    eta: float = 0.0
    """0: DDIM, 1: ancestral."""
    seed: int = 0
    """Random seed."""
    device: str = "cpu"
    """cpu or cuda."""

    def run(self, argv: list[str], default: PriorSample | None) -> int:
        return _sample(self)


COMMANDS = {"train": PriorTrain, "sample": PriorSample}


def _train(args: PriorTrain) -> int:
    import json

    from dreamfusion.prior_training.recipes import PRIOR_PRESETS, recipe_from_dict
    from dreamfusion.prior_training.train import PriorTrainer

    if args.resume:
        config_file = args.out / "config.json"
        if not config_file.is_file():
            raise UserError(f"nothing to resume in {args.out}: it has no config.json; drop --resume")
        recipe = recipe_from_dict(json.loads(config_file.read_text())["config"])
    else:
        if args.preset not in PRIOR_PRESETS:
            raise UserError(
                f"unknown prior preset '{args.preset}'; choose one of: {', '.join(PRIOR_PRESETS)}"
            )
        recipe = PRIOR_PRESETS[args.preset]()
    if args.init is not None and args.resume:
        raise UserError(
            "--init starts a fresh run from given weights; a resumed run continues its own (drop one)"
        )
    if args.init is not None and not args.init.is_file():
        raise UserError(f"--init: no prior weights file at {args.init}")
    if args.objects is not None:
        from dreamfusion.world import OBJECTS

        if args.resume:
            raise UserError(
                "--objects sets what a fresh run trains on; a resumed run keeps its own (drop one)"
            )
        unknown = [name for name in args.objects if name not in OBJECTS]
        if unknown:
            raise UserError(f"--objects: unknown object '{unknown[0]}'; choose from: {', '.join(OBJECTS)}")
    overrides = {"steps": args.steps, "batch_size": args.batch_size, "device": args.device, "seed": args.seed}
    overrides["init"] = str(args.init) if args.init is not None else None
    overrides["objects"] = tuple(args.objects) if args.objects is not None else None
    if (args.timesteps is not None or args.timesteps_share is not None) and args.resume:
        raise UserError("--timesteps sets what a fresh run trains on; a resumed run keeps its own (drop one)")
    overrides["timestep_range"] = tuple(args.timesteps) if args.timesteps is not None else None
    overrides["timestep_range_share"] = args.timesteps_share
    for name, value in overrides.items():
        if value is not None and name in ("steps", "batch_size") and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive (got {value})")
    if args.lr is not None and args.lr <= 0:
        raise UserError(f"--lr must be positive (got {args.lr})")
    train = dataclasses.replace(recipe.train, **{k: v for k, v in overrides.items() if v is not None})
    if args.lr is not None:
        train = dataclasses.replace(train, optim=dataclasses.replace(train.optim, lr=args.lr))
    if args.quiet:
        train = dataclasses.replace(train, progress=False)
    recipe = dataclasses.replace(recipe, train=train)
    trainer = PriorTrainer(recipe, args.out, resume=args.resume, compile=args.compile)
    if args.fit_minutes > 0 and args.resume:
        raise UserError(
            "--fit-minutes sets the length of a fresh run; a resumed run keeps its own (--steps changes it)"
        )
    path = trainer.train(max_minutes=args.max_minutes, fit_minutes=args.fit_minutes)
    print(f"weights:     {path} (step {trainer.step}/{trainer.cfg.steps}, EMA, float16)")
    print(f"metrics:     {trainer.run.metrics_file}")
    if (args.out / "samples.png").is_file():
        print(f"samples:     {args.out / 'samples.png'}")
    return 0


def _sample(args: PriorSample) -> int:
    from dreamfusion.prior.model import PriorFileError, load_prior
    from dreamfusion.prior_training.sample import sample_prompts, save_grid
    from dreamfusion.training.lifecycle import resolve_device
    from dreamfusion.weights import PRIOR_PATH

    if args.n <= 0 or args.steps <= 0:
        raise UserError(f"-n and --steps must be positive (got {args.n}, {args.steps})")
    if args.model is None and not PRIOR_PATH.is_file():
        raise UserError(
            f"the packaged prior is not installed (no {PRIOR_PATH}); pass --model RUN/prior.safetensors"
        )
    path = args.model or PRIOR_PATH
    try:
        model = load_prior(path, resolve_device(args.device))
        images = sample_prompts(
            model, [args.prompt] * args.n, args.seed, args.steps, args.guidance_scale, args.eta
        )
    except (PriorFileError, ValueError) as e:
        raise UserError(str(e)) from None
    grid = save_grid(args.out, images, columns=math.ceil(math.sqrt(args.n)), scale=2)
    print(f"samples:     {grid} ({args.n} images of {args.prompt!r})")
    return 0
