"""Names that become parts of paths: a benchmark run is OUT/runs/<object>-<color>-s<seed>.

A prompt set read from a user's file is checked whole before anything runs, and every run folder
is built from checked names and confirmed to lie inside --out, so no name can write elsewhere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from dreamfusion.errors import UserError
from dreamfusion.validation import SEED_MAX

if TYPE_CHECKING:
    from dreamfusion.bench.runner import BenchRun, PromptSet

PLAIN = "letters, digits, '-' or '_'"
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""Names that become parts of paths (a run is RUN/runs/<object>-<color>-s<seed>): no separator, no dot."""


def check_prompt_set(prompt_set: PromptSet, path: Path) -> None:
    """UserError unless every name that becomes part of a path is plain, every prompt is text and
    every seed is in range: all checked before the first run starts."""
    if not isinstance(prompt_set.name, str) or not NAME.match(prompt_set.name):
        raise UserError(f"prompt set {path}: its name {prompt_set.name!r} must be {PLAIN}")
    if not prompt_set.prompts:
        raise UserError(f"prompt set {path} has no prompts")
    if not prompt_set.seeds or any(not 0 <= s <= SEED_MAX for s in prompt_set.seeds):
        raise UserError(
            f"prompt set {path}: seeds must be integers in [0, {SEED_MAX}] (got {list(prompt_set.seeds)})"
        )
    for p in prompt_set.prompts:
        for what, value in (("object", p.object), ("color", p.color)):
            if not isinstance(value, str) or not NAME.match(value):
                raise UserError(
                    f"prompt set {path}: the {what} {value!r} must be {PLAIN} (it names the run's folder)"
                )
        if not isinstance(p.text, str) or not p.text.strip():
            raise UserError(f"prompt set {path}: the prompt of {p.object}-{p.color} must be non-empty text")


def run_folder(out: Path, run: BenchRun) -> Path:
    """RUN = OUT/runs/<name>, refused unless it lies inside OUT (names are checked, this is the backstop)."""
    folder = out / "runs" / run.name
    if not re.fullmatch(r"[A-Za-z0-9_-]+", run.name) or not folder.resolve().is_relative_to(out.resolve()):
        raise UserError(f"run name {run.name!r} would leave --out {out}; fix the prompt set")
    return folder
