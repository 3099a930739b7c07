"""A diffusion "model" whose optimal noise prediction is known exactly: the test backend.

For a prompt and a camera, the data (images in [-1, 1]) are a Gaussian mixture around renders
of a known object seen from that camera: one component per shading mode (albedo, lambertian,
textureless by default), each N(mu_k, s^2 I), equal weights. For z_t = a x0 + sigma eps the
minimum-mean-squared-error noise prediction is then

    E[eps | z_t] = sum_k r_k(z_t) sigma (z_t - a mu_k) / (a^2 s^2 + sigma^2),
    r_k = softmax_k(-|z_t - a mu_k|^2 / (2 (a^2 s^2 + sigma^2)))

(z_t given k is N(a mu_k, (a^2 s^2 + sigma^2) I), and eps, z_t are jointly Gaussian with
covariance sigma I). The unconditional model (empty prompt) is one Gaussian around mid-grey.
SDS with this prior must pull a render to the target's render: the trainer's tests measure it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import tyro
from torch import Tensor

from dreamfusion.guidance import sds
from dreamfusion.guidance.base import SDSOutput
from dreamfusion.guidance.sds import SDSConfig
from dreamfusion.prior.schedule import NoiseSchedule
from dreamfusion.render.shading import SHADING_MODES, ShadingConfig, ShadingMode, shade
from dreamfusion.scene.cameras import Cameras
from dreamfusion.scene.rays import generate_rays, intersect_sphere


@dataclass
class ClosedFormGuidanceConfig:
    """An exact diffusion model of a known object's renders: SDS without a network (tests, smoke runs)."""

    name: tyro.conf.Suppress[Literal["closed-form"]] = "closed-form"
    """The backend's tag (config.json's guidance.name)."""
    target_shape: Literal["sphere"] = "sphere"
    """The known object whose renders are the data distribution."""
    target_radius: float = 0.45
    """Radius of the target sphere."""
    target_color: tuple[float, float, float] = (0.8, 0.2, 0.2)
    """Albedo of the target when the prompt names no known color."""
    data_std: float = 0.05
    """Standard deviation of the Gaussian data around each target image ([-1, 1] units)."""
    uncond_std: float = 0.5
    """Standard deviation of the unconditional (empty prompt) Gaussian around mid-grey."""
    target_modes: tuple[Literal["albedo", "lambertian", "textureless"], ...] = (
        "albedo",
        "lambertian",
        "textureless",
    )
    """Shading modes of the target renders forming the equally weighted data mixture."""
    noise_schedule: Literal["linear", "cosine"] = "linear"
    """DDPM noise schedule of the model (linear betas 1e-4..0.02, or cosine), T = 1000."""
    # Only stable-diffusion renders latents; the trainer reads this of every backend.
    latent_warmup: ClassVar[float] = 0.0


COLOR_WORDS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.15),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.85),
    "yellow": (0.90, 0.80, 0.15),
    "orange": (0.95, 0.50, 0.10),
    "purple": (0.55, 0.20, 0.75),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
    "gray": (0.50, 0.50, 0.50),
    "grey": (0.50, 0.50, 0.50),
}
"""Albedo (RGB in [0, 1]) of the target when a prompt contains the word; the first one named wins."""


def prompt_color(prompt: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
    """The albedo a prompt asks for: its first whole-word color from COLOR_WORDS, else `default`."""
    if not prompt.strip():
        raise ValueError("the closed-form guidance needs a non-empty prompt (the empty one is unconditional)")
    for word in re.findall(r"[a-z]+", prompt.lower()):
        if word in COLOR_WORDS:
            return COLOR_WORDS[word]
    return default


def mixture_responsibilities(
    z: Tensor, means: Tensor, alpha: Tensor, sigma: Tensor, data_std: float
) -> Tensor:
    """Posterior component probabilities r_k(z_t) of an equal-weight isotropic Gaussian mixture.

    z (B, ...), means (B, K, ...), alpha and sigma (B,) -> (B, K), rows summing to 1. Computed in
    log space: over thousands of pixels the squared distances differ by far more than exp can hold.
    """
    shape = (-1,) + (1,) * (means.dim() - 1)
    var = (alpha**2 * data_std**2 + sigma**2).view(shape)  # (B, 1, ...)
    sq = (z[:, None] - alpha.view(shape) * means) ** 2 / (2.0 * var)
    return torch.softmax(-sq.flatten(2).sum(-1), dim=1)


def mixture_eps(z: Tensor, means: Tensor, alpha: Tensor, sigma: Tensor, data_std: float) -> Tensor:
    """E[eps | z_t] for data ~ (1/K) sum_k N(mu_k, s^2 I): z (B, ...), means (B, K, ...) -> (B, ...)."""
    shape = (-1,) + (1,) * (means.dim() - 1)
    var = (alpha**2 * data_std**2 + sigma**2).view(shape)
    per_component = sigma.view(shape) * (z[:, None] - alpha.view(shape) * means) / var  # (B, K, ...)
    r = mixture_responsibilities(z, means, alpha, sigma, data_std)  # (B, K)
    return (r.view(r.shape + (1,) * (means.dim() - 2)) * per_component).sum(1)


def render_sphere(
    cameras: Cameras,
    radius: float,
    albedo: Tensor,
    mode: ShadingMode,
    shading_cfg: ShadingConfig,
    background_color: Tensor,
) -> Tensor:
    """Exact render of a solid sphere at the origin by ray-sphere intersection at pixel centers.

    albedo (B, 3) or (3,), background_color (3,) -> (B, 3, H, W) in [0, 1], on the cameras' device.
    """
    origins, directions = generate_rays(cameras)  # (B, H, W, 3) each
    near, _, hit = intersect_sphere(origins, directions, radius)  # (B, H, W)
    points = origins + near[..., None] * directions
    normals = points / radius
    albedo = albedo.to(points).expand(len(cameras), 3)[:, None, None, :].expand_as(points)
    light = cameras.light_position[:, None, None, :]  # (B, 1, 1, 3)
    color = shade(mode, albedo, normals, points, light, shading_cfg)
    image = torch.where(hit[..., None], color, background_color.to(color))
    return image.permute(0, 3, 1, 2).contiguous()


class ClosedFormGuidance:
    """The Guidance protocol with an exact noise predictor (no network, no weights)."""

    def __init__(
        self,
        cfg: ClosedFormGuidanceConfig,
        sds_cfg: SDSConfig,
        shading_cfg: ShadingConfig,
        background_color: tuple[float, float, float] = (1.0, 1.0, 1.0),
        device: torch.device | str = "cpu",
    ) -> None:
        if cfg.target_shape != "sphere":
            raise ValueError(f"unknown closed-form target shape '{cfg.target_shape}' (only 'sphere')")
        unknown = [m for m in cfg.target_modes if m not in SHADING_MODES]
        if unknown or not cfg.target_modes:
            raise ValueError(
                f"target_modes must be a non-empty subset of {SHADING_MODES}, got {cfg.target_modes}"
            )
        self.cfg = cfg
        self.sds_cfg = sds_cfg
        self.shading_cfg = shading_cfg
        self.background_color = torch.tensor(background_color, dtype=torch.float32)
        self.schedule = NoiseSchedule(kind=cfg.noise_schedule, device=device)

    def embed(self, prompts: Sequence[str]) -> Tensor:
        """Target albedo of each prompt: (P, 3) on the CPU. Empty or blank prompts raise ValueError."""
        if isinstance(prompts, str):
            raise TypeError("embed takes a sequence of prompts, not one string")
        return torch.tensor([prompt_color(p, self.cfg.target_color) for p in prompts], dtype=torch.float32)

    def target_images(self, cameras: Cameras, color: Tensor | Sequence[float], mode: ShadingMode) -> Tensor:
        """The target seen by `cameras` in one shading mode: color (3,) or (B, 3) -> (B, 3, H, W), [0, 1]."""
        color = torch.as_tensor(color, dtype=torch.float32, device=cameras.c2w.device)
        return render_sphere(
            cameras, self.cfg.target_radius, color, mode, self.shading_cfg, self.background_color
        )

    def target_means(self, cameras: Cameras, colors: Tensor) -> Tensor:
        """Mixture means mu_k in [-1, 1]: colors (B, 3) -> (B, K, 3, H, W), K = len(target_modes)."""
        renders = [self.target_images(cameras, colors, mode) for mode in self.cfg.target_modes]
        return torch.stack(renders, dim=1) * 2.0 - 1.0

    def sds_loss(
        self,
        images: Tensor,  # (B, 3, H, W) in [0, 1]
        embeddings: Tensor,  # (P, 3) from `embed`
        prompt_index: Tensor,  # (B,)
        cameras: Cameras,
        generator: torch.Generator,
        progress: float,  # unused: this prior does not change over training
        shading: str | None = None,  # unused: this prior judges any shading alike
    ) -> SDSOutput:
        """SDS of the renders against the exact prior. Images are mapped to x = 2 images - 1, so the
        gradient with respect to `images` is 2 w(t) (eps_hat - eps) / B."""
        B, _, H, W = images.shape
        if (H, W) != (cameras.height, cameras.width) or len(cameras) != B:
            raise ValueError(
                f"images {tuple(images.shape)} do not match {len(cameras)} cameras of "
                f"{cameras.height}x{cameras.width}"
            )
        device = images.device
        self.schedule = self.schedule.to(device)
        cameras = cameras.to(device)
        colors = embeddings.to(device)[prompt_index.to(device)]  # (B, 3)
        with torch.no_grad():
            means = self.target_means(cameras, colors).to(images.dtype)  # (B, K, 3, H, W)
        grey = torch.zeros_like(means[:, :1])  # mid-grey is 0 in [-1, 1]
        schedule = self.schedule

        def denoise(z_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            alpha, sigma = schedule.alpha(t).to(z_t.dtype), schedule.sigma(t).to(z_t.dtype)
            eps_uncond = mixture_eps(z_t, grey, alpha, sigma, self.cfg.uncond_std)
            eps_cond = mixture_eps(z_t, means, alpha, sigma, self.cfg.data_std)
            return eps_uncond, eps_cond

        x = images * 2.0 - 1.0
        return sds.score_distillation(x, denoise, schedule.alphas_cumprod, self.sds_cfg, generator)
