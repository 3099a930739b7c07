"""Reading a prompts file and naming its runs."""

import json
from pathlib import Path

import pytest

from dreamfusion.batch.prompts import RunSpec, plan_runs, read_prompts
from dreamfusion.errors import UserError


def test_a_text_file_skips_blank_lines_and_comments(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# studio list\na red cube\n\n   a blue sphere  \n#a green torus\n")
    assert read_prompts(path) == ["a red cube", "a blue sphere"]


def test_a_json_list_is_read_and_anything_else_refused(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(["a red cube", "a blue sphere"]))
    assert read_prompts(path) == ["a red cube", "a blue sphere"]
    for bad, message in [
        ('{"a": 1}', "JSON list of strings"),
        ("[1, 2]", "JSON list of strings"),
        ("[", "not valid JSON"),
        ('["a cube", " "]', "empty prompt"),
        ("[]", "holds no prompt"),
    ]:
        path.write_text(bad)
        with pytest.raises(UserError, match=message):
            read_prompts(path)


def test_empty_missing_and_repeated_prompts_get_one_line(tmp_path):
    with pytest.raises(UserError, match="cannot read the prompts file"):
        read_prompts(tmp_path / "missing.txt")
    path = tmp_path / "prompts.txt"
    path.write_text("# nothing\n\n")
    with pytest.raises(UserError, match="holds no prompt"):
        read_prompts(path)
    path.write_text("a red cube\na blue cube\na red cube\n")
    with pytest.raises(UserError, match="lists 'a red cube' twice; .* --seeds"):
        read_prompts(path)


def test_every_prompt_at_every_seed_gets_its_own_folder_under_out(tmp_path):
    runs = plan_runs(["a red cube", "A Blue sphere!"], [0, 3], tmp_path)
    assert runs == [
        RunSpec("a red cube", 0, "a-red-cube-s0"),
        RunSpec("a red cube", 3, "a-red-cube-s3"),
        RunSpec("A Blue sphere!", 0, "a-blue-sphere-s0"),
        RunSpec("A Blue sphere!", 3, "a-blue-sphere-s3"),
    ]
    assert all((tmp_path / r.name).resolve().parent == tmp_path.resolve() for r in runs)
    # Nothing in a prompt can name a folder outside OUT.
    (escape,) = plan_runs(["../../etc/passwd"], [0], tmp_path)
    assert "/" not in escape.name and not escape.name.startswith(".")


def test_prompts_that_would_share_a_folder_and_bad_seeds_are_refused():
    with pytest.raises(UserError, match="'a red cube' and 'A red cube!' would share the run folder"):
        plan_runs(["a red cube", "A red cube!"], [0], Path("out"))
    with pytest.raises(UserError, match="non-negative"):
        plan_runs(["a red cube"], [-1], Path("out"))
    with pytest.raises(UserError, match="twice"):
        plan_runs(["a red cube"], [1, 1], Path("out"))
