"""OUT/batch.json: every run of the batch, its status and figures, rewritten whole as runs finish.

A run's record: name (its folder under OUT), prompt, seed, status ("pending", "trained" while
its export waits, "done", or "failed" with a one-line "reason"), node (hostname), steps,
resumed_from (the step it went on from, when it resumed), train_seconds, queued_seconds (from
submission to the task's start), task_seconds, figures (the last line of its metrics.jsonl),
checkpoint, mesh and video (paths relative to OUT), mesh_seconds and video_seconds (and
export_seconds and export_node when the export was a task of its own). Runs of earlier batches
into the same folder that this one does not list are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

from dreamfusion.atomic import atomic_write
from dreamfusion.batch.prompts import RunSpec
from dreamfusion.errors import UserError
from dreamfusion.training.checkpoint import checkpoint_path

MANIFEST = "batch.json"


class Manifest:
    def __init__(self, out: Path, runs: list[RunSpec]):
        self.path = out / MANIFEST
        saved = self._read()
        self.records: dict[str, dict] = {}
        for run in runs:
            old = saved.pop(run.name, None)
            same = old is not None and old.get("prompt") == run.prompt and old.get("seed") == run.seed
            self.records[run.name] = old if same else self.pending(run)
        self.records.update(saved)  # other batches' runs, after this one's

    @staticmethod
    def pending(run: RunSpec) -> dict:
        return {"name": run.name, "prompt": run.prompt, "seed": run.seed, "status": "pending"}

    def _read(self) -> dict[str, dict]:
        if not self.path.is_file():
            return {}
        try:
            runs = json.loads(self.path.read_text())["runs"]
            return {r["name"]: r for r in runs}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"{self.path} is unreadable ({e}); move it away to start the manifest afresh"
            ) from None

    def finished(self, run: RunSpec, steps: int) -> bool:
        """Done, and its folder still holds the final checkpoint of `steps` steps."""
        record = self.records[run.name]
        final = checkpoint_path(self.path.parent / run.name / "checkpoints", steps)
        return record.get("status") == "done" and final.is_file()

    def update(self, name: str, fields: dict) -> None:
        record = self.records[name]
        if fields.get("status") != "failed":
            record.pop("reason", None)
        record.update(fields)

    def counts(self) -> dict[str, int]:
        counts = {"done": 0, "failed": 0, "pending": 0}
        for record in self.records.values():
            status = record.get("status")
            counts[status if status in ("done", "failed") else "pending"] += 1
        return counts

    def write(self) -> None:
        text = json.dumps({**self.counts(), "runs": list(self.records.values())}, indent=1)
        atomic_write(self.path, lambda tmp: tmp.write_text(text + "\n"))
