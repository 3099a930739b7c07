"""A prompt set from a user's file is checked whole before anything runs; no name leaves --out."""

import json

import pytest

from dreamfusion.bench.names import run_folder
from dreamfusion.bench.runner import BenchRun, Prompt, load_prompt_set
from dreamfusion.cli import main
from dreamfusion.errors import UserError
from dreamfusion.world import WORLD_VERSION


def _write_set(path, prompts, seeds=(0,), name="mine"):
    data = {"name": name, "version": 1, "world": WORLD_VERSION, "seeds": list(seeds), "prompts": prompts}
    path.write_text(json.dumps(data))
    return path


GOOD = {"object": "cube", "color": "red", "prompt": "a red cube"}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({**GOOD, "color": "/../../../../escaped"}, "the color '/../../../../escaped' must be letters"),
        ({**GOOD, "color": ".."}, "the color '..' must be letters"),
        ({**GOOD, "object": "/../../../../escaped"}, "the object '/../../../../escaped' must be letters"),
        ({**GOOD, "object": ["cube"]}, "the object ['cube'] must be letters"),
        ({**GOOD, "prompt": "  "}, "must be non-empty text"),
    ],
)
def test_a_bad_name_anywhere_in_the_set_stops_the_benchmark_before_any_run(tmp_path, capsys, bad, message):
    """The bad prompt comes last: the good one before it must not have been trained."""
    work = tmp_path / "work"
    work.mkdir()
    prompt_set = _write_set(tmp_path / "set.json", [GOOD, bad])
    out = work / "bench"
    argv = ["bench", "fidelity", "--prompt-set", str(prompt_set), "--out", str(out), "--preset", "smoke"]
    assert main([*argv, "--device", "cpu", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists() and list(work.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.json", "work"]


@pytest.mark.parametrize("field, value", [("name", "../x"), ("seeds", [-1]), ("seeds", [2**64])])
def test_the_sets_own_name_and_seeds_are_checked(tmp_path, field, value):
    kwargs = {"name": "mine", "seeds": (0,), field: value}
    path = _write_set(tmp_path / "set.json", [GOOD], **kwargs)
    with pytest.raises(UserError, match="prompt set"):
        load_prompt_set(str(path))


def test_run_folders_lie_inside_out(tmp_path):
    assert (
        run_folder(tmp_path, BenchRun(Prompt("cube", "red", "a red cube"), 3))
        == tmp_path / "runs" / "cube-red-s3"
    )
    with pytest.raises(UserError, match="would leave --out"):
        run_folder(tmp_path, BenchRun(Prompt("cube", "/../../x", "a red cube"), 3))
