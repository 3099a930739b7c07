"""The README's CPU job end to end: wall clock, peak memory, training seconds, stages and known-truth scores.

    python benchmarks/cpu_job.py --out docs/results/cpu_main_job.json    # "a red sphere", as the README
    python benchmarks/cpu_job.py --prompt-set benchmarks/prompt_sets/cpu5.json --out outputs/cpu5.json
    python benchmarks/cpu_job.py --src ../other-checkout/src --out before.json  # another version's code

Each prompt runs `dreamfusion generate PROMPT --preset cpu --out RUN` in a process of its own, one
after the other, under /usr/bin/time -v where there is one (wall clock, peak RSS). The finished run
is then scored by this checkout's `dreamfusion.eval.fidelity.evaluate_run` against the world object
and color its prompt names, so two versions of the code are scored alike. The stages (start, training
loop with its previews and checkpoints, mesh, turntable) are read from the times the run's files were
written; `train_seconds` is the training steps alone (the run's metrics). One prompt writes one
record, several a list of them under "runs". A table is printed either way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dreamfusion.bench.provenance import git_commit, machine_info
from dreamfusion.bench.runner import load_prompt_set
from dreamfusion.eval.fidelity import evaluate_run

TIME = Path("/usr/bin/time")
SCORES = ("iou", "scaled_iou", "opaque_iou", "identified", "shape_correct", "nearest_color", "color_correct")


def _time_v(stderr: str) -> dict[str, object]:
    """Wall clock ("m:ss.ss") and peak RSS (GB) from /usr/bin/time -v's report."""
    out: dict[str, object] = {}
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", stderr)
    if wall:
        out["wall_clock"] = wall.group(1)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    if rss:
        out["peak_rss_gb"] = round(int(rss.group(1)) / 1e6, 2)
    return out


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:05.2f}"


def _stages(run: Path, launched: float, ended: float) -> dict[str, float]:
    """Seconds of each stage, from the times the run's files were last written."""
    marks = [("start", run / "config.json")]
    marks.append(("train", max((run / "checkpoints").glob("step_*.safetensors"), default=run / "none")))
    marks.append(("final_preview", run / "previews" / "final.png"))
    marks += [("mesh", run / "mesh.glb"), ("video", run / "turntable.mp4"), ("video", run / "turntable.gif")]
    stages, last = {}, launched
    for name, path in marks:
        if path.is_file():
            stages[name] = round(path.stat().st_mtime - last, 2)
            last = path.stat().st_mtime
    stages["exit"] = round(ended - last, 2)
    return stages


def run_one(prompt: str, obj: str, color: str, out: Path, src: Path | None, extra: list[str]) -> dict:
    run = out / f"{color}-{obj}"
    shutil.rmtree(run, ignore_errors=True)
    args = ["generate", prompt, "--preset", "cpu", "--out", str(run), *extra]
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src.resolve())
    command = [sys.executable, "-m", "dreamfusion.cli", *args]
    if TIME.is_file():
        command = [str(TIME), "-v", *command]
    launched = time.time()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    ended = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"{prompt!r} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    record: dict[str, object] = {
        "command": "dreamfusion " + " ".join(a if " " not in a else f'"{a}"' for a in args),
        "wall_clock": _clock(ended - launched),
        **_time_v(proc.stderr),
    }
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = metrics[-1]
    steps = int(last["step"])
    record.update(
        train_seconds=round(float(last["elapsed_s"]), 1),
        steps=steps,
        seconds_per_step=round(float(last["elapsed_s"]) / steps, 4),
        phases_seconds_per_step=last.get("timings", {}),
        stages=_stages(run, launched, ended),
    )
    scores = evaluate_run(run, obj, color, mesh=False)
    record.update({k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items() if k in SCORES})
    return record


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompt-set", default=None, help="a prompt set .json (default: the red sphere)")
    parser.add_argument("--out", type=Path, default=Path("outputs/cpu_job.json"), help="the JSON written")
    parser.add_argument("--runs", type=Path, default=Path("outputs"), help="where the runs go (COLOR-OBJECT)")
    parser.add_argument("--src", type=Path, default=None, help="run the job from this src folder's code")
    parser.add_argument("--no-video", action="store_true", help="pass --no-video to generate")
    parser.add_argument("--steps", type=int, default=None, help="pass --steps to generate (a quick check)")
    args = parser.parse_args()

    if args.prompt_set is None:
        prompts = [("a red sphere", "sphere", "red")]
    else:
        prompts = [(p.text, p.object, p.color) for p in load_prompt_set(args.prompt_set).prompts]
    extra = ["--no-video"] if args.no_video else []
    if args.steps is not None:
        extra += ["--steps", str(args.steps)]
    commit = git_commit() if args.src is None else f"the code of {args.src}"
    machine = machine_info(cpu=f"{os.cpu_count()}-core {platform.machine()}")
    header = {"benchmark": "cpu_main_job", "machine": machine, "commit": commit}
    records = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for text, obj, color in prompts:
        records.append(run_one(text, obj, color, args.runs, args.src, extra))
        r = records[-1]
        print(
            f"{text:<18} {r['wall_clock']:>9} wall {r['train_seconds']:>7.1f} s train "
            f"{r['seconds_per_step']:.3f} s/step IoU {r['iou']:.3f} "
            f"{r['identified']:<8} {r['nearest_color']}",
            flush=True,
        )
        # Written after every run, so a long set that is stopped keeps what it measured.
        result = {**header, **records[0]} if len(prompts) == 1 else {**header, "runs": records}
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
