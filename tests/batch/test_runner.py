"""`dreamfusion batch` end to end on a local Ray of two CPUs: ordinary run folders, the manifest,
nothing retrained on a second call, a killed worker's run resumed bit-identically, a run that
fails on its own reported alone, and the one-after-another path without Ray."""

import json
import os
import signal
import sys
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from dreamfusion.batch.runner import batch_config, generate_many
from dreamfusion.cli import main
from dreamfusion.weights import PRIOR_PATH

TINY = [
    "--preset", "smoke", "--guidance", "bundled", "--steps", "2", "--quiet",
    "--camera.resolution", "12", "--render.samples-per-ray", "12",
    "--train.preview-resolution", "16", "--train.preview-every", "0", "--train.checkpoint-every", "1",
]  # fmt: skip
OVERRIDES = {
    "camera.resolution": 12,
    "render.samples_per_ray": 12,
    "train.preview_resolution": 16,
    "train.preview_every": 0,
    "train.checkpoint_every": 1,
}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (a batch uses a Ray already started in its process as it is)."""
    ray = pytest.importorskip("ray")
    if not PRIOR_PATH.is_file():
        pytest.skip(f"the bundled prior's weights are not installed ({PRIOR_PATH})")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20)
    yield ray
    ray.shutdown()


def _manifest(out):
    return {r["name"]: r for r in json.loads((out / "batch.json").read_text())["runs"]}


def test_a_batch_makes_a_run_folder_each_reports_a_failure_and_does_nothing_twice(
    local_ray, tmp_path, capsys
):
    prompts = tmp_path / "prompts.txt"
    # Three runs, one of which the bundled prior cannot read.
    prompts.write_text("# the studio's list\na red cube\n\na blue sphere\na purple teapot\n")
    out = tmp_path / "batch"
    argv = ["batch", str(prompts), "--out", str(out), *TINY, "--export-task", "--no-video"]
    assert main(argv) == 2  # one run failed: the last line says so
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: batch: 2 of 3 runs done") and "1 failed" in err[-1]

    runs = _manifest(out)
    assert list(runs) == ["a-red-cube-s0", "a-blue-sphere-s0", "a-purple-teapot-s0"]
    teapot = runs.pop("a-purple-teapot-s0")
    assert teapot["status"] == "failed" and "teapot" in teapot["reason"] and "\n" not in teapot["reason"]
    assert not (out / "a-purple-teapot-s0").exists()  # refused before its folder was touched
    for name, run in runs.items():
        folder = out / name
        assert run["status"] == "done" and run["steps"] == 2 and run["resumed_from"] is None
        assert run["node"] and run["train_seconds"] > 0 and run["export_node"]  # its own export task
        assert run["figures"] == json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
        assert run["figures"]["step"] == 2
        assert run["mesh"] == f"{name}/mesh.glb" and (folder / "mesh.glb").stat().st_size > 0
        assert json.loads((folder / "config.json").read_text())["config"]["train"]["seed"] == 0
        assert (folder / "checkpoints" / "step_0000002.safetensors").is_file()
        assert (folder / "previews" / "final.png").is_file()

    # Again: the finished runs are not trained again (their checkpoints are untouched).
    checkpoints = sorted(out.glob("*/checkpoints/*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    assert main(argv) == 2
    assert "2 of 3 runs already done" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps
    assert {k: v for k, v in _manifest(out).items() if k != "a-purple-teapot-s0"} == runs


def test_a_killed_worker_is_retried_and_its_run_resumes_bit_identically(local_ray, tmp_path):
    out, steps = tmp_path / "batch", 12
    kwargs = dict(preset="smoke", guidance="bundled", steps=steps, overrides=OVERRIDES)
    results: list = []
    batch = threading.Thread(
        target=lambda: results.append(
            generate_many(
                ["a green cube"], out=out, export_mesh=False, turntable=False, progress=False, **kwargs
            )
        )
    )
    batch.start()
    checkpoints, pid_file = out / "a-green-cube-s0" / "checkpoints", out / ".batch" / "a-green-cube-s0.pid"
    deadline = time.monotonic() + 60
    while not (list(checkpoints.glob("step_*.safetensors")) and pid_file.is_file()):
        assert time.monotonic() < deadline and batch.is_alive(), "the run never saved a checkpoint"
        time.sleep(0.005)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    batch.join(timeout=120)
    (record,) = results[0]
    assert record["status"] == "done" and record["steps"] == steps
    assert 1 <= record["resumed_from"] < steps  # the retry went on from a checkpoint, not step 0

    # The same run uninterrupted, here in one thread as a Ray task has: the same tensors, bit for bit.
    import dreamfusion

    cfg = batch_config(**kwargs, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = dreamfusion.generate("a green cube", config=cfg, out=tmp_path / "ref", export_mesh=False,
                                         turntable=False, progress=False)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    final = load_file(checkpoints / f"step_{steps:07d}.safetensors")
    expected = load_file(reference.checkpoint)
    assert final.keys() == expected.keys()
    for key in expected:
        assert torch.equal(final[key], expected[key]), key


def test_without_ray_the_runs_go_one_after_another_and_say_how_to_get_more(tmp_path, capsys, monkeypatch):
    if not PRIOR_PATH.is_file():
        pytest.skip(f"the bundled prior's weights are not installed ({PRIOR_PATH})")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["a red cube"]))
    out = tmp_path / "batch"
    assert main(["batch", str(prompts), "--out", str(out), *TINY, "--seeds", "0", "1", "--no-video"]) == 0
    printed = capsys.readouterr().out
    assert 'pip install "dreamfusion[cluster]"' in printed and "2 of 2 runs done" in printed
    runs = _manifest(out)
    assert [(r["seed"], r["status"]) for r in runs.values()] == [(0, "done"), (1, "done")]
    assert all((out / name / "mesh.glb").is_file() for name in runs)  # exported in the run's own task
    zero, one = (load_file(out / n / "checkpoints" / "step_0000002.safetensors") for n in runs)
    field = [k for k in zero if k.startswith("field.")]
    assert field and not all(torch.equal(zero[k], one[k]) for k in field)  # each run took its own seed
    with pytest.raises(Exception, match="needs Ray"):
        generate_many(["a red cube"], out=out, address="auto", preset="smoke")


def test_batch_can_take_each_turntable_from_the_mesh(tmp_path, capsys, monkeypatch):
    if not PRIOR_PATH.is_file():
        pytest.skip(f"the bundled prior's weights are not installed ({PRIOR_PATH})")
    monkeypatch.setitem(sys.modules, "ray", None)  # one after another, in this process
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["a red cube"]))
    out = tmp_path / "batch"
    with pytest.raises(Exception, match="--turntable-from must be one of field, mesh"):
        generate_many(["a red cube"], out=out, preset="smoke", turntable_from="nerf", parallel=False)
    assert not out.exists()
    assert main(["batch", str(prompts), "--out", str(out), *TINY, "--turntable-from", "mesh"]) == 0
    (record,) = _manifest(out).values()
    assert record["status"] == "done" and record["mesh"] and record["video"]
    assert (out / record["video"]).stat().st_size > 0 and record["video_seconds"] > 0
