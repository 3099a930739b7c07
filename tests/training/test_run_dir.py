"""The run folder: resume falls back past damaged checkpoints, failed starts restart in place."""

import dataclasses
import json

import pytest
import torch

from dreamfusion.errors import UserError
from dreamfusion.training.run_dir import RunDir
from dreamfusion.training.trainer import Trainer
from tests.conftest import tiny_config
from tests.training.test_checkpoint import damage
from tests.training.test_trainer import _backend, _state


def test_resume_past_a_damaged_checkpoint_equals_uninterrupted_to_the_bit(tmp_path, capsys):
    cfg = tiny_config(steps=8, checkpoint_every=2, keep_checkpoints=3)
    cfg = dataclasses.replace(cfg, shading=dataclasses.replace(cfg.shading, albedo_warmup_steps=3))
    straight = Trainer("a red sphere", cfg, tmp_path / "a", _backend(cfg))
    straight.train()

    first = Trainer("a red sphere", cfg, tmp_path / "b", _backend(cfg))
    for _ in range(6):
        first.train_step()
        if first.step % 2 == 0:
            first.save()
    del first
    checkpoints = tmp_path / "b" / "checkpoints"
    damage(checkpoints / "step_0000006.safetensors")
    capsys.readouterr()
    resumed = Trainer("a red sphere", cfg, tmp_path / "b", _backend(cfg), resume=True)
    out = capsys.readouterr().out
    assert "skipping step_0000006.safetensors" in out and "from step 4 (step_0000004.safetensors)" in out
    assert resumed.step == 4
    assert (checkpoints / "step_0000006.safetensors.damaged").is_file()  # out of pruning's way
    resumed.train()

    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_without_config_json_rebuilds_it_from_the_checkpoint(tmp_path, capsys):
    cfg = tiny_config(steps=4, checkpoint_every=2)
    run = tmp_path / "run"
    Trainer("a red sphere", cfg, run, _backend(cfg)).train()
    record = json.loads((run / "config.json").read_text())
    (run / "config.json").unlink()
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=6))
    resumed = Trainer("a red sphere", longer, run, _backend(longer), resume=True)
    assert resumed.step == 4 and "using the checkpoint's own config" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["config"]["field"] == record["config"]["field"]
    changed = dataclasses.replace(longer, field=dataclasses.replace(longer.field, hash_levels=2))
    (run / "config.json").unlink()
    with pytest.raises(UserError, match="field.hash_levels"):  # compared with the checkpoint's config
        Trainer("a red sphere", changed, run, _backend(changed), resume=True)


@pytest.mark.parametrize("resume", [False, True])
def test_a_failed_start_restarts_in_place(tmp_path, capsys, resume):
    """A folder left with config.json (and a metrics line) but no checkpoint starts again from step 0."""
    cfg = tiny_config(steps=2)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"prompt": "a blue cube", "config": {}}))
    (run / "metrics.jsonl").write_text('{"step": 10, "loss": 1.0}\n')
    trainer = Trainer("a red sphere", cfg, run, _backend(cfg), resume=resume)
    assert trainer.step == 0
    assert ("starting from step 0" in capsys.readouterr().out) == resume
    trainer.train()
    assert json.loads((run / "config.json").read_text())["prompt"] == "a red sphere"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps and max(steps) <= 2  # the failed start's lines are gone


def test_a_folder_of_other_files_is_named_not_called_a_run(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    for name in ("notes.txt", "a.png", "b.png"):
        (folder / name).write_text("mine")
    with pytest.raises(UserError, match=r"is not empty and holds no run \(3 entries, e\.g\. a\.png\)"):
        RunDir(folder).prepare("a mug", {}, resume=False)
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "b.png", "notes.txt"]


def test_no_room_for_a_few_checkpoints_is_refused_before_training(tmp_path, monkeypatch):
    import shutil

    cfg = tiny_config(steps=2)
    free = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free._replace(free=100_000))
    with pytest.raises(UserError, match=r"only 0 MiB free under .*needs about \d+ MiB for 3 checkpoints"):
        Trainer("a red sphere", cfg, tmp_path / "run", _backend(cfg))
    assert not (tmp_path / "run").exists()
