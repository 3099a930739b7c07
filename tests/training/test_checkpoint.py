"""Checkpoints: round trip, atomic writes, lean (half-precision) checkpoints, and clear errors for
bad files."""

import json

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
    narrow,
    prune_checkpoints,
    save_checkpoint,
    unflatten_optimizer,
    widen,
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


def damage(path, length: int = 4096) -> None:
    """Overwrite `length` bytes in the middle of a safetensors file's tensor data (its header intact)."""
    data = bytearray(path.read_bytes())
    body = 8 + int.from_bytes(data[:8], "little")
    start = max(body, len(data) // 2 - length // 2)
    end = min(len(data), start + length)
    data[start:end] = bytes(b ^ 0xFF for b in data[start:end])  # every byte changes
    path.write_bytes(bytes(data))


def test_damaged_tensor_bytes_are_caught_by_the_checksum(tmp_path):
    """safetensors reads flipped tensor bytes back without complaint; the checksum does not."""
    from safetensors import safe_open

    tensors = {"field.w": torch.randn(64, 64), "field.b": torch.randn(64), "rng.cpu": torch.zeros(8)}
    path = save_checkpoint(checkpoint_path(tmp_path, 3), 3, "a mug", {}, tensors)
    load_checkpoint(path)
    damage(path)
    with safe_open(str(path), framework="pt") as f:  # the file still parses
        assert not torch.equal(f.get_tensor("field.w"), tensors["field.w"])
    with pytest.raises(CheckpointError, match="corrupt: its tensors do not match their checksum"):
        load_checkpoint(path)


def test_a_checkpoint_without_a_checksum_still_loads(tmp_path):
    """Checkpoints written before the checksum existed load as they did (unverified)."""
    import json

    from safetensors.torch import save_file

    path = checkpoint_path(tmp_path, 2)
    metadata = {"format": "dreamfusion-checkpoint-v1", "step": "2", "prompt": "a mug", "config": "{}"}
    save_file({"field.w": torch.ones(3)}, str(path), metadata={**metadata, "meta": json.dumps({})})
    ckpt = load_checkpoint(path)
    assert ckpt.step == 2 and torch.equal(ckpt.section("field")["w"], torch.ones(3))


def test_newest_good_checkpoint_passes_over_damaged_ones(tmp_path):
    from dreamfusion.training.checkpoint import newest_good_checkpoint

    for step in (1, 2, 3):
        save_checkpoint(checkpoint_path(tmp_path, step), step, "p", {}, {"a": torch.randn(4096)})
    damage(checkpoint_path(tmp_path, 3))
    checkpoint_path(tmp_path, 2).write_bytes(b"cut short")
    path, ckpt, passed = newest_good_checkpoint(tmp_path)
    assert path == checkpoint_path(tmp_path, 1) and ckpt.step == 1
    assert [p.name for p, _ in passed] == ["step_0000003.safetensors", "step_0000002.safetensors"]
    damage(checkpoint_path(tmp_path, 1))
    with pytest.raises(CheckpointError, match="step_0000003"):  # none good: the newest one's error
        newest_good_checkpoint(tmp_path)


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import errno

    import dreamfusion.training.checkpoint as checkpoint
    from dreamfusion.errors import UserError

    first = save_checkpoint(checkpoint_path(tmp_path, 1), 1, "p", {}, {"a": torch.ones(4)})

    def full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(UserError, match="the disk is full; the last complete checkpoint is .*step_0000001"):
        save_checkpoint(checkpoint_path(tmp_path, 2), 2, "p", {}, {"a": torch.zeros(4)})
    assert list_checkpoints(tmp_path) == [first] and [p.name for p in tmp_path.iterdir()] == [first.name]
    assert torch.equal(load_checkpoint(first).tensors["a"], torch.ones(4))


def _stored(path):
    """The tensors and metadata of a checkpoint as they lie in the file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _lean_tensors():
    gen = torch.Generator().manual_seed(0)
    return {
        # A hash table as initialized: partly below float16's smallest normal number, 6.1e-5.
        "field.table": (torch.rand(1000, 2, generator=gen) - 0.5) * 2e-4,
        "field.weight": torch.randn(16, 8, generator=gen),
        # The occupancy grid's densities under the exp activation can pass float16's 65504.
        "occupancy.density": torch.tensor([0.0, 0.01, 1.5, 7e4, 1e9]),
        "occupancy.mask": torch.rand(5, 5, 5, generator=gen) > 0.5,  # 125 bits: not whole bytes
        "rng.cpu": torch.Generator().manual_seed(1).get_state(),
    }


def test_a_lean_checkpoint_stores_half_precision_and_bits_and_reads_back_in_full(tmp_path):
    tensors = _lean_tensors()
    path = save_checkpoint(checkpoint_path(tmp_path, 5), 5, "a mug", {}, tensors, lean=True)
    stored, metadata = _stored(path)
    assert {k: v.dtype for k, v in stored.items()} == {
        "field.table": torch.float16,
        "field.weight": torch.float16,
        "occupancy.density": torch.bfloat16,
        "occupancy.mask": torch.uint8,
        "rng.cpu": torch.uint8,
    }
    assert stored["occupancy.mask"].shape == (16,)
    record = json.loads(metadata["stored_as"])
    assert record["field.table"] == {"dtype": "float32", "stored": "float16"}
    assert record["occupancy.mask"] == {"dtype": "bool", "stored": "bits", "shape": [5, 5, 5]}
    assert "rng.cpu" not in record

    ckpt = load_checkpoint(path)
    assert ckpt.stored_as == record
    assert {k: v.dtype for k, v in ckpt.tensors.items()} == {k: v.dtype for k, v in tensors.items()}
    table = ckpt.tensors["field.table"]
    assert torch.equal(table, tensors["field.table"].half().float())
    # Below 6.1e-5 float16 keeps a fixed step of 6e-8, a thousandth of the initial values' scale.
    assert (table - tensors["field.table"]).abs().max() <= 2**-25
    density = ckpt.tensors["occupancy.density"]
    assert torch.isfinite(density).all()
    assert torch.allclose(density, tensors["occupancy.density"], rtol=2**-8, atol=0)
    assert torch.equal(ckpt.tensors["occupancy.mask"], tensors["occupancy.mask"])
    assert torch.equal(ckpt.tensors["rng.cpu"], tensors["rng.cpu"])


def test_narrow_then_widen_is_what_loading_a_lean_checkpoint_gives(tmp_path):
    tensors = _lean_tensors()
    path = save_checkpoint(checkpoint_path(tmp_path, 1), 1, "p", {}, tensors, lean=True)
    loaded, expected = load_checkpoint(path).tensors, widen(*narrow(tensors))
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_a_lean_checkpoint_is_about_half_a_full_one(tmp_path):
    tensors = {"field.table": torch.randn(2**16, 2), "field.mlp": torch.randn(64, 64)}
    full = save_checkpoint(tmp_path / "full.safetensors", 1, "p", {}, tensors)
    lean = save_checkpoint(tmp_path / "lean.safetensors", 1, "p", {}, tensors, lean=True)
    assert 0.49 < lean.stat().st_size / full.stat().st_size < 0.51


def test_a_damaged_lean_checkpoint_is_caught_by_the_checksum(tmp_path):
    tensors = {"field.w": torch.randn(64, 64), "occupancy.mask": torch.rand(64, 64) > 0.5}
    path = save_checkpoint(checkpoint_path(tmp_path, 3), 3, "a mug", {}, tensors, lean=True)
    load_checkpoint(path)
    damage(path)
    with pytest.raises(CheckpointError, match="corrupt: its tensors do not match their checksum"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "record",
    [
        {"field.w": {"dtype": "float32", "stored": "bfloat16"}},  # not the dtype in the file
        {"field.w": {"dtype": "int7", "stored": "float16"}},
        {"field.gone": {"dtype": "float32", "stored": "float16"}},
        {"occupancy.mask": {"dtype": "bool", "stored": "bits", "shape": [9, 9]}},
        ["field.w"],
    ],
)
def test_a_stored_as_record_that_does_not_fit_its_tensors_is_one_line(tmp_path, record):
    from safetensors.torch import save_file

    tensors = {"field.w": torch.randn(4, 4), "occupancy.mask": torch.rand(4, 4) > 0.5}
    path = save_checkpoint(checkpoint_path(tmp_path, 3), 3, "a mug", {}, tensors, lean=True)
    stored, metadata = _stored(path)
    save_file(stored, str(path), metadata={**metadata, "stored_as": json.dumps(record)})
    with pytest.raises(CheckpointError, match="damaged metadata"):
        load_checkpoint(path)
