"""OUT/batch.json: records kept across batches, finished runs known by their final checkpoint."""

import json

from dreamfusion.batch.manifest import Manifest
from dreamfusion.batch.prompts import plan_runs


def test_records_survive_a_new_batch_and_finished_needs_the_final_checkpoint(tmp_path):
    first = plan_runs(["a red cube", "a blue cube"], [0], tmp_path)
    manifest = Manifest(tmp_path, first)
    assert [r["status"] for r in manifest.records.values()] == ["pending", "pending"]
    manifest.update("a-red-cube-s0", {"status": "done", "steps": 4})
    manifest.update("a-blue-cube-s0", {"status": "failed", "reason": "out of memory"})
    manifest.write()
    saved = json.loads((tmp_path / "batch.json").read_text())
    assert (saved["done"], saved["failed"], saved["pending"]) == (1, 1, 0)
    assert not list(tmp_path.glob(".batch*"))  # written whole: no temporary file left

    # Another batch into the same folder: its runs first, the earlier batch's kept after them.
    second = plan_runs(["a blue cube", "a green cube"], [0], tmp_path)
    again = Manifest(tmp_path, second)
    assert list(again.records) == ["a-blue-cube-s0", "a-green-cube-s0", "a-red-cube-s0"]
    again.update("a-blue-cube-s0", {"status": "done"})
    assert "reason" not in again.records["a-blue-cube-s0"]  # a failure's reason goes once it succeeds

    # Done in the manifest is not enough: the folder must hold the final checkpoint.
    red = plan_runs(["a red cube"], [0], tmp_path)[0]
    assert not again.finished(red, steps=4)
    (tmp_path / red.name / "checkpoints").mkdir(parents=True)
    (tmp_path / red.name / "checkpoints" / "step_0000004.safetensors").touch()
    assert again.finished(red, steps=4) and not again.finished(red, steps=5)
