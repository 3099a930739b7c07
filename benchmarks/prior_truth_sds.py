"""Does the bundled prior pull away from the true object? The SDS gradient at ground-truth renders.

    python benchmarks/prior_truth_sds.py --views 32 --repeats 4 --out prior_truth_sds.json

SDS moves a render along w(t) (eps_hat - eps). At a render of the true object that step should be
small, and smaller than at a render of the wrong object with the same prompt; if it is not, the
prior's mode is elsewhere and SDS drifts away from the truth even when started there. For every
object of the world (in one color), renders of the truth and of a sphere of the same color (a sphere
of the object's color for every other object; a cube for the sphere) from the `default` preset's
training cameras, over random solid backgrounds, in albedo shading, are scored under the object's
view prompts exactly as training scores them (the default preset's CFG, t range and weighting;
`--shading` and `--guidance-scale` change the render's shading and the CFG).
`--turn DEG` makes the decoy the object itself turned DEG degrees about +z: does the prior know
which way the object faces under the camera it is given (a cube at 45 degrees, a house at 180)?
`--distance-range` / `--focal-range` narrow the cameras; `--model` scores other prior weights,
`--high-noise-model` / `--high-noise-from` another high-noise expert (the preset's by default).
Reports the mean SDS gradient norm per image at the truth, at the decoy, and their ratio
(truth / decoy: below 1 means the prior prefers the truth). Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import torch

from dreamfusion.api import resolve_config
from dreamfusion.bench.provenance import git_commit, machine_info
from dreamfusion.guidance.bundled import load_bundled
from dreamfusion.scene.cameras import Cameras, sample_cameras
from dreamfusion.scene.prompts import view_index, view_prompts
from dreamfusion.world import OBJECTS, caption, render_object

COLOR = "red"


def grad_norm(
    guidance, images, embeddings, prompt_index, cameras, repeats: int, seed: int, shading: str
) -> float:
    """Mean over `repeats` draws of (t, eps) of the per-image norm of w(t) (eps_hat - eps)."""
    norms = []
    for r in range(repeats):
        generator = torch.Generator(images.device).manual_seed(seed + r)
        out = guidance.sds_loss(images, embeddings, prompt_index, cameras, generator, 0.0, shading=shading)
        norms.append(float(out.grad_norm))
    return sum(norms) / len(norms)


def turned(cameras: Cameras, degrees: float) -> Cameras:
    """The same cameras turned `degrees` about +z: through them the object looks turned by -degrees."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rot = cameras.c2w.new_tensor(
        [[c, -s, 0.0, 0.0], [s, c, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )
    return dataclasses.replace(
        cameras, c2w=rot @ cameras.c2w, light_position=cameras.light_position @ rot[:3, :3].T
    )


def measure(name: str, args: argparse.Namespace, camera: dict) -> dict:
    device = torch.device(args.device)
    cfg = resolve_config("default", device=str(device))
    if args.guidance_scale is not None:
        cfg = dataclasses.replace(cfg, sds=dataclasses.replace(cfg.sds, guidance_scale=args.guidance_scale))
    if args.model is not None:
        cfg = dataclasses.replace(cfg, guidance=dataclasses.replace(cfg.guidance, model=str(args.model)))
    if args.high_noise_model is not None:
        expert = None if args.high_noise_model == "none" else args.high_noise_model
        cfg = dataclasses.replace(cfg, guidance=dataclasses.replace(cfg.guidance, high_noise_model=expert))
    if args.high_noise_from is not None:
        cfg = dataclasses.replace(
            cfg, guidance=dataclasses.replace(cfg.guidance, high_noise_from=args.high_noise_from)
        )
    cfg = dataclasses.replace(cfg, camera=dataclasses.replace(cfg.camera, **camera))
    guidance = load_bundled(cfg.guidance, cfg.sds, device)
    cameras = sample_cameras(args.views, cfg.camera, torch.Generator().manual_seed(args.seed))
    background = torch.rand(args.views, 3, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    prompt = caption(name, COLOR)
    embeddings = guidance.embed(view_prompts(prompt, bottom=cfg.camera.bottom_view_below is not None))
    index = view_index(cameras.elevation, cameras.azimuth, bottom_below=cfg.camera.bottom_view_below).to(
        device
    )
    cameras = cameras.to(device)
    if args.turn is not None:
        decoy, decoy_cameras = f"{name} turned {args.turn:g} deg", turned(cameras, args.turn)
    else:
        decoy, decoy_cameras = "cube" if name == "sphere" else "sphere", cameras

    def score(object_name: str, seen_from: Cameras) -> float:
        images = render_object(OBJECTS[object_name].with_color(COLOR), seen_from, args.shading, background)
        return grad_norm(
            guidance, images, embeddings, index, cameras, args.repeats, args.seed + 2, args.shading
        )

    truth = score(name, cameras)
    wrong = score(name if args.turn is not None else decoy, decoy_cameras)
    return {
        "object": name,
        "prompt": prompt,
        "decoy": decoy,
        "truth": truth,
        "decoy_norm": wrong,
        "ratio": truth / wrong,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--views", type=int, default=32, help="training cameras per object")
    parser.add_argument("--repeats", type=int, default=4, help="draws of (t, eps) per view")
    parser.add_argument("--objects", nargs="+", default=list(OBJECTS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shading", default="albedo", choices=["albedo", "lambertian", "textureless"])
    parser.add_argument("--guidance-scale", type=float, default=None, help="CFG (default: the preset's)")
    parser.add_argument("--distance-range", type=float, nargs=2, default=None, help="camera distances")
    parser.add_argument("--focal-range", type=float, nargs=2, default=None, help="focal multipliers")
    parser.add_argument(
        "--turn", type=float, default=None, help="decoy: the object itself turned this many degrees about +z"
    )
    parser.add_argument("--model", type=Path, default=None, help="prior weights (default: the shipped ones)")
    parser.add_argument(
        "--high-noise-model",
        default=None,
        help="the high-noise expert: 'bundled', a .safetensors path, or 'none' (default: the preset's)",
    )
    parser.add_argument(
        "--high-noise-from",
        type=float,
        default=None,
        help="the expert's first timestep, a fraction (default: the preset's)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prior_truth_sds.json"))
    args = parser.parse_args()
    camera = {}
    if args.distance_range:
        camera["distance_range"] = tuple(args.distance_range)
    if args.focal_range:
        camera["focal_range"] = tuple(args.focal_range)
    rows = [measure(name, args, camera) for name in args.objects]
    report = {
        "machine": machine_info(),
        "commit": git_commit(),
        "views": args.views,
        "repeats": args.repeats,
        "color": COLOR,
        "shading": args.shading,
        "guidance_scale": args.guidance_scale,
        "camera": camera,
        "turn": args.turn,
        "model": str(args.model) if args.model else None,
        "high_noise_model": args.high_noise_model,
        "high_noise_from": args.high_noise_from,
        "settings": dataclasses.asdict(resolve_config("default", device=args.device).sds),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{'object':10s} {'decoy':18s} {'|g| truth':>10s} {'|g| decoy':>10s} {'truth/decoy':>12s}")
    for r in rows:
        print(
            f"{r['object']:10s} {r['decoy']:18s} {r['truth']:10.2f} {r['decoy_norm']:10.2f} "
            f"{r['ratio']:12.3f}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
