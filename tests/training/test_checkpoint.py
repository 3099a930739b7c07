"""Checkpoints: round trip, atomic writes, and clear errors for bad files."""

import pytest
import torch

import dreamfusion.atomic
from dreamfusion.atomic import atomic_write
from dreamfusion.training.checkpoint import (
    CheckpointError,
    checkpoint_path,
    flatten_optimizer,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    unflatten_optimizer,
)


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    tensors = {"field.w": torch.randn(3, 4), "rng.cpu": torch.Generator().manual_seed(1).get_state()}
    path = save_checkpoint(
        checkpoint_path(tmp_path, 12), 12, "a mug", {"train": {"steps": 3}}, tensors, {"x": 1}
    )
    ckpt = load_checkpoint(path)
    assert ckpt.step == 12 and ckpt.prompt == "a mug" and ckpt.config == {"train": {"steps": 3}}
    assert ckpt.meta == {"x": 1}
    assert torch.equal(ckpt.section("field")["w"], tensors["field.w"])
    assert torch.equal(ckpt.tensors["rng.cpu"], tensors["rng.cpu"])
    assert list_checkpoints(tmp_path) == [path]


def test_optimizer_state_round_trips():
    p = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.Adam([p], lr=0.1)
    p.sum().backward()
    opt.step()
    tensors, rest = flatten_optimizer(opt.state_dict())
    assert set(tensors) == {"optim.0.step", "optim.0.exp_avg", "optim.0.exp_avg_sq"}
    state = unflatten_optimizer({k[len("optim.") :]: v for k, v in tensors.items()}, rest)
    opt2 = torch.optim.Adam([torch.nn.Parameter(p.detach().clone())], lr=0.1)
    opt2.load_state_dict(state)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


@pytest.mark.parametrize(
    "content", [b"", b"not a checkpoint at all", b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json"]
)
def test_corrupt_file_raises_a_checkpoint_error(tmp_path, content):
    path = tmp_path / "step_0000001.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_foreign_safetensors_file_is_rejected(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a dreamfusion checkpoint"):
        load_checkpoint(path)


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "file.bin"
    target.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_written_files_have_ordinary_permissions_and_no_leftover(tmp_path, monkeypatch):
    # mkstemp creates 0600 files; a checkpoint, config or report must come out as any other file.
    monkeypatch.setattr(dreamfusion.atomic, "_UMASK", 0o022)
    path = checkpoint_path(tmp_path / "checkpoints", 5)
    save_checkpoint(path, 5, "p", {}, {"a": torch.zeros(1)})
    atomic_write(tmp_path / "config.json", lambda tmp: tmp.write_text("{}"))
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints", "config.json", path.name]


def test_prune_keeps_the_newest(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(checkpoint_path(tmp_path, step), step, "p", {}, {"a": torch.zeros(1)})
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step_0000002.safetensors",
        "step_0000003.safetensors",
    ]
