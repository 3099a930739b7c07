"""Each run's share of the cluster, and the line printed when runs share a GPU without MPS."""

import pytest

from dreamfusion.batch.resources import Resources, mps_running, run_resources, sharing_hint
from dreamfusion.errors import UserError


def test_defaults_one_gpu_a_run_on_cuda_else_one_core():
    assert run_resources("cuda", None, None, gpus_total=8, cpus_total=64) == Resources(1.0, 1.0)
    assert run_resources("cpu", None, None, gpus_total=8, cpus_total=64) == Resources(0.0, 1.0)
    assert run_resources("cuda", 0.125, 2, gpus_total=1, cpus_total=16) == Resources(0.125, 2.0)
    assert Resources(0.5, 0.5).threads == 1 and Resources(0, 3.7).threads == 3


@pytest.mark.parametrize(
    "device, gpus, cpus, message",
    [
        ("cuda:1", None, None, "names one GPU"),
        ("cuda", 0, None, "needs a GPU for each run"),
        ("cuda", 1.5, None, "a fraction up to 1 or a whole number"),
        ("cuda", 2, None, "asks for 2 GPU(s) but the cluster has 1 GPU(s)"),
        ("cpu", None, 0, "--cpus-per-run must be positive"),
        ("cpu", None, 64, "asks for 64 CPU cores but the cluster has 16"),
    ],
)
def test_requests_the_cluster_cannot_meet_get_one_line(device, gpus, cpus, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_resources(device, gpus, cpus, gpus_total=1, cpus_total=16)
    with pytest.raises(UserError, match="the cluster has no GPU; use --device cpu"):
        run_resources("cuda", None, None, gpus_total=0, cpus_total=16)


def test_runs_sharing_a_gpu_without_mps_get_one_line_naming_it(tmp_path, monkeypatch):
    """Several runs a GPU and no MPS daemon: one line says how to let them run side by side. Not
    when MPS is up, nor with a GPU (or more) each, nor on the CPU."""
    hint = sharing_hint(0.125, mps=False)
    assert hint is not None and "up to 8 runs" in hint and "nvidia-cuda-mps-control -d" in hint
    assert "\n" not in hint
    assert sharing_hint(0.125, mps=True) is None
    assert sharing_hint(1.0, mps=False) is None and sharing_hint(2.0, mps=False) is None
    assert sharing_hint(0.0, mps=False) is None
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert not mps_running()
    (tmp_path / "control").touch()  # the daemon's pipe
    assert mps_running()
