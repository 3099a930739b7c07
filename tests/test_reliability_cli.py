"""Whatever a user types: one `error:` line, a non-zero exit, nothing written outside --out and
nothing lost inside it."""

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dreamfusion.cli import main
from tests.test_cli import FAST, _error_line, _tree
from tests.training.test_checkpoint import damage


def _generate(out: Path, *flags: str, prompt: str = "a red sphere") -> list[str]:
    return ["generate", prompt, *FAST, "--steps", "2", "--no-mesh", "--no-video", "--out", str(out), *flags]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--sds.guidance-scale", "nan"], "sds.guidance_scale must be a finite number (got nan)"),
        (["--sds.guidance-scale", "inf"], "sds.guidance_scale must be a finite number (got inf)"),
        (["--optim.lr", "nan"], "optim.lr must be a finite number"),
        (["--regularizers.opacity-weight", "-inf"], "regularizers.opacity_weight must be a finite number"),
        (["--camera.elevation-range", "nan", "90"], "camera.elevation_range must be a finite number"),
        (["--train.checkpoint-every", "0"], "train.checkpoint_every must be positive"),
        (["--train.log-every", "0"], "train.log_every must be positive"),
        (["--seed", str(2**70)], "train.seed must lie in [0, 9223372036854775807]"),
        (["--seed", "-1"], "train.seed must lie in [0, 9223372036854775807] (got -1)"),
        (["--shading.shaded-probability", "1.5"], "shading.shaded_probability must lie in [0, 1]"),
    ],
)
def test_bad_numbers_are_refused_before_training(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(_generate(out, *flags)) == 2
    assert message in _error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("light", ["camera:nan,inf", "world:30,nan", "world:30,30,inf"])
def test_render_light_must_be_finite(tmp_path, capsys, light):
    assert main(["render", str(tmp_path / "run"), "--light", light]) == 2
    assert "--light angles and distance must be finite" in _error_line(capsys)
    assert not any(tmp_path.iterdir())


def test_out_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("keep me")
    assert main(_generate(tmp_path / "file" / "run")) == 2
    assert "file is a file" in _error_line(capsys)
    assert (tmp_path / "file").read_text() == "keep me"


def test_out_in_a_read_only_folder(tmp_path, capsys):
    """Folder permissions do not stop root: as root the folder is made immutable (chattr +i) instead."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode:
            pytest.skip("running as root where chattr +i is unavailable")
        unlock = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        unlock = ["chmod", "755", str(folder)]
    try:
        assert main(_generate(folder / "run")) == 2
        assert f"cannot write in {folder}" in _error_line(capsys)
        assert list(folder.iterdir()) == []
    finally:
        subprocess.run(unlock, check=True)


def test_a_full_disk_at_the_first_checkpoint_then_a_clean_restart(tmp_path, capsys, monkeypatch):
    import dreamfusion.training.checkpoint as checkpoint

    real = checkpoint.save_file

    def full(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "save_file", full)
    assert main(_generate(out, "--train.checkpoint-every", "1")) == 2
    line = _error_line(capsys)
    assert "the disk is full; no checkpoint was saved" in line
    assert list((out / "checkpoints").glob("*")) == []  # no half-written file
    monkeypatch.setattr(checkpoint, "save_file", real)
    assert main(_generate(out, "--train.checkpoint-every", "1")) == 0  # the failed start restarts in place
    assert (out / "checkpoints" / "step_0000002.safetensors").is_file()


def test_a_disk_filling_mid_run_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    import dreamfusion.training.checkpoint as checkpoint

    real, saves = checkpoint.save_file, []

    def fills(tensors, filename, metadata=None):
        saves.append(filename)
        if len(saves) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        real(tensors, filename, metadata=metadata)

    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "save_file", fills)
    assert main(_generate(out, "--train.checkpoint-every", "1")) == 2
    assert "the last complete checkpoint is" in _error_line(capsys)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_0000001.safetensors"]
    monkeypatch.setattr(checkpoint, "save_file", real)
    assert main(_generate(out, "--train.checkpoint-every", "1", "--resume")) == 0
    assert "from step 1" in capsys.readouterr().out


def test_a_disk_error_outside_checkpoints_is_one_line(tmp_path, capsys, monkeypatch):
    """Previews and metrics go through the same atomic writer: a refused write there is one line too."""
    import dreamfusion.training.run_dir as run_dir

    def refused(path, write):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    out = tmp_path / "run"
    monkeypatch.setattr(run_dir, "atomic_write", refused)
    assert main(_generate(out)) == 1
    assert "Read-only file system" in _error_line(capsys)


def test_resume_past_a_damaged_newest_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    # keep-checkpoints 0: a finished run keeps its older checkpoints too, so one can be damaged
    assert main(_generate(out, "--train.checkpoint-every", "1", "--train.keep-checkpoints", "0")) == 0
    damage(out / "checkpoints" / "step_0000002.safetensors")
    capsys.readouterr()
    assert main([*_generate(out, "--resume"), "--steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "skipping step_0000002.safetensors" in printed and "from step 1" in printed


@pytest.mark.parametrize("command", ["export", "render", "view"])
def test_assets_refuse_a_damaged_checkpoint(tmp_path, capsys, command):
    out = tmp_path / "run"
    # keep-checkpoints 0: a finished run keeps its older checkpoints too, so one can be damaged
    assert main(_generate(out, "--train.checkpoint-every", "1", "--train.keep-checkpoints", "0")) == 0
    damage(out / "checkpoints" / "step_0000002.safetensors")
    capsys.readouterr()
    before = _tree(out)
    assert main([command, str(out)]) == 2
    line = _error_line(capsys)
    assert "do not match their checksum" in line
    assert f"to use the newest good one, pass {out / 'checkpoints' / 'step_0000001.safetensors'}" in line
    assert _tree(out) == before


def test_a_folder_of_other_files(tmp_path, capsys):
    out = tmp_path / "x"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(_generate(out)) == 2
    assert f"{out} is not empty and holds no run (1 entry, e.g. notes.txt)" in _error_line(capsys)
    assert _tree(out) == {"notes.txt": b"mine"}


def test_resume_with_config_json_deleted(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_generate(out)) == 0
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").unlink()
    assert main([*_generate(out, "--resume"), "--steps", "3"]) == 0
    assert json.loads((out / "config.json").read_text())["prompt"] == saved["prompt"]
    assert "step_0000003.safetensors" in capsys.readouterr().out


def test_a_prompt_without_a_readable_word(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*_generate(out, prompt="\U0001f7e5\U0001f7e5"), "--guidance", "bundled"]) == 2
    assert "holds no word the bundled prior can read" in _error_line(capsys)
    assert not out.exists()
