"""The runs of a batch: prompts read from a file, each at every seed, each in its own folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dreamfusion.errors import UserError
from dreamfusion.training.run_dir import slugify


def read_prompts(path: str | Path) -> list[str]:
    """A JSON list of strings (a .json file), else one prompt a line, blank lines and # comments
    skipped. UserError (one line) when unreadable, empty, or a prompt is listed twice."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the prompts file {path} ({e})") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise UserError(f"prompts file {path} is not valid JSON ({e})") from None
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise UserError(f"prompts file {path} must hold a JSON list of strings")
        prompts = [p.strip() for p in data]
        if not all(prompts):
            raise UserError(f"prompts file {path} holds an empty prompt")
    else:
        lines = (line.strip() for line in text.splitlines())
        prompts = [line for line in lines if line and not line.startswith("#")]
    return check_prompts(prompts, str(path))


def check_prompts(prompts: list[str], source: str = "the prompts") -> list[str]:
    """The prompts, stripped; UserError when there are none or one is listed twice."""
    prompts = [p.strip() if isinstance(p, str) else p for p in prompts]
    if not prompts:
        raise UserError(f"{source} holds no prompt; give one a line (# starts a comment)")
    bad = [p for p in prompts if not isinstance(p, str) or not p]
    if bad:
        raise UserError(f"{source} holds an empty or non-text prompt ({bad[0]!r})")
    seen: set[str] = set()
    for p in prompts:
        if p in seen:
            raise UserError(f"{source} lists {p!r} twice; run it at several seeds with --seeds instead")
        seen.add(p)
    return prompts


@dataclass(frozen=True)
class RunSpec:
    """One prompt at one seed, trained in OUT/<name>."""

    prompt: str
    seed: int
    name: str


def plan_runs(prompts: list[str], seeds: list[int] | tuple[int, ...], out: Path) -> list[RunSpec]:
    """Every prompt at every seed (prompt by prompt), named `<slug>-s<seed>`. UserError when seeds
    are bad, or two prompts would share a folder (their slugs are equal), or a name left `out`."""
    if not seeds or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise UserError(f"--seeds must be non-negative integers (got {list(seeds)})")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds lists a seed twice (got {list(seeds)})")
    owner: dict[str, str] = {}
    for p in prompts:
        slug = slugify(p)
        if slug in owner:
            raise UserError(
                f"prompts {owner[slug]!r} and {p!r} would share the run folder {slug}-s*; reword one"
            )
        owner[slug] = p
    root = out.resolve()
    runs = []
    for p in prompts:
        for seed in seeds:
            spec = RunSpec(p, seed, f"{slugify(p)}-s{seed}")
            folder = (root / spec.name).resolve()
            if folder.parent != root:  # slugs are [a-z0-9-]; this guards any future change to them
                raise UserError(f"run folder {folder} of {p!r} lies outside {root}")
            runs.append(spec)
    return runs
