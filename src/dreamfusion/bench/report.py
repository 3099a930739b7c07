"""The fidelity benchmark's report: every number as JSON, a markdown summary against the targets,
and a contact sheet (eval/contact_sheet.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dreamfusion.atomic import atomic_write
from dreamfusion.bench.provenance import git_commit, machine_info
from dreamfusion.config import to_dict
from dreamfusion.world import PRIMITIVES, WORLD_VERSION

PRIMITIVE_MEAN_IOU = 0.75
"""Target: mean IoU at true scale over the primitive runs."""
FRONT_RIGHT_SHARE = 0.9
"""Target: share of the runs of fronted composites whose front is where it should be."""

VIEWS = ("front", "left", "back", "right")
"""Contact-sheet views: a 4-frame turntable starts at azimuth 0, the +x side where fronts face."""


# ----------------------------------------------------------------------------------- numbers
def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _group(records: list[dict]) -> dict:
    ious = [r["iou"] for r in records]
    return {
        "runs": len(records),
        "mean_iou": _mean(ious),
        "min_iou": min(ious) if ious else None,
        "mean_scaled_iou": _mean(r["scaled_iou"] for r in records),
        "mean_initial_iou": _mean(r["initial_iou"] for r in records),
        "mean_support_iou": _mean(r.get("support_iou") for r in records),
        "mean_opaque_iou": _mean(r.get("opaque_iou") for r in records),
        "shape_correct": sum(r["shape_correct"] for r in records),
        "color_correct": sum(r["color_correct"] for r in records),
        "support_shape_correct": sum(r.get("support_identified") == r["object"] for r in records),
        "mean_chamfer": _mean(r.get("chamfer") for r in records),
        "mean_color_error": _mean(r["color_error"] for r in records),
    }


def summarize(records: list[dict]) -> dict:
    """Means per group (primitives, composites, all), counts, and each target with whether it is met."""
    primitives = [r for r in records if r["object"] in PRIMITIVES]
    fronted = [r for r in records if "front_correct" in r]
    groups = {
        "all": _group(records),
        "primitives": _group(primitives),
        "composites": _group([r for r in records if r["object"] not in PRIMITIVES]),
    }
    n = len(records)
    shapes, colors = groups["all"]["shape_correct"], groups["all"]["color_correct"]
    primitive_shapes = groups["primitives"]["shape_correct"]
    fronts = sum(r["front_correct"] for r in fronted)
    prim_iou = _mean(r["iou"] for r in primitives)
    front_share = fronts / len(fronted) if fronted else None
    targets = [
        {
            "target": f"primitives: mean IoU >= {PRIMITIVE_MEAN_IOU}",
            "value": prim_iou,
            "met": None if prim_iou is None else prim_iou >= PRIMITIVE_MEAN_IOU,
        },
        {
            "target": "primitives: shape identified in every run",
            "value": f"{primitive_shapes}/{len(primitives)}",
            "met": primitive_shapes == len(primitives) if primitives else None,
        },
        {"target": "named color nearest in every run", "value": f"{colors}/{n}", "met": colors == n},
        {
            "target": f"composites with a front: front right in >= {FRONT_RIGHT_SHARE:.0%} of runs",
            "value": None if front_share is None else f"{fronts}/{len(fronted)}",
            "met": None if front_share is None else front_share >= FRONT_RIGHT_SHARE,
        },
    ]
    spread = seed_spread(records)
    ranges = [s["iou_range"] for s in spread if s["iou_range"] is not None]
    return {
        "runs": n,
        **groups,
        "shape_identified": shapes,
        "color_nearest": colors,
        "fronted_runs": len(fronted),
        "front_right": fronts,
        "two_fronts": sum(r["two_fronts"] for r in fronted),
        "mean_seed_iou_range": _mean(ranges),
        "max_seed_iou_range": max(ranges) if ranges else None,
        "total_train_seconds": sum(r["train_seconds"] or 0.0 for r in records),
        "mean_train_seconds": _mean(r["train_seconds"] for r in records),
        "targets": targets,
    }


def seed_spread(records: list[dict]) -> list[dict]:
    """Per prompt: the IoU of each seed, their mean and range (max - min; None with one seed)."""
    by_prompt: dict[str, list[dict]] = {}
    for r in records:
        by_prompt.setdefault(r["prompt"], []).append(r)
    out = []
    for prompt, runs in by_prompt.items():
        ious = [r["iou"] for r in runs]
        out.append(
            {
                "prompt": prompt,
                "seeds": [r["seed"] for r in runs],
                "ious": ious,
                "mean_iou": _mean(ious),
                "iou_range": max(ious) - min(ious) if len(ious) > 1 else None,
            }
        )
    return out


def time_to_quality(records: list[dict]) -> list[dict]:
    """The runs' IoU-against-time curves averaged step by step (runs share the checkpoint steps)."""
    by_step: dict[int, list[tuple[dict, dict]]] = {}
    for r in records:
        for point in r["curve"]:
            by_step.setdefault(point["step"], []).append((r, point))
    out = []
    for step in sorted(by_step):
        pairs = by_step[step]
        out.append(
            {
                "step": step,
                "runs": len(pairs),
                "mean_train_seconds": _mean(p["train_seconds"] for _, p in pairs),
                "mean_iou": _mean(p["iou"] for _, p in pairs),
                "mean_scaled_iou": _mean(p["scaled_iou"] for _, p in pairs),
                "mean_support_iou": _mean(p.get("support_iou") for _, p in pairs),
                "primitives_mean_iou": _mean(p["iou"] for r, p in pairs if r["object"] in PRIMITIVES),
            }
        )
    return out


def build_report(options, prompt_set, records: list[dict], total: int) -> dict:
    """Everything the benchmark measured, with the command, commit and machine that measured it."""
    cfg = options.config
    return {
        "benchmark": "fidelity",
        "prompt_set": {
            "name": prompt_set.name,
            "version": prompt_set.version,
            "world": WORLD_VERSION,
            "seeds": list(prompt_set.seeds),
        },
        "command": options.command(),
        "commit": git_commit(),
        "machine": machine_info(),
        "device": cfg.train.device,
        "preset": options.preset,
        "guidance": cfg.guidance.name,
        "steps": cfg.train.steps,
        "checkpoint_every": cfg.train.checkpoint_every,
        "resolution": options.resolution,
        "mesh": options.mesh,
        "jobs": options.jobs,
        "runs_done": len(records),
        "runs_total": total,
        "complete": len(records) == total,
        "summary": summarize(records),
        "seed_spread": seed_spread(records),
        "time_to_quality": time_to_quality(records),
        "config": to_dict(cfg),
        "runs": records,
    }


MERGE_KEYS = ("prompt_set", "preset", "guidance", "steps", "checkpoint_every", "resolution", "mesh")
"""What the parts of a merged report must share."""


def prompt_set_world(prompt_set: dict) -> int:
    """The world a prompt set file, or a report's "prompt_set", was written for: those made before
    the world had versions name none, and are world 1."""
    return int(prompt_set.get("world", 1))


def merge_reports(parts: list[tuple[Path, dict]], out: Path) -> dict:
    """Reports of one prompt set made in parts (other seeds, other objects, other machines) as one
    report to be written to `out`: every run, every summary recomputed over all of them, and each
    part's command, commit and machine under "parts". `parts` pairs each report with its folder;
    the runs' frame paths are made relative to `out`, so the contact sheet finds them.
    Raises ValueError when the parts differ in MERGE_KEYS or share a run."""
    if not parts:
        raise ValueError("no reports to merge")
    first = parts[0][1]
    runs, seen = [], set()
    for folder, report in parts:
        for key in MERGE_KEYS:
            a, b = report[key], first[key]
            if key == "prompt_set":
                a, b = ((x["name"], x["version"], prompt_set_world(x)) for x in (a, b))
            if a != b:
                raise ValueError(f"{folder}: its {key} ({a}) is not the first report's ({b})")
        for r in report["runs"]:
            if (r["prompt"], r["seed"]) in seen:
                raise ValueError(f"{folder}: '{r['prompt']}' seed {r['seed']} is in two reports")
            seen.add((r["prompt"], r["seed"]))
            frames = os.path.relpath(Path(folder).resolve() / r["frames"], Path(out).resolve())
            runs.append({**r, "frames": frames})
    seeds = sorted({s for _, report in parts for s in report["prompt_set"]["seeds"]})
    part_info = [
        {
            key: report[key]
            for key in ("command", "commit", "machine", "device", "jobs", "runs_done", "runs_total")
        }
        for _, report in parts
    ]
    merged = {
        **{k: v for k, v in first.items() if k not in ("runs", "summary", "seed_spread", "time_to_quality")},
        "prompt_set": {**first["prompt_set"], "seeds": seeds},
        "command": " + ".join(p["command"] for p in part_info),
        "commit": ", ".join(dict.fromkeys(p["commit"] for p in part_info)),
        "jobs": max(p["jobs"] for p in part_info),
        "runs_done": len(runs),
        "runs_total": sum(p["runs_total"] for p in part_info),
        "complete": all(report["complete"] for _, report in parts),
        "parts": part_info,
        "summary": summarize(runs),
        "seed_spread": seed_spread(runs),
        "time_to_quality": time_to_quality(runs),
        "runs": runs,
    }
    return merged


# ---------------------------------------------------------------------------------- markdown
def cell(value, digits: int = 3) -> str:
    """A table cell: "-" for None, yes/no for booleans, floats to `digits` places."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def front_cell(r: dict) -> str:
    """A run's front-consistency verdict in words ("-" for objects without a front)."""
    if "front_correct" not in r:
        return "-"
    if r["front_correct"]:
        text = "right"
    else:
        text = "tied" if r["front_best"] == 0 else f"turned {r['front_best']} deg"
    return text + (", two fronts" if r["two_fronts"] else "")


def markdown(report: dict, sheet: bool = True) -> str:
    """The report as markdown: provenance, targets, one row per run, seeds, time to quality."""
    s, m, ps = report["summary"], report["machine"], report["prompt_set"]
    machine = ", ".join(str(m[k]) for k in ("gpu", "platform") if k in m)
    gpus = m.get("gpu_count", 1)
    if gpus > 1:
        machine = f"{gpus} x {machine}"
    machine += f", {m['cpu_threads']} CPU threads, torch {m['torch']}"
    lines = [
        f"# Fidelity benchmark: prompt set {ps['name']} v{ps['version']}",
        "",
        f"Command: `{report['command']}`  ",
        f"Commit {report['commit']}; {machine}; device {report['device']}.  ",
        f"Preset {report['preset']}, guidance {report['guidance']}, {report['steps']} steps "
        f"(checkpoint every {report['checkpoint_every']}); IoUs on a {report['resolution']}^3 grid at "
        f"the render level. {report['runs_done']}/{report['runs_total']} runs"
        + ("." if report["complete"] else " (incomplete: run the command again to resume).")
        + (
            f" {report['jobs']} runs trained at once"
            + (f" over {gpus} GPUs" if gpus > 1 else "")
            + ": each run's seconds count the sharing."
            if report.get("jobs", 1) > 1
            else ""
        ),
    ]
    for part in report.get("parts", []):
        pm = part["machine"]
        lines.append(
            f"- part: `{part['command']}` (commit {part['commit']}, {pm.get('gpu', pm['platform'])}, "
            f"{part['runs_done']} runs)"
        )
    lines += [
        "",
        "## Targets",
        "",
        "| target | value | met |",
        "|---|---|---|",
    ]
    for t in s["targets"]:
        lines.append(f"| {t['target']} | {cell(t['value'])} | {cell(t['met'])} |")
    groups = [(name, s[name]) for name in ("primitives", "composites", "all") if s[name]["runs"]]
    lines += [
        "",
        "| runs | n | mean IoU | min IoU | mean scaled IoU | mean initial IoU | mean support IoU | "
        "mean opaque IoU | shape identified | color nearest | shape right at support level | mean Chamfer | "
        "mean color error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, g in groups:
        lines.append(
            f"| {name} | {g['runs']} | {cell(g['mean_iou'])} | {cell(g['min_iou'])} | "
            f"{cell(g['mean_scaled_iou'])} | {cell(g['mean_initial_iou'])} | {cell(g['mean_support_iou'])} | "
            f"{cell(g.get('mean_opaque_iou'))} | {g['shape_correct']}/{g['runs']} | "
            f"{g['color_correct']}/{g['runs']} | {g['support_shape_correct']}/{g['runs']} | "
            f"{cell(g['mean_chamfer'], 4)} | "
            f"{cell(g['mean_color_error'])} |"
        )
    lines += [
        "",
        "IoU is at the render level (where renders put the surface: the export's transmittance rule); "
        "support IoU at half the field's plateau density (its geometric extent); opaque IoU of the cells "
        "hidden at half transmittance from all six axis directions (the solid renders show; "
        "docs/evaluation.md).",
    ]
    lines += [
        "",
        f"Two fronts in {s['two_fronts']}/{s['fronted_runs']} fronted runs. IoU range across seeds: "
        f"mean {cell(s['mean_seed_iou_range'])}, max {cell(s['max_seed_iou_range'])}. "
        f"Training: {cell(s['total_train_seconds'], 1)} s in all.",
        "",
        "## Runs",
        "",
        "| prompt | seed | IoU | scaled IoU (scale, shift) | initial IoU | support IoU (identified) | "
        "opaque IoU | "
        "identified | albedo -> nearest color | color error | Chamfer | front | steps | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        shape = r["identified"] + ("" if r["shape_correct"] else " (WRONG)")
        color = f"{r['nearest_color']} ({'ok' if r['color_correct'] else 'WRONG'})"
        lines.append(
            f"| {r['prompt']} | {r['seed']} | {cell(r['iou'])} | {cell(r['scaled_iou'])} "
            f"({r['scale']:.2f}, {r['shift']:+.2f}) | {cell(r['initial_iou'])} | "
            f"{cell(r.get('support_iou'))} ({r.get('support_identified', '-')}) | "
            f"{cell(r.get('opaque_iou'))} | "
            f"{shape} | {color} | "
            f"{cell(r['color_error'])} | {cell(r.get('chamfer'), 4)} | {front_cell(r)} | {r['steps']} | "
            f"{cell(r['train_seconds'], 1)} |"
        )
    lines += ["", "## Spread across seeds", "", "| prompt | IoU per seed | mean | range |"]
    lines += ["|---|---|---|---|"]
    for p in report["seed_spread"]:
        per_seed = ", ".join(f"s{seed}: {v:.3f}" for seed, v in zip(p["seeds"], p["ious"], strict=True))
        lines.append(f"| {p['prompt']} | {per_seed} | {cell(p['mean_iou'])} | {cell(p['iou_range'])} |")
    lines += [
        "",
        "## Time to quality",
        "",
        "IoU at true scale of every saved checkpoint against its training seconds, averaged over the runs "
        "(step 0 is the initial field).",
        "",
        "| step | runs | mean train s | mean IoU | mean scaled IoU | mean support IoU | "
        "primitives: mean IoU |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in report["time_to_quality"]:
        lines.append(
            f"| {p['step']} | {p['runs']} | {cell(p['mean_train_seconds'], 1)} | {cell(p['mean_iou'])} | "
            f"{cell(p['mean_scaled_iou'])} | {cell(p.get('mean_support_iou'))} | "
            f"{cell(p['primitives_mean_iou'])} |"
        )
    views = ", ".join(VIEWS)
    if sheet:
        lines += ["", f"Contact sheet ({views}: result, then truth): ![contact sheet](contact_sheet.png)"]
    else:
        lines += ["", "No contact sheet here: each part's folder has its own."]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path, sheet: bool = True) -> None:
    """OUT/fidelity.json, OUT/fidelity.md and (with `sheet`) OUT/contact_sheet.png."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1, allow_nan=False)
    atomic_write(out / "fidelity.json", lambda tmp: tmp.write_text(text + "\n"))
    md = markdown(report, sheet)
    atomic_write(out / "fidelity.md", lambda tmp: tmp.write_text(md))
    if sheet:
        from dreamfusion.bench.contact_sheet import contact_sheet

        contact_sheet(report, out)
