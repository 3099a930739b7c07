"""An export's CPU threads: as many as the cores other processes leave idle."""

import pytest
import torch

from dreamfusion.export import ExportOptions, export_mesh
from dreamfusion.export import threads as T
from dreamfusion.fields import SphereField


def _stat(cores: list[tuple[int, int]]) -> str:
    """A /proc/stat with one line per core from (idle, busy) ticks, plus the lines around them."""
    per_core = [f"cpu{i} {busy} 0 0 {idle} 0 0 0 0 0 0" for i, (idle, busy) in enumerate(cores)]
    return "\n".join(["cpu  9 9 9 9 9 9 9 9 0 0", *per_core, "intr 1 2 3", "ctxt 4"]) + "\n"


def test_idle_cpus_sums_the_idle_share_of_the_cores_this_process_may_use(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    start = _stat([(100, 100), (100, 100), (100, 100)])
    # Over the wait: core 0 sits idle, core 1 half idle, core 2 busy throughout.
    monkeypatch.setattr(
        T.time, "sleep", lambda s: stat.write_text(_stat([(200, 100), (150, 150), (100, 200)]))
    )
    for allowed, idle in (({0, 1, 2}, 1.5), ({1, 2}, 0.5)):
        monkeypatch.setattr(T.os, "sched_getaffinity", lambda pid, allowed=allowed: allowed)
        stat.write_text(start)
        assert T.idle_cpus(path=str(stat)) == pytest.approx(idle)


def test_idle_cpus_is_none_where_the_kernel_does_not_say(tmp_path):
    assert T.idle_cpus(0.0, path=str(tmp_path / "missing")) is None
    (tmp_path / "stat").write_text("intr 1 2 3\n")
    assert T.idle_cpus(0.0, path=str(tmp_path / "stat")) is None


def test_threads_follow_the_idle_cores():
    assert T.threads_for(None, 8) == 8  # unknown: torch's setting
    assert T.threads_for(0.1, 2) == 1  # all busy: one thread still
    assert T.threads_for(1.4, 2) == 1
    assert T.threads_for(1.6, 2) == 2
    assert T.threads_for(30.0, 4) == 4  # never more than torch's setting


def test_export_threads_are_set_for_the_block_and_restored(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(T, "idle_cpus", lambda: 0.2)
    with T.export_threads(torch.device("cpu")) as threads:
        assert threads == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with T.export_threads(torch.device("cpu"), threads=1) as threads:
        assert threads == 1 == torch.get_num_threads()
    with T.export_threads(torch.device("cuda")) as threads:  # a GPU export keeps torch's setting
        assert threads == before
    assert torch.get_num_threads() == before


def test_an_export_reports_its_threads_and_gives_them_back(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(T, "idle_cpus", lambda: 0.0)
    field = SphereField(0.45, (0.8, 0.2, 0.2), 0.8)
    result = export_mesh(field, tmp_path / "ball.ply", ExportOptions(resolution=24))
    assert result.threads == 1 and torch.get_num_threads() == before
