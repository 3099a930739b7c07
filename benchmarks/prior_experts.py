"""Two priors as experts by noise level: one below --high-from of the schedule, the other from it up
(as in eDiff-I).

    python benchmarks/prior_experts.py --high RUN/prior.safetensors [--low W] [--high-from 0.6]

Why: the high-noise fine-tune of docs/results/azimuth_finetune_h200 learned the azimuth but lost
detail at low noise (sample shape accuracy 0.78). If its noisy end is sound, the shipped prior below
the cut and the fine-tune above it should sample as well as the shipped prior alone.

For each of --low, --high and the pair, samples (DDIM, classifier-free guidance) of every shape x
color x view in the lists below are judged by the world classifier, as in prior_quality.py.
Writes --out (JSON) and prints a table of shape and color accuracy, overall and per shape.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dreamfusion.bench.provenance import git_commit, machine_info
from dreamfusion.eval.classifier import TEXTURELESS, WEIGHTS, classify, load_classifier
from dreamfusion.prior.experts import Experts
from dreamfusion.prior.model import file_sha256, load_prior
from dreamfusion.prior_training.sample import sample_prompts
from dreamfusion.weights import PRIOR_PATH
from dreamfusion.world import COLOR_NAMES, SHAPE_NAMES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prior_quality import prompt_table, summarize  # noqa: E402


def judge(model, rows: list[dict], steps: int, guidance_scale: float, classifier) -> dict:
    with torch.no_grad():
        images = sample_prompts(model, [r["prompt"] for r in rows], 0, steps, guidance_scale, 0.0, 64)
    predicted = {k: v.tolist() for k, v in classify(classifier, images).items()}
    judged = [
        {
            **row,
            "pred_shape": SHAPE_NAMES[predicted["shape"][i]],
            "pred_color": COLOR_NAMES[predicted["color"][i]],
            "textureless": predicted["mode"][i] == TEXTURELESS,
        }
        for i, row in enumerate(rows)
    ]
    return {"all": summarize(judged, None)["all"], "by_shape": summarize(judged, "shape")}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--low", type=Path, default=PRIOR_PATH, help="expert below the cut (default: shipped)"
    )
    parser.add_argument("--high", type=Path, required=True, help="expert from the cut up")
    parser.add_argument(
        "--high-from", type=float, default=0.6, help="start of the high expert, fraction of T (0.6)"
    )
    parser.add_argument(
        "--shapes", nargs="+", default=["cube", "sphere", "cylinder", "pyramid", "cone", "torus"]
    )
    parser.add_argument("--colors", nargs="+", default=["red", "blue", "green", "yellow"])
    parser.add_argument("--views", nargs="+", default=["none", "front"], help="'none' for no suffix")
    parser.add_argument("--n", type=int, default=2, help="samples per prompt (default 2)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prior_experts.json"))
    args = parser.parse_args()

    low, high = load_prior(args.low), load_prior(args.high)
    classifier = load_classifier(WEIGHTS, "cpu")
    rows = prompt_table(args.shapes, args.colors, [None if v == "none" else v for v in args.views], args.n)
    results = {}
    experts = Experts(low, high, args.high_from)
    for name, model in (("low", low), ("high", high), ("experts", experts)):
        start = time.perf_counter()
        results[name] = {**judge(model, rows, args.steps, args.guidance_scale, classifier)}
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
    report = {
        "machine": machine_info(),
        "commit": git_commit(),
        "low": str(args.low),
        "low_sha256": file_sha256(args.low),
        "high": str(args.high),
        "high_sha256": file_sha256(args.high),
        "cut": experts.cut,
        "n_images": len(rows),
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"{len(rows)} samples each, DDIM {args.steps}, CFG {args.guidance_scale}, cut {experts.cut}")
    print(f"{'prior':8s} {'shape':>6s} {'color':>6s}  " + " ".join(f"{s:>8s}" for s in args.shapes))
    for name, r in results.items():
        per = " ".join(f"{r['by_shape'][s]['shape']:8.2f}" for s in args.shapes)
        print(f"{name:8s} {r['all']['shape']:6.3f} {r['all']['color']:6.3f}  {per}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
