"""`dreamfusion bench fidelity` and `dreamfusion bench merge`: one dataclass each (its fields are the
flags); the work is imported lazily.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from dreamfusion.commands import Sections, config_defaults
from dreamfusion.config import Config
from dreamfusion.errors import UserError


@dataclass
class BenchFidelity:
    """Train every prompt x seed of a versioned prompt set, score each run against the world's ground
    truth (IoUs, Chamfer, color, shape, front, IoU against time) and write OUT/fidelity.json,
    OUT/fidelity.md and OUT/contact_sheet.png. Resumes: finished runs are not trained again. Config
    fields can be set too, e.g. --render.samples-per-ray 32."""

    out: Path = Path("outputs/fidelity")
    """Report and runs folder."""
    prompt_set: str = "fidelity-v2"
    """Packaged set or .json file."""
    preset: str = "default"
    """smoke | cpu | default | paper."""
    only: tuple[str, ...] = ()
    """Only these objects."""
    seeds: tuple[int, ...] | None = None
    """Seeds (default: the set's)."""
    limit: int | None = None
    """At most N runs (seed by seed)."""
    steps: int | None = None
    """Optimization steps (default: the preset's)."""
    checkpoint_every: int | None = None
    """Checkpoint (and time-to-quality point) every N steps (default: the preset's)."""
    device: str = "auto"
    """cpu, cuda or cuda:N; auto: cuda when there is one, else cpu."""
    resolution: int = 64
    """Grid of the IoUs, per axis."""
    frame_size: int = 96
    """Contact-sheet frame side."""
    mesh: bool = True
    """Extract the mesh and score its Chamfer distance."""
    keep_checkpoints: bool = False
    """Keep every checkpoint of a scored run (default: only the newest)."""
    jobs: int = 1
    """Runs trained at once, sharing the GPUs (or cores) equally, each in its own Ray worker."""
    address: str | None = None
    """Join a running Ray cluster: auto or HOST:PORT (default: start one here when runs go in parallel)."""
    gpus_per_run: float | None = None
    """GPUs per run; 0.125 puts 8 runs on a GPU (default: from --jobs)."""
    cpus_per_run: float | None = None
    """CPU cores per run (default: from --jobs)."""
    quiet: bool = False
    """No progress bars."""
    config: Sections = dataclasses.field(default_factory=Config)

    @classmethod
    def defaults(cls, argv: list[str]) -> tuple[BenchFidelity, list[str]]:
        import torch

        if "--device" not in argv and not any(a.startswith("--device=") for a in argv):
            # A cluster joined with --address trains on its GPUs even where this machine has none.
            cluster = any(a == "--address" or a.startswith("--address=") for a in argv)
            argv = [*argv, "--device", "cuda" if torch.cuda.is_available() or cluster else "cpu"]
        if "--guidance" not in argv and not any(a.startswith("--guidance=") for a in argv):
            argv = ["--guidance", "bundled", *argv]  # the benchmark's prior, whatever the preset's
        config, rest = config_defaults(argv, "default")
        return cls(config=config), rest

    def run(self, argv: list[str], default: BenchFidelity) -> int:
        from dreamfusion.api import resolve_config
        from dreamfusion.bench.runner import BenchOptions, run_benchmark
        from dreamfusion.commands import own_prior_if_changed

        cfg = own_prior_if_changed(self.config, default.config, argv)
        cfg = resolve_config(config=cfg, steps=self.steps)
        train = cfg.train
        if self.checkpoint_every is not None:
            train = dataclasses.replace(train, checkpoint_every=self.checkpoint_every)
        if self.quiet:
            train = dataclasses.replace(train, progress=False)
        options = BenchOptions(
            config=dataclasses.replace(cfg, train=train),
            out=self.out,
            preset=self.preset,
            overrides=tuple(_config_flags(argv)),
            prompt_set=self.prompt_set,
            only=self.only,
            seeds=self.seeds,
            limit=self.limit,
            resolution=self.resolution,
            mesh=self.mesh,
            frame_size=self.frame_size,
            keep_checkpoints=self.keep_checkpoints,
            jobs=self.jobs,
            address=self.address,
            gpus_per_run=self.gpus_per_run,
            cpus_per_run=self.cpus_per_run,
        )
        report = run_benchmark(options, log=lambda line: print(line, flush=True))
        _print_targets(report, self.out)
        return 0


def _config_flags(argv: list[str]) -> list[str]:
    """The `--section.field VALUE` flags of argv (the run's command records them)."""
    out, inside = [], False
    for token in argv:
        if token.startswith("--"):
            inside = "." in token.split("=", 1)[0]
        if inside:
            out.append(token)
    return out


@dataclass
class BenchMerge:
    """One report from benchmark outputs made in parts (other seeds, objects or machines): read
    DIR/fidelity.json of each part and write OUT/fidelity.json, OUT/fidelity.md and
    OUT/contact_sheet.png (unless --no-sheet) over all their runs: targets, seed spread and time to
    quality recomputed, each part's command, commit and machine listed."""

    parts: Annotated[tuple[Path, ...], tyro.conf.arg(metavar="DIR"), tyro.conf.Positional]
    """Benchmark output folders."""
    out: Path
    """Folder of the merged report."""
    sheet: bool = True
    """Write the contact sheet (--no-sheet when the parts' frame images are gone)."""

    def run(self, argv: list[str], default: BenchMerge | None) -> int:
        return _merge(self)


COMMANDS = {"fidelity": BenchFidelity, "merge": BenchMerge}


def _merge(args: BenchMerge) -> int:
    from dreamfusion.bench.report import merge_reports, write_report

    parts = []
    for folder in args.parts:
        path = folder / "fidelity.json"
        try:
            parts.append((folder, json.loads(path.read_text())))
        except (OSError, ValueError) as e:
            raise UserError(
                f"cannot read {path} ({e}); give folders written by `dreamfusion bench fidelity`"
            ) from None
    try:
        report = merge_reports(parts, args.out)
    except (KeyError, ValueError) as e:
        raise UserError(f"cannot merge: {e}") from None
    frames = [] if not args.sheet else [args.out.absolute() / r["frames"] for r in report["runs"]]
    missing = [path for path in map(os.path.normpath, frames) if not Path(path).is_file()]
    if missing:
        raise UserError(
            f"frame image {missing[0]} is missing ({len(missing)} in all); keep the parts' runs/ "
            "folders, or pass --no-sheet"
        )
    write_report(report, args.out, sheet=args.sheet)
    _print_targets(report, args.out)
    return 0


def _print_targets(report: dict, out: Path) -> None:
    print(f"report:      {out / 'fidelity.md'} ({report['runs_done']} runs)")
    for target in report["summary"]["targets"]:
        met = {True: "met", False: "NOT met", None: "-"}[target["met"]]
        value = f"{target['value']:.3f}" if isinstance(target["value"], float) else target["value"]
        print(f"target:      {target['target']}: {value if value is not None else '-'} ({met})")
