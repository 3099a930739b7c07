"""Sampling the prior: DDIM (eta = 0) or ancestral (eta = 1) with classifier-free guidance.

Guidance uses `dreamfusion.guidance.sds.guided_eps`, the one CFG formula of the package. Each image needs
a camera (the model is conditioned on it): `prompt_cameras` draws world cameras that agree with
the prompt's view suffix, so "..., bottom view" is sampled from below.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from dreamfusion.guidance.sds import CFGFormulation, guided_eps
from dreamfusion.prior.model import PriorModel
from dreamfusion.prior.text import TextStates
from dreamfusion.prior.unet import camera_input
from dreamfusion.render.shading import SHADING_MODES
from dreamfusion.scene.cameras import CameraConfig, sample_cameras
from dreamfusion.training.run_dir import save_image_grid
from dreamfusion.world.captions import BOTTOM_BELOW, OVERHEAD_ABOVE, WORLD_VIEWS, world_view_index
from dreamfusion.world.config import world_cameras

_SUFFIX = re.compile(r",\s*(\w+)\s+view\s*$")


def prompt_view(prompt: str) -> str | None:
    """The view a prompt's suffix names ("a red cube, side view" -> "side"), or None."""
    match = _SUFFIX.search(prompt.lower())
    return match.group(1) if match and match.group(1) in WORLD_VIEWS else None


def prompt_cameras(
    prompts: Sequence[str],
    generator: torch.Generator,
    cfg: CameraConfig | None = None,
    tries: int = 64,
) -> Tensor:
    """Camera inputs (N, CAMERA_WIDTH) of world cameras, one per prompt, in the view its suffix names.

    Candidates are drawn from `cfg` (default: the world's range) and the first whose world view
    matches is kept; prompts without a suffix take the first candidate.
    """
    cfg = cfg or world_cameras()
    out = []
    for prompt in prompts:
        want = prompt_view(prompt)
        for _ in range(tries):
            cams = sample_cameras(64, cfg, generator)
            views = world_view_index(cams.elevation, cams.azimuth, BOTTOM_BELOW, OVERHEAD_ABOVE)
            hits = torch.arange(64) if want is None else torch.nonzero(views == WORLD_VIEWS.index(want))[:, 0]
            if len(hits):
                c = cams[hits[:1]]
                out.append(camera_input(c))
                break
        else:
            raise ValueError(f"no camera of the range {cfg.elevation_range} gives a {want} view")
    return torch.cat(out)


def ddim_timesteps(num_train_timesteps: int, steps: int) -> Tensor:
    """`steps` timesteps from T - 1 down to 0, evenly spaced: (steps,) long."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"sampling steps must be in [1, {num_train_timesteps}], got {steps}")
    return torch.linspace(num_train_timesteps - 1, 0, steps).round().long()


@torch.no_grad()
def ddim_sample(
    model: PriorModel,
    text: TextStates,
    camera: Tensor,
    generator: torch.Generator,
    steps: int = 50,
    guidance_scale: float = 3.0,
    eta: float = 0.0,
    formulation: CFGFormulation = "uncond",
    mode: str | None = None,
) -> Tensor:
    """Sample N images for N encoded prompts and cameras (N, CAMERA_WIDTH): returns (N, 3, H, W) in [0, 1].

    The predicted clean image is clipped to [-1, 1] at every step and the noise re-derived from
    it, which keeps large guidance scales from drifting out of the data range.
    `mode` asks for a shading mode (one of SHADING_MODES; None: any, as SDS asks).
    Draws from `generator` (on its own device): the start noise, then for eta > 0 one noise per step.
    """
    device = model.device
    N, size = camera.shape[0], model.image_size
    modes = None if mode is None else torch.full((2 * N,), SHADING_MODES.index(mode), device=device)
    uncond = model.encode([""])
    both = TextStates.cat([uncond[[0] * N], text.to(device)])
    camera2 = torch.cat([camera, camera]).to(device)
    ac = model.alphas_cumprod.double()
    ts = ddim_timesteps(model.cfg.num_train_timesteps, steps).tolist()

    def noise() -> Tensor:
        return torch.randn(N, 3, size, size, generator=generator, device=generator.device).to(device)

    z = noise()
    for i, t in enumerate(ts):
        a_t = float(ac[t])
        a_prev = float(ac[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        tt = torch.full((2 * N,), t, device=device, dtype=torch.long)
        eps_u, eps_c = model.eps(torch.cat([z, z]), tt, both, camera2, modes).chunk(2)
        eps = guided_eps(eps_u, eps_c, guidance_scale, formulation)
        x0 = ((z - (1.0 - a_t) ** 0.5 * eps) / a_t**0.5).clamp(-1.0, 1.0)
        eps = (z - a_t**0.5 * x0) / (1.0 - a_t) ** 0.5
        sigma = eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)) ** 0.5
        z = a_prev**0.5 * x0 + max(1.0 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0.0:
            z = z + sigma * noise()
    return ((z + 1.0) / 2.0).clamp(0.0, 1.0)


def sample_prompts(
    model: PriorModel,
    prompts: Sequence[str],
    seed: int = 0,
    steps: int = 50,
    guidance_scale: float = 3.0,
    eta: float = 0.0,
    batch: int = 256,
    mode: str | None = None,
) -> Tensor:
    """One image per prompt, each from a world camera matching its view: (N, 3, H, W) in [0, 1].
    `mode`: a shading mode to ask for ("albedo", "lambertian", "textureless"; None: any).

    Cameras come from a CPU generator seeded with `seed`, noise from one on the model's device.
    """
    if mode is not None and mode not in SHADING_MODES:
        raise ValueError(f"unknown shading mode '{mode}' (use one of {', '.join(SHADING_MODES)}, or none)")
    cpu_gen = torch.Generator().manual_seed(seed)
    gen = torch.Generator(model.device).manual_seed(seed + 1)
    camera = prompt_cameras(prompts, cpu_gen)
    text = model.encode(prompts)  # unknown words fail here, before any sampling
    parts = [
        ddim_sample(
            model, text[i : i + batch], camera[i : i + batch], gen, steps, guidance_scale, eta, mode=mode
        )
        for i in range(0, len(prompts), batch)
    ]
    return torch.cat(parts)


def save_grid(path: Path, images: Tensor, columns: int, scale: int = 1) -> Path:
    """Images (N, 3, H, W) in [0, 1] as a PNG grid, `columns` wide, white-padded, upscaled `scale`x."""
    if scale > 1:
        images = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    columns = max(1, min(columns, len(images)))
    pad = (-len(images)) % columns
    images = torch.cat([images.float().cpu(), torch.ones(pad, *images.shape[1:])])
    return save_image_grid(Path(path), list(images.split(columns)))
