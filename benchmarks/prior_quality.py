"""Quality of the bundled prior, judged by the world classifier.

For every shape x color x view suffix of the world ("a red cube, front view", ...), sample N images
from the prior (DDIM with classifier-free guidance, `dreamfusion.prior_training.sample.sample_prompts`),
classify them (`dreamfusion.eval.classifier`) and tabulate shape and color accuracy.

The prior is not told a shading mode, so like its training data some samples are textureless
(white albedo, no color to name). Color accuracy is therefore reported on the samples the
classifier sees as colored (albedo or lambertian), with the textureless share beside it; and, as
a lower bound, with every textureless sample counted wrong.

    python benchmarks/prior_quality.py --device cuda --n 4 --out docs/results/prior_quality
        [--weights RUN/prior.safetensors] [--high-noise-model W] [--grid docs/prior_samples.png]

Writes OUT.json (every prompt's predictions and all tables) and OUT.md (the tables).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dreamfusion.bench.provenance import git_commit
from dreamfusion.eval.classifier import TEXTURELESS, WEIGHTS, classify, load_classifier
from dreamfusion.prior.experts import Experts
from dreamfusion.prior.model import load_prior
from dreamfusion.prior_training.sample import sample_prompts, save_grid
from dreamfusion.weights import PRIOR_PATH
from dreamfusion.world import COLOR_NAMES, SHAPE_NAMES, WORLD_VIEWS, caption, with_view


def prompt_table(shapes: list[str], colors: list[str], views: list[str | None], n: int) -> list[dict]:
    """One row per image to sample: prompt and the labels it asks for (views None: no suffix)."""
    rows = []
    for shape in shapes:
        for color in colors:
            for view in views:
                text = caption(shape, color)
                prompt = with_view(text, view) if view else text
                rows += [{"prompt": prompt, "shape": shape, "color": color, "view": view or "none"}] * n
    return rows


def _rate(hits: list[bool]) -> float:
    return sum(hits) / len(hits) if hits else float("nan")


def summarize(rows: list[dict], key: str | None) -> dict[str, dict[str, float]]:
    """Accuracies grouped by `key` ("shape", "color", "view", or None for all rows)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault("all" if key is None else row[key], []).append(row)
    out = {}
    for name, group in groups.items():
        colored = [r for r in group if not r["textureless"]]
        out[name] = {
            "n": len(group),
            "shape": _rate([r["pred_shape"] == r["shape"] for r in group]),
            "color": _rate([r["pred_color"] == r["color"] for r in colored]),
            "color_all": _rate([r["pred_color"] == r["color"] and not r["textureless"] for r in group]),
            "textureless": _rate([r["textureless"] for r in group]),
        }
    return out


def markdown(report: dict) -> str:
    lines = [
        "# Bundled prior: samples judged by the world classifier",
        "",
        f"Command: `{report['command']}`  ",
        f"Commit {report['commit']}, {report['device']}, {report['seconds']:.0f} s; "
        f"{report['n_images']} images ({report['n']} per prompt), DDIM {report['steps']} steps, "
        f"guidance scale {report['guidance_scale']}.",
        "",
        "Color accuracy counts the samples the classifier sees as colored; 'color (all)' counts every "
        "textureless sample as wrong.",
        "",
    ]
    for key, title in (("shape", "shape"), ("color", "color"), ("view", "view suffix"), (None, "overall")):
        table = report["by_" + (key or "all")]
        lines += [
            f"| {title} | n | shape acc | color acc | color (all) | textureless |",
            "|---|---|---|---|---|---|",
        ]
        for name, s in table.items():
            lines.append(
                f"| {name} | {s['n']} | {s['shape']:.3f} | {s['color']:.3f} | {s['color_all']:.3f} | "
                f"{s['textureless']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--weights", type=Path, default=PRIOR_PATH, help="prior weights (default: the bundled)"
    )
    parser.add_argument(
        "--high-noise-model",
        type=Path,
        default=None,
        help="a second prior that denoises from --high-noise-from up (prior.experts.Experts)",
    )
    parser.add_argument("--high-noise-from", type=float, default=0.6, help="fraction of the schedule (0.6)")
    parser.add_argument("--classifier", type=Path, default=WEIGHTS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPE_NAMES))
    parser.add_argument("--colors", nargs="+", default=list(COLOR_NAMES))
    parser.add_argument(
        "--views", nargs="+", default=["none", *WORLD_VIEWS], help="view suffixes; 'none' for no suffix"
    )
    parser.add_argument("--out", type=Path, default=Path("prior_quality"), help="writes OUT.json and OUT.md")
    parser.add_argument("--grid", type=Path, default=None, help="also save one sample per shape x color here")
    args = parser.parse_args()

    start = time.perf_counter()
    prior = load_prior(args.weights, args.device)
    if args.high_noise_model is not None:
        prior = Experts(prior, load_prior(args.high_noise_model, args.device), args.high_noise_from)
    judge = load_classifier(args.classifier, args.device)
    views = [None if v == "none" else v for v in args.views]
    rows = prompt_table(args.shapes, args.colors, views, args.n)
    images = sample_prompts(
        prior, [r["prompt"] for r in rows], args.seed, args.steps, args.guidance_scale, args.eta, args.batch
    )
    # The classifier was trained at 64x64, the world's resolution.
    judged = (
        images if images.shape[-1] == 64 else F.interpolate(images, size=64, mode="bilinear", antialias=True)
    )
    predicted = {k: v.tolist() for k, v in classify(judge, judged).items()}
    for i, row in enumerate(rows):
        row.update(
            pred_shape=SHAPE_NAMES[predicted["shape"][i]],
            pred_color=COLOR_NAMES[predicted["color"][i]],
            textureless=predicted["mode"][i] == TEXTURELESS,
        )
    device = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else platform.machine()
    report = {
        "command": "python benchmarks/prior_quality.py " + " ".join(_argv()),
        "commit": git_commit(),
        "device": device,
        "seconds": time.perf_counter() - start,
        "weights": str(args.weights),
        "high_noise_model": None if args.high_noise_model is None else str(args.high_noise_model),
        "high_noise_from": args.high_noise_from if args.high_noise_model is not None else None,
        "n": args.n,
        "n_images": len(rows),
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "eta": args.eta,
        "seed": args.seed,
        "by_shape": summarize(rows, "shape"),
        "by_color": summarize(rows, "color"),
        "by_view": summarize(rows, "view"),
        "by_all": summarize(rows, None),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)
    if args.grid is not None:
        # One image per shape x color (the first sample of its first view): rows shapes, columns colors.
        per_cell = len(views) * args.n
        save_grid(args.grid, images[::per_cell], columns=len(args.colors), scale=2)


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    main()
