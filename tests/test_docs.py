"""The figures in README.md and docs/results.md are the ones in the JSON the benchmarks wrote.

Each check formats a value read from docs/results/*.json the way the documents print it and
requires that text in both documents, so a figure cannot drift from its source.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _json(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _docs() -> dict[str, str]:
    return {name: (ROOT / name).read_text() for name in ("README.md", "docs/results.md")}


def _speed_row(what: str) -> list[float]:
    rows = [r for r in _json("speed.json")["rows"] if r["what"].startswith(what)]
    assert len(rows) == 1, f"one speed row starts with {what!r}"
    return rows[0]["seconds_per_iteration"]


def _fidelity_figures() -> list[str]:
    report = _json("fidelity_v2.json")
    s = report["summary"]
    assert report["complete"] and s["runs"] == report["runs_total"]
    return [
        f"{s['primitives']['mean_iou']:.3f}",
        f"{s['primitives']['shape_correct']}/{s['primitives']['runs']}",
        f"{s['color_nearest']}/{s['runs']}",
        f"{s['front_right']}/{s['fronted_runs']}",
    ]


def _speed_figures() -> list[str]:
    figures = []
    for what in ("default preset, bundled prior", "default preset, SD-2.1", "default preset, IF-I-XL"):
        seconds = _speed_row(what)
        figures.append(f"{sum(seconds) / len(seconds):.3f}")
    cpu = _speed_row("cpu preset, bundled prior")
    figures.append(f"{min(cpu):.2f}-{max(cpu):.2f}")
    return figures


def _cpu_job_figures() -> list[str]:
    job = _json("cpu_main_job.json")
    minutes, seconds = job["wall_clock"].split(":")
    return [f"{int(minutes)} min {round(float(seconds))} s", f"{job['iou']:.3f}"]


@pytest.mark.parametrize("figures", [_fidelity_figures, _speed_figures, _cpu_job_figures])
def test_documents_print_the_measured_figures(figures):
    docs = _docs()
    for text in figures():
        for name, body in docs.items():
            assert text in body, f"{name} does not show {text!r}, the figure in docs/results/"


def test_results_folder_holds_summaries_only():
    files = [p for p in RESULTS.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 3 * 2**20
    assert all(p.suffix in {".json", ".png"} for p in files)


def _batch_figures() -> list[str]:
    rows = {r["way"]: r for r in _json("batch_h100.json")["rows"]}
    return [
        f"{rows['Ray, 1/8 GPU a run, NVIDIA MPS']['runs_per_hour']} runs an hour",
        f"({rows['one after another']['runs_per_hour']} one at a time)",
    ]


def _asset_figures() -> list[str]:
    asset = _json("asset_gpu.json")
    return [
        f"{asset['lone_asset']['end_to_end_s']:.1f} s end to end",
        f"{asset['lone_asset']['run_folder_to_final_checkpoint_s']:.1f} s of it training",
        f"{asset['lone_asset']['run_folder_bytes'] / 1e6:.1f} MB run folder",
        f"{round(asset['throughput']['assets_per_hour'])} assets an hour",
    ]


def _export_figures() -> list[str]:
    export = _json("export_cpu.json")
    return [f"{export['seconds_total']:.1f} s, mesh IoU {export['iou']:.3f}"]


def _checkpoint_figures() -> list[str]:
    sizes = _json("checkpoint_size.json")["sizes"]
    return [
        f"{sizes['finished_checkpoint_bytes'] / 1e6:.1f} MB",
        f"{sizes['finished_checkpoint_float32_bytes'] / 1e6:.1f} MB",
    ]


@pytest.mark.parametrize("figures", [_batch_figures, _asset_figures, _export_figures, _checkpoint_figures])
def test_readme_prints_the_throughput_figures(figures):
    body = (ROOT / "README.md").read_text()
    for text in figures():
        assert text in body, f"README.md does not show {text!r}, the figure in docs/results/"


def _half_precision_figures() -> list[str]:
    half = _json("checkpoint_size.json")["half_precision"]
    mesh = half["mesh"]
    return [
        f"{_json('checkpoint_size.json')['sizes']['finished_checkpoint_bytes'] / 1e6:.1f} MB",
        f"at most {half['as_stored']['max_pixel_difference']:.1e}",
        f"{half['as_stored']['mean_pixel_difference']:.1e}",
        f"up to {half['bfloat16']['max_pixel_difference']:.1e}",
        f"{mesh['as_stored']['faces']:,} faces against {mesh['float32']['faces']:,}",
        f"{mesh['as_stored']['level']:.3f} against {mesh['float32']['level']:.3f}",
        f"IoU of {mesh['occupancy_iou_128']:.5f}",
    ]


def _export_stage_figures() -> list[str]:
    export = _json("export_cpu.json")
    stages = export["stages"]
    return [
        f"**{export['seconds_total']:.1f} s**",
        f"{stages['sample_density_near_surface']:.1f} s for the density grid",
        f"{stages['bake_texture']:.1f} s\nto bake the texture",
        f"{stages['unwrap']:.1f} s to unwrap",
        f"{export['faces']:,} faces",
        f"IoU of {export['iou']:.3f}",
        f"PSNR of {export['texture_psnr']:.1f} dB",
    ]


@pytest.mark.parametrize("figures", [_half_precision_figures, _export_stage_figures])
def test_results_print_the_detailed_figures(figures):
    body = (ROOT / "docs" / "results.md").read_text()
    for text in figures():
        assert text in body, f"docs/results.md does not show {text!r}, the figure in docs/results/"
