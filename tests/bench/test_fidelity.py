"""The fidelity benchmark: its prompt set, a tiny two-run benchmark end to end, resumption, bad input."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from dreamfusion.bench.runner import BenchRun, Prompt, load_prompt_set, select_runs
from dreamfusion.bench.runs import train_run
from dreamfusion.cli import main
from dreamfusion.errors import UserError
from dreamfusion.weights import PRIOR_PATH
from dreamfusion.world import COLORS, COMPOSITES, OBJECTS, PRIMITIVES, WORLD_VERSION, caption

TINY = [
    "--preset", "smoke", "--guidance", "bundled", "--steps", "2", "--checkpoint-every", "1",
    "--only", "sphere", "--seeds", "0", "--limit", "2",
    "--resolution", "16", "--frame-size", "16", "--no-mesh", "--quiet",
    "--camera.resolution", "12", "--render.samples-per-ray", "12",
    "--train.preview-resolution", "16", "--train.preview-every", "0",
]  # fmt: skip


NUMBERS = (
    "iou", "scaled_iou", "scale", "shift", "initial_iou", "initial_scaled_iou", "identified", "shape_correct",
    "shape_ious", "color_error", "albedo", "nearest_color", "color_correct", "steps", "train_seconds",
    "wall_seconds", "eval_seconds",
)  # fmt: skip
"""Keys every run's record must fill (chamfer is None with --no-mesh; front keys only for fronted objects)."""


def test_prompt_set_covers_every_primitive_in_three_colors_and_every_composite():
    prompt_set = load_prompt_set()
    assert (prompt_set.name, prompt_set.version) == ("fidelity", 2)
    assert len(prompt_set.seeds) >= 2 and len(set(prompt_set.seeds)) == len(prompt_set.seeds)
    colors = {name: set() for name in OBJECTS}
    for p in prompt_set.prompts:
        assert p.color in COLORS
        assert p.text == caption(p.object, p.color)
        colors[p.object].add(p.color)
    assert all(len(colors[name]) >= 3 for name in PRIMITIVES), colors
    assert all(colors[name] for name in COMPOSITES), colors
    assert len({(p.object, p.color) for p in prompt_set.prompts}) == len(prompt_set.prompts)


def test_a_prompt_set_for_another_world_is_refused():
    # fidelity-v1 scored the square house of world 1; its numbers cannot be reproduced on world 2.
    with pytest.raises(UserError, match=f"is for world 1, but this package's world is {WORLD_VERSION}"):
        load_prompt_set("fidelity-v1")
    assert load_prompt_set().version == 2


def test_runs_go_seed_by_seed_and_subsets_select():
    prompt_set = load_prompt_set("fidelity-v2")
    runs = select_runs(prompt_set)
    assert len(runs) == len(prompt_set.prompts) * len(prompt_set.seeds)
    assert [r.seed for r in runs[: len(prompt_set.prompts)]] == [prompt_set.seeds[0]] * len(
        prompt_set.prompts
    )
    some = select_runs(prompt_set, only=("torus", "cube"), seeds=(7, 3), limit=4)
    assert [r.name for r in some] == ["cube-red-s7", "cube-orange-s7", "cube-yellow-s7", "torus-yellow-s7"]
    with pytest.raises(UserError, match="unknown object 'teapot'"):
        select_runs(prompt_set, only=("cube", "teapot"))


def _report(out):
    text = (out / "fidelity.json").read_text()
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in fidelity.json"))


def _tiny_bench(tmp_path):
    """The two-run benchmark on the bundled prior, run once: its folder and report."""
    if not PRIOR_PATH.is_file():
        pytest.skip(f"the bundled prior's weights are not installed ({PRIOR_PATH})")
    out = tmp_path / "bench"
    assert main(["bench", "fidelity", *TINY, "--out", str(out)]) == 0
    return out, _report(out)


def test_two_runs_write_the_report_then_resume_without_training(tmp_path, capsys):
    out, report = _tiny_bench(tmp_path)
    for key in ("command", "commit", "machine", "prompt_set", "summary", "time_to_quality", "runs"):
        assert key in report
    assert report["complete"] and report["runs_done"] == report["runs_total"] == 2
    assert report["prompt_set"] == {"name": "fidelity", "version": 2, "world": WORLD_VERSION, "seeds": [0, 1]}
    assert "--only sphere --seeds 0 --limit 2" in report["command"]
    first, second = report["runs"]
    assert (first["prompt"], second["prompt"]) == ("a green sphere", "a blue sphere")
    for run in report["runs"]:
        assert run["trained_now"] and run["scored_now"] and run["steps"] == 2
        for key in NUMBERS:
            assert run[key] is not None, key
        assert 0.0 <= run["iou"] <= run["scaled_iou"] <= 1.0
        assert run["chamfer"] is None  # --no-mesh
        curve = run["curve"]
        assert [p["step"] for p in curve] == [0, 1, 2]
        seconds = [p["train_seconds"] for p in curve]
        assert seconds == sorted(seconds) and seconds[-1] == run["train_seconds"] > 0
        assert curve[0]["iou"] == run["initial_iou"] and curve[-1]["iou"] == run["iou"]
        assert curve[-1]["support_iou"] == run["support_iou"]
        assert all(0.0 <= p["support_iou"] <= 1.0 for p in curve)
    assert [p["step"] for p in report["time_to_quality"]] == [0, 1, 2]
    targets = report["summary"]["targets"]
    assert len(targets) == 4 and targets[3]["met"] is None  # no fronted composite among these runs
    shapes = sum(r["shape_correct"] for r in report["runs"])  # both runs are spheres: primitives
    assert targets[1]["value"] == f"{shapes}/2" and targets[1]["met"] == (shapes == 2)
    assert report["summary"]["primitives"]["shape_correct"] == shapes

    md = (out / "fidelity.md").read_text()
    assert report["command"] in md
    assert len([line for line in md.splitlines() if line.startswith("| a ") and "sphere | 0 |" in line]) == 2
    sheet = Image.open(out / "contact_sheet.png")
    row = Image.open(out / first["frames"])
    assert row.size == (8 * 16 + 8, 16)
    assert sheet.height == 18 + 2 * 40 and sheet.width > row.width

    # Again: both runs are finished and scored, so nothing is trained or scored again.
    checkpoints = sorted((out / first["run_dir"] / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["step_0000002.safetensors"]  # the curve is kept, not them
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    assert main(["bench", "fidelity", *TINY, "--out", str(out)]) == 0
    again = _report(out)
    assert [(r["trained_now"], r["scored_now"]) for r in again["runs"]] == [(False, False)] * 2
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps
    assert again["runs"][0]["iou"] == first["iou"]

    # Other settings over the same folder: one clear line, nothing trained.
    capsys.readouterr()
    assert main(["bench", "fidelity", *TINY, "--out", str(out), "--render.samples-per-ray", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "render.samples_per_ray" in err[0]


def test_scored_runs_carried_without_their_checkpoints_are_read_back(tmp_path, capsys):
    out, first = _tiny_bench(tmp_path)
    for run in first["runs"]:  # what a results folder carried without its weights looks like
        shutil.rmtree(out / run["run_dir"] / "checkpoints")
    assert main(["bench", "fidelity", *TINY, "--out", str(out)]) == 0
    again = _report(out)
    assert [(r["trained_now"], r["scored_now"]) for r in again["runs"]] == [(False, False)] * 2
    assert [r["iou"] for r in again["runs"]] == [r["iou"] for r in first["runs"]]
    # Scored at another grid, nothing can be scored again: one line, not a retrain.
    capsys.readouterr()
    at = TINY.index("--resolution") + 1
    other = [*TINY[:at], "24", *TINY[at + 1 :]]
    assert main(["bench", "fidelity", *other, "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert "no checkpoint left" in err and not (out / first["runs"][0]["run_dir"] / "checkpoints").exists()


def test_a_run_resumes_where_it_stopped_and_a_finished_one_is_not_trained(tmp_path, tiny):
    run = BenchRun(Prompt("cube", "red", "a red cube"), seed=0)
    run_dir = tmp_path / run.name
    checkpoints = run_dir / "checkpoints"
    assert train_run(run, tiny(steps=1, checkpoint_every=1, keep_checkpoints=0), run_dir)
    step1 = (checkpoints / "step_0000001.safetensors").stat().st_mtime_ns
    two = tiny(steps=2, checkpoint_every=1, keep_checkpoints=0)
    assert train_run(run, two, run_dir)  # cut off after step 1: resumed, step 1 kept
    assert (checkpoints / "step_0000001.safetensors").stat().st_mtime_ns == step1
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "step_0000001.safetensors",
        "step_0000002.safetensors",
    ]
    assert not train_run(run, two, run_dir)  # finished: not trained again
    assert (checkpoints / "step_0000001.safetensors").stat().st_mtime_ns == step1

    for path in checkpoints.iterdir():  # cut off before its first checkpoint: started afresh
        path.unlink()
    assert train_run(run, two, run_dir) and len(list(checkpoints.iterdir())) == 2

    other = dataclasses.replace(two, render=dataclasses.replace(two.render, samples_per_ray=8))
    with pytest.raises(UserError, match="render.samples_per_ray"):
        train_run(run, other, run_dir)
    with pytest.raises(UserError, match="holds a run of 'a red cube'"):
        train_run(BenchRun(Prompt("cube", "blue", "a blue cube"), seed=0), two, run_dir)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--only", "torus", "teapot"], "unknown object 'teapot' in --only"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--seeds", "-1"], "--seeds must be non-negative"),
        (["--resolution", "8"], "--resolution must be between"),
        (["--checkpoint-every", "0"], "--checkpoint-every must be at least 1"),
        (["--prompt-set", "fidelity-v0"], "no prompt set 'fidelity-v0'"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--steps", "0"], "--steps must be positive"),
    ],
)
def test_bad_input_gets_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "bench"
    assert main(["bench", "fidelity", "--out", str(out), "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_runs_in_parallel_processes_give_the_same_report(tmp_path):
    """--jobs 2: the two runs train at once in two Ray workers; the report lists them in the set's
    order, says two ran at once, and the numbers equal a one-at-a-time benchmark's (same seeds)."""
    if not PRIOR_PATH.is_file():
        pytest.skip(f"the bundled prior's weights are not installed ({PRIOR_PATH})")
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert main(["bench", "fidelity", *TINY, "--out", str(serial)]) == 0
    assert main(["bench", "fidelity", *TINY, "--out", str(parallel), "--jobs", "2"]) == 0
    one, two = _report(serial), _report(parallel)
    assert two["jobs"] == 2 and "--jobs 2" in two["command"] and two["complete"]
    assert [r["prompt"] for r in two["runs"]] == [r["prompt"] for r in one["runs"]]
    for a, b in zip(one["runs"], two["runs"], strict=True):
        assert b["trained_now"] and b["iou"] == pytest.approx(a["iou"], abs=1e-6)
        assert b["albedo"] == pytest.approx(a["albedo"], abs=1e-5)
    assert "2 runs trained at once" in (parallel / "fidelity.md").read_text()


def test_jobs_is_an_equal_share_of_the_gpus_or_cores():
    """--jobs N: an N-th of the GPUs a run (at most one) on CUDA, an N-th of the cores; a share
    given outright stays; without --jobs nothing is set and the batch defaults apply."""
    from dreamfusion.bench.runner import BenchOptions, in_parallel, share_of
    from dreamfusion.config import Config

    cuda = dataclasses.replace(Config(), train=dataclasses.replace(Config().train, device="cuda"))
    options = BenchOptions(config=cuda, out=Path("out"), jobs=8)
    assert share_of(options, gpus_total=1, cpus_total=16) == (0.125, 2.0)
    assert share_of(options, gpus_total=4, cpus_total=64) == (0.5, 8.0)
    assert share_of(dataclasses.replace(options, jobs=2), gpus_total=4, cpus_total=64) == (1.0, 32.0)
    assert share_of(dataclasses.replace(options, gpus_per_run=0.25), 1, 16) == (0.25, 2.0)
    cpu = BenchOptions(config=Config(), out=Path("out"), jobs=4)
    assert share_of(cpu, gpus_total=0, cpus_total=2) == (None, 0.5)
    one = BenchOptions(config=Config(), out=Path("out"))
    assert share_of(one, 0, 2) == (None, None) and not in_parallel(one)
    assert in_parallel(dataclasses.replace(one, address="auto")) and in_parallel(cpu)


def _green_fails(monkeypatch, error: Exception):
    """Make scoring the green run raise `error`; returns the real `score_run` to put back."""
    if not PRIOR_PATH.is_file():
        pytest.skip(f"the bundled prior's weights are not installed ({PRIOR_PATH})")
    from dreamfusion.bench import runs as bench

    score_run = bench.score_run

    def broken_for_green(run, options, run_dir):
        if run.prompt.color == "green":
            raise error
        return score_run(run, options, run_dir)

    monkeypatch.setattr(bench, "score_run", broken_for_green)
    return score_run


def test_runs_out_of_gpu_memory_name_the_cure(tmp_path, capsys, monkeypatch):
    """A run that runs out of GPU memory (too many at once) fails alone; the last line says so."""
    _green_fails(monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 256.00 MiB"))
    assert main(["bench", "fidelity", *TINY, "--out", str(tmp_path / "bench")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(1 ran out of GPU memory: run fewer at once with a smaller --jobs)" in err[0]


def test_a_run_that_fails_does_not_stop_the_others(tmp_path, capsys, monkeypatch):
    """A run whose scoring raises is reported in one line; the others are scored and reported; the
    command then exits non-zero with one line, and the same command retries only the failed run."""
    from dreamfusion.bench import runs as bench

    score_run = _green_fails(monkeypatch, RuntimeError("no module named fast_simplification"))
    out = tmp_path / "bench"
    assert main(["bench", "fidelity", *TINY, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert (
        "a green sphere (seed 0): FAILED (RuntimeError: no module named fast_simplification)" in captured.out
    )
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 1 of 2 runs failed (sphere-green-s0")
    report = _report(out)
    assert [r["prompt"] for r in report["runs"]] == ["a blue sphere"] and not report["complete"]

    monkeypatch.setattr(bench, "score_run", score_run)  # the cause fixed: only the failed run is scored
    assert main(["bench", "fidelity", *TINY, "--out", str(out)]) == 0
    runs = _report(out)["runs"]
    assert [(r["prompt"], r["trained_now"], r["scored_now"]) for r in runs] == [
        ("a green sphere", False, True),
        ("a blue sphere", False, False),
    ]


def test_reports_made_in_parts_merge_into_one(tmp_path, capsys):
    """Seed 0 in one folder, seed 1 in another (as on two machines): `bench merge` reports both runs,
    with the seed spread across the parts, each part's command, and the contact sheet of all."""
    if not PRIOR_PATH.is_file():
        pytest.skip(f"the bundled prior's weights are not installed ({PRIOR_PATH})")
    at = TINY.index("--seeds")
    base = TINY[:at] + TINY[at + 4 :]  # without "--seeds 0 --limit 2"
    for seed in (0, 1):
        argv = ["bench", "fidelity", *base, "--seeds", str(seed), "--limit", "1"]
        assert main([*argv, "--out", str(tmp_path / f"s{seed}")]) == 0
    parts = [_report(tmp_path / f"s{seed}") for seed in (0, 1)]
    out = tmp_path / "merged"
    assert main(["bench", "merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(out)]) == 0
    merged = _report(out)
    assert merged["runs_done"] == 2 and [r["seed"] for r in merged["runs"]] == [0, 1]
    assert merged["prompt_set"]["seeds"] == [0, 1]
    assert [p["command"] for p in merged["parts"]] == [p["command"] for p in parts]
    (spread,) = merged["seed_spread"]
    ious = [p["runs"][0]["iou"] for p in parts]
    assert spread["ious"] == ious and spread["iou_range"] == pytest.approx(max(ious) - min(ious))
    assert merged["summary"]["mean_seed_iou_range"] == pytest.approx(max(ious) - min(ious))
    md = (out / "fidelity.md").read_text()
    assert all(p["command"] in md for p in parts)
    assert Image.open(out / "contact_sheet.png").height == 18 + 2 * 40

    # The same part twice, or a folder without a report: one line, exit 2, nothing written.
    capsys.readouterr()
    again = tmp_path / "again"
    assert main(["bench", "merge", str(tmp_path / "s0"), str(tmp_path / "s0"), "--out", str(again)]) == 2
    assert main(["bench", "merge", str(tmp_path / "s0"), str(tmp_path), "--out", str(again)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "seed 0 is in two reports" in err[0] and "fidelity.json" in err[1]
    assert not again.exists()
