"""`dreamfusion prior train` and `dreamfusion prior sample`: argparse only here; work is imported lazily.

dreamfusion prior train --out DIR [--preset tiny|bundled|bundled-camera-text] [--steps N]
                        [--batch-size N] [--device cuda] [--seed N] [--init FILE] [--lr LR]
                        [--objects ...] [--timesteps LO HI] [--timesteps-share S] [--resume] [--max-minutes M]
                        [--fit-minutes M] [--compile]
dreamfusion prior sample PROMPT [-n 16] [--out grid.png] [--model PATH] [--steps 50]
                         [--guidance-scale 3] [--eta 0] [--seed N] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from dreamfusion.errors import UserError


def add_parsers(sub) -> None:
    """Add the `prior` command group to the top-level subparsers."""
    prior = sub.add_parser("prior", help="train or sample the bundled text-to-image prior (docs/prior.md)")
    cmds = prior.add_subparsers(dest="prior_command", required=True)

    train = cmds.add_parser("train", help="train the prior on renders of the procedural world")
    train.add_argument(
        "--out", type=Path, required=True, help="run folder (checkpoints, metrics, prior.safetensors)"
    )
    train.add_argument(
        "--preset",
        default="bundled",
        help="tiny | bundled | bundled-camera-text (default: bundled; ignored with --resume)",
    )
    train.add_argument(
        "--steps", type=int, default=None, help="total optimizer steps (default: the preset's)"
    )
    train.add_argument("--batch-size", type=int, default=None, help="images per step (default: the preset's)")
    train.add_argument("--device", default=None, help="cpu or cuda (default: the preset's; bundled: cuda)")
    train.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's)")
    train.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from these prior weights (e.g. the packaged src/dreamfusion/weights/prior.safetensors) "
        "and train on with a fresh schedule; fresh runs only",
    )
    train.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the preset's)")
    train.add_argument(
        "--objects",
        nargs="+",
        default=None,
        metavar="OBJECT",
        help="objects to render training images of; a name given k times is drawn k times as often "
        "(e.g. --objects cube cube sphere ... to fine-tune a weak shape); fresh runs only "
        "(default: the preset's)",
    )
    train.add_argument(
        "--timesteps",
        nargs=2,
        type=float,
        default=None,
        metavar=("LO", "HI"),
        help="draw t from this fraction of the timesteps, e.g. 0.6 1.0 for the noisy end where the "
        "camera matters most; fresh runs only (default: 0 1)",
    )
    train.add_argument(
        "--timesteps-share",
        type=float,
        default=None,
        metavar="S",
        help="share of each batch drawn from --timesteps; the rest from all timesteps (default 1)",
    )
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    train.add_argument(
        "--max-minutes",
        type=float,
        default=0.0,
        help="stop (with a checkpoint) after this many minutes; 0: no limit",
    )
    train.add_argument(
        "--fit-minutes",
        type=float,
        default=0.0,
        help="set --steps so the run takes about this many minutes here (timed on its first "
        "steps; fresh runs only); 0: use --steps",
    )
    train.add_argument("--compile", action="store_true", help="torch.compile the U-Net (CUDA)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    sample = cmds.add_parser("sample", help="sample images of a prompt from the prior")
    sample.add_argument("prompt", help='what to draw, in the world\'s words, e.g. "a red cube, front view"')
    sample.add_argument("-n", type=int, default=16, help="number of images (default 16)")
    sample.add_argument("--out", type=Path, default=Path("grid.png"), help="PNG grid (default grid.png)")
    sample.add_argument("--model", type=Path, default=None, help="weights file (default: the packaged prior)")
    sample.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    sample.add_argument(
        "--guidance-scale", type=float, default=3.0, help="classifier-free guidance (default 3)"
    )
    sample.add_argument(
        "--mode",
        default="any",
        help="shading to ask for: any | albedo | lambertian | textureless (default any)",
    )
    sample.add_argument("--eta", type=float, default=0.0, help="0: DDIM, 1: ancestral (default 0)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")


def run(args: argparse.Namespace) -> int:
    if args.prior_command == "train":
        return _train(args)
    return _sample(args)


def _train(args: argparse.Namespace) -> int:
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


def _sample(args: argparse.Namespace) -> int:
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
