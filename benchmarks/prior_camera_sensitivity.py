"""How much does the bundled prior's prediction move when the camera turns? Azimuth against elevation.

    python benchmarks/prior_camera_sensitivity.py --model src/dreamfusion/weights/prior.safetensors

For "a red cube" (or --prompt), the same noisy inputs z_t at t in --timesteps are denoised under a
camera at azimuth 0 and elevation 25 degrees, then under the same camera turned in azimuth (45 and
90 degrees) or in elevation (to -30 and 80). Reported: the relative change ||v' - v|| / ||v|| of the
prediction per t. A prior that knows which way an axis-aligned cube faces must change its prediction
when the camera goes round it; one that does not changes it only with the elevation (top or bottom
in view). Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dreamfusion.bench.provenance import git_commit, machine_info
from dreamfusion.prior.model import file_sha256, load_prior
from dreamfusion.prior.unet import camera_input
from dreamfusion.scene.cameras import orbit_cameras
from dreamfusion.weights import PRIOR_PATH

TURNS = {
    "azimuth 45": (45.0, 25.0),
    "azimuth 90": (90.0, 25.0),
    "elevation -30": (0.0, -30.0),
    "elevation 80": (0.0, 80.0),
}


def camera(azimuth: float, elevation: float, size: int) -> torch.Tensor:
    return camera_input(orbit_cameras(1, size, elevation=elevation, distance=1.3, azimuth_start=azimuth))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=PRIOR_PATH, help="prior weights (default: the shipped ones)"
    )
    parser.add_argument("--prompt", default="a red cube")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[100, 300, 500, 800])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prior_camera_sensitivity.json"))
    args = parser.parse_args()
    model = load_prior(args.model)
    size, n = model.image_size, len(args.timesteps)
    z = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(args.seed))
    t = torch.tensor(args.timesteps)
    text = model.encode([args.prompt] * n)
    with torch.no_grad():
        base = model(z, t, text, camera(0.0, 25.0, size).expand(n, -1))
        rows = {}
        for name, (azimuth, elevation) in TURNS.items():
            turned = model(z, t, text, camera(azimuth, elevation, size).expand(n, -1))
            change = (turned - base).flatten(1).norm(dim=1) / base.flatten(1).norm(dim=1)
            rows[name] = [round(float(c), 5) for c in change]
    report = {
        "machine": machine_info(),
        "commit": git_commit(),
        "model": str(args.model),
        "model_sha256": file_sha256(args.model),
        "ray_channels": model.cfg.unet.ray_channels,
        "camera_text_width": model.cfg.unet.camera_text_width,
        "prompt": args.prompt,
        "timesteps": args.timesteps,
        "relative_change": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{args.model} (rays: {model.cfg.unet.ray_channels}), '{args.prompt}', relative change of v at t =")
    print(f"{'turn':14s} " + " ".join(f"{s:>7d}" for s in args.timesteps))
    for name, values in rows.items():
        print(f"{name:14s} " + " ".join(f"{v:7.4f}" for v in values))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
