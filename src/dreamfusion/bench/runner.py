"""The known-truth fidelity benchmark: train every prompt of a fixed prompt set, score it against the world.

A prompt set (`prompt_sets/<name>.json`, versioned, never edited once released) lists world
objects, the color each is painted and its caption, and the seeds. For each prompt x seed the
benchmark runs `dreamfusion.generate` into OUT/runs/<object>-<color>-s<seed>, then scores it:
`evaluate_run` (IoUs, Chamfer, color, shape, front: docs/evaluation.md), the IoU of every saved
checkpoint against its training seconds (time to quality), and turntable frames of the result
beside the truth for the contact sheet. `bench_report` turns the records into fidelity.json,
fidelity.md and contact_sheet.png. One run's training and scoring, and how each resumes, are in
`dreamfusion.bench.runs`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dreamfusion.batch.pool import open_pool
from dreamfusion.batch.resources import mps_running, run_resources, sharing_hint
from dreamfusion.bench.names import check_prompt_set, run_folder
from dreamfusion.bench.report import build_report, prompt_set_world, write_report
from dreamfusion.bench.runs import bench_run
from dreamfusion.config import Config
from dreamfusion.errors import UserError
from dreamfusion.world import OBJECTS, WORLD_VERSION

PROMPT_SETS = Path(__file__).parent / "prompt_sets"
DEFAULT_PROMPT_SET = "fidelity-v2"
RESOLUTION_RANGE = (16, 256)


@dataclass(frozen=True)
class Prompt:
    object: str
    color: str
    text: str


@dataclass(frozen=True)
class PromptSet:
    name: str
    version: int
    seeds: tuple[int, ...]
    prompts: tuple[Prompt, ...]

    @property
    def label(self) -> str:
        return f"{self.name}-v{self.version}"


@dataclass(frozen=True)
class BenchRun:
    """One prompt at one seed."""

    prompt: Prompt
    seed: int

    @property
    def name(self) -> str:
        return f"{self.prompt.object}-{self.prompt.color}-s{self.seed}"


def load_prompt_set(name: str = DEFAULT_PROMPT_SET) -> PromptSet:
    """A packaged set by name (e.g. "fidelity-v2") or a .json file. UserError when unreadable, or
    when it was written for another version of the world (a set without "world" is for world 1)."""
    path = Path(name) if name.endswith(".json") else PROMPT_SETS / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPT_SETS.glob("*.json")))
        raise UserError(f"no prompt set '{name}' (packaged: {known}; or pass a .json file)")
    try:
        data = json.loads(path.read_text())
        prompts = tuple(Prompt(p["object"], p["color"], p["prompt"]) for p in data["prompts"])
        result = PromptSet(data["name"], int(data["version"]), tuple(int(s) for s in data["seeds"]), prompts)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"prompt set {path} is unreadable ({e})") from None
    check_prompt_set(result, path)
    unknown = sorted({p.object for p in prompts} - set(OBJECTS))
    if unknown:
        raise UserError(f"prompt set {path} names unknown objects: {', '.join(unknown)}")
    world = prompt_set_world(data)
    if world != WORLD_VERSION:
        raise UserError(
            f"prompt set {path} is for world {world}, but this package's world is {WORLD_VERSION} "
            f"(its ground truth differs); use --prompt-set {DEFAULT_PROMPT_SET}, or a checkout of the "
            "release that made it to reproduce old numbers"
        )
    return result


def select_runs(
    prompt_set: PromptSet,
    only: tuple[str, ...] = (),
    seeds: tuple[int, ...] | None = None,
    limit: int | None = None,
) -> list[BenchRun]:
    """The runs to do, seed by seed (all prompts at the first seed, then the next), so that a
    `limit` covers as many prompts as it can. UserError (one line) on bad input."""
    unknown = [name for name in only if name not in OBJECTS]
    if unknown:
        raise UserError(f"unknown object '{unknown[0]}' in --only; choose from: {', '.join(OBJECTS)}")
    if seeds is not None and (not seeds or any(s < 0 for s in seeds)):
        raise UserError(f"--seeds must be non-negative integers (got {list(seeds)})")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1 (got {limit})")
    prompts = [p for p in prompt_set.prompts if not only or p.object in only]
    if not prompts:
        raise UserError(f"prompt set {prompt_set.label} has no prompt of {', '.join(only)}")
    runs = [BenchRun(p, s) for s in (prompt_set.seeds if seeds is None else seeds) for p in prompts]
    return runs[:limit] if limit is not None else runs


@dataclass
class BenchOptions:
    """What to run and how to score it. `config` is the resolved preset (overrides applied); each
    run takes it with its own seed and keeps every checkpoint (the time-to-quality curve)."""

    config: Config
    out: Path
    preset: str = "default"
    overrides: tuple[str, ...] = ()
    prompt_set: str = DEFAULT_PROMPT_SET
    only: tuple[str, ...] = ()
    seeds: tuple[int, ...] | None = None
    limit: int | None = None
    resolution: int = 64
    mesh: bool = True
    frame_size: int = 96
    jobs: int = 1
    """Runs trained at once: shorthand for an equal share of the GPUs (or, on the CPU, of the cores)
    each (see run_benchmark)."""
    address: str | None = None
    """The Ray cluster to join ("auto", "HOST:PORT"); None starts a local one when runs go in parallel."""
    gpus_per_run: float | None = None
    cpus_per_run: float | None = None
    keep_checkpoints: bool = False
    """Keep every checkpoint of a scored run; by default only the newest stays (the curve is in
    RUN/SCORE_FILE), as a benchmark's many runs of many checkpoints each would fill a disk."""

    def command(self) -> str:
        """The command that reproduces this benchmark, every setting spelled out."""
        train = self.config.train
        parts = [
            "dreamfusion bench fidelity",
            f"--prompt-set {self.prompt_set}",
            f"--preset {self.preset}",
            f"--guidance {self.config.guidance.name}",
            f"--steps {train.steps}",
            f"--checkpoint-every {train.checkpoint_every}",
            f"--device {train.device}",
            f"--resolution {self.resolution}",
            f"--frame-size {self.frame_size}",
            f"--out {self.out}",
        ]
        if self.only:
            parts.append("--only " + " ".join(self.only))
        if self.seeds is not None:
            parts.append("--seeds " + " ".join(str(s) for s in self.seeds))
        if self.limit is not None:
            parts.append(f"--limit {self.limit}")
        if not self.mesh:
            parts.append("--no-mesh")
        if self.keep_checkpoints:
            parts.append("--keep-checkpoints")
        if self.jobs > 1:
            parts.append(f"--jobs {self.jobs}")
        for flag, value in (("--gpus-per-run", self.gpus_per_run), ("--cpus-per-run", self.cpus_per_run)):
            if value is not None:
                parts.append(f"{flag} {value:g}")
        return " ".join(parts + list(self.overrides))


def check_options(options: BenchOptions) -> tuple[PromptSet, list[BenchRun]]:
    """Validate everything before any run starts; returns the set and the runs. UserError on bad input."""
    lo, hi = RESOLUTION_RANGE
    if not lo <= options.resolution <= hi:
        raise UserError(f"--resolution must be between {lo} and {hi} (got {options.resolution})")
    if options.config.train.checkpoint_every < 1:
        every = options.config.train.checkpoint_every
        raise UserError(f"--checkpoint-every must be at least 1 (got {every})")
    if not 16 <= options.frame_size <= 512:
        raise UserError(f"--frame-size must be between 16 and 512 (got {options.frame_size})")
    if options.jobs < 1:
        raise UserError(f"--jobs must be at least 1 (got {options.jobs})")
    if options.out.exists() and not options.out.is_dir():
        raise UserError(f"--out {options.out} is a file; pass a folder")
    from dreamfusion.config import validate_config
    from dreamfusion.training.lifecycle import resolve_device

    if options.address is None:  # a cluster joined may have GPUs where this machine has none
        resolve_device(options.config.train.device)
    validate_config(options.config)
    prompt_set = load_prompt_set(options.prompt_set)
    runs = select_runs(prompt_set, options.only, options.seeds, options.limit)
    for run in runs:
        run_folder(options.out, run)
    return prompt_set, runs


def run_benchmark(options: BenchOptions, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) and score every selected run; write the report after each. Returns it.

    With `options.jobs` > 1 (or a share per run, or a cluster's address), runs go through the batch
    pool (dreamfusion.batch: Ray, local or joined) and train at once, each in its own process: a small
    field and prior leave most of a GPU idle, so several runs share it at a higher total rate
    (docs/evaluation.md). Each run's own seconds then count the sharing; the report says how many
    ran at once. Runs sharing a GPU go faster under NVIDIA MPS (`sharing_hint` says so when it is
    not up). A run whose worker dies is run again and resumes from its last checkpoint.
    """
    prompt_set, runs = check_options(options)
    done: dict[int, dict] = {}
    failed: list[str] = []
    out_of_memory = 0
    report: dict = {}

    def finished(i: int, record: dict) -> None:
        nonlocal report
        done[i] = record
        run = runs[i]
        scored = "scored" if record["scored_now"] else "read back"
        trained = "trained" if record["trained_now"] else "not retrained"
        seconds = record["train_seconds"]
        log(
            f"[{len(done)}/{len(runs)}] {run.prompt.text} (seed {run.seed}): IoU {record['iou']:.3f} "
            f"(initial {record['initial_iou']:.3f}, scaled {record['scaled_iou']:.3f}), "
            f"{record['identified']}, {record['nearest_color']}; {record['steps']} steps in "
            f"{'?' if seconds is None else f'{seconds:.1f}'} s ({trained}, {scored})"
        )
        records = [done[k] for k in sorted(done)]  # in the set's order, whatever finished first
        report = build_report(options, prompt_set, records, total=len(runs))
        write_report(report, options.out)

    def outcome(i: int, get_record: Callable[[], dict]) -> None:
        """One run's record, or one line saying it failed: the other runs go on (a run's own
        failure must not throw away the hour of runs around it). Bad input still stops everything."""
        try:
            record = get_record()
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - reported, then raised as one line at the end
            nonlocal out_of_memory
            failed.append(runs[i].name)
            out_of_memory += isinstance(error, torch.OutOfMemoryError)
            log(
                f"[{len(done) + len(failed)}/{len(runs)}] {runs[i].prompt.text} (seed {runs[i].seed}): "
                f"FAILED ({type(error).__name__}: {str(error)[:300]})"
            )
            return
        finished(i, record)

    def check_failures() -> dict:
        if failed:
            # Too many runs on one GPU at once is the usual cause of running out of memory.
            memory = (
                f" ({out_of_memory} ran out of GPU memory: run fewer at once with a smaller --jobs)"
                if out_of_memory
                else ""
            )
            raise UserError(
                f"{len(failed)} of {len(runs)} runs failed ({', '.join(failed[:3])}"
                f"{', ...' if len(failed) > 3 else ''}; each said why above){memory}; the report holds "
                f"the {len(done)} others. Fix the cause and run the same command again: finished runs "
                "are read back, failed ones resume from their last checkpoint"
            )
        return report

    if not in_parallel(options):
        for i, run in enumerate(runs):
            outcome(i, functools.partial(bench_run, run, options))
        return check_failures()
    quiet = dataclasses.replace(
        options,
        config=dataclasses.replace(
            options.config, train=dataclasses.replace(options.config.train, progress=False)
        ),
    )
    pool = open_pool(options.address, log=log)
    try:
        gpus, cpus = share_of(options, pool.gpus, pool.cpus)
        resources = run_resources(options.config.train.device, gpus, cpus, pool.gpus, pool.cpus)
        hint = sharing_hint(resources.gpus, mps_running()) if pool.parallel else None
        if hint:
            log(hint)
        for i, run in enumerate(runs):
            pool.submit(i, bench_run, run, quiet, resources=resources)
        while pool.pending():
            i, record, error = pool.wait()
            outcome(i, functools.partial(_returned, record, error))
    except BaseException:
        pool.cancel()
        raise
    finally:
        pool.close()
    return check_failures()


def in_parallel(options: BenchOptions) -> bool:
    """Whether runs go through the batch pool (Ray): asked for by any of its flags."""
    shares = (options.address, options.gpus_per_run, options.cpus_per_run)
    return options.jobs > 1 or any(value is not None for value in shares)


def share_of(
    options: BenchOptions, gpus_total: float, cpus_total: float
) -> tuple[float | None, float | None]:
    """Each run's (GPUs, CPU cores): as given, else for --jobs N an N-th of the GPUs (at most one
    each) on CUDA and an N-th of the cores; None leaves the batch default."""
    gpus, cpus = options.gpus_per_run, options.cpus_per_run
    if options.jobs > 1:
        if gpus is None and options.config.train.device.startswith("cuda"):
            gpus = min(1.0, max(gpus_total, 1.0) / options.jobs)
        if cpus is None:
            cpus = max(cpus_total, 1.0) / options.jobs
    return gpus, cpus


def _returned(record: dict | None, error: BaseException | None) -> dict:
    if error is not None:
        raise error
    return record
