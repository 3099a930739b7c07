"""Shading of field samples, and the paper's schedule of shading modes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor


@dataclass
class ShadingConfig:
    """Shading of each sample and the schedule of shading modes (paper section 3, step 2)."""

    ambient: float = 0.1
    """Ambient light l_a."""
    light_intensity: float = 0.9
    """Point-light color l_p (grey)."""
    albedo_warmup_steps: int = 1000
    """Render the albedo alone for this many first steps."""
    shaded_probability: float = 0.75
    """After warm-up: probability of a lit render (else albedo only)."""
    textureless_probability: float = 0.5
    """Of lit renders: probability of a textureless one (white albedo)."""


ShadingMode = Literal["albedo", "lambertian", "textureless"]
SHADING_MODES: tuple[ShadingMode, ...] = ("albedo", "lambertian", "textureless")


def lambertian(
    albedo: Tensor, normals: Tensor, points: Tensor, light_position: Tensor, ambient: float, intensity: float
) -> Tensor:
    """c = rho * (l_p * max(0, n . (l - mu) / |l - mu|) + l_a); all (..., 3), light broadcastable."""
    to_light = torch.nn.functional.normalize(light_position - points, dim=-1)
    diffuse = (normals * to_light).sum(-1, keepdim=True).clamp(min=0.0)
    return albedo * (intensity * diffuse + ambient)


def shade(
    mode: ShadingMode,
    albedo: Tensor,
    normals: Tensor | None,
    points: Tensor,
    light_position: Tensor,
    cfg: ShadingConfig,
) -> Tensor:
    """Color of each sample (..., 3) under a shading mode."""
    if mode == "albedo":
        return albedo
    if normals is None:
        raise ValueError(f"shading mode '{mode}' needs normals; render with compute_normals=True")
    if mode == "lambertian":
        return lambertian(albedo, normals, points, light_position, cfg.ambient, cfg.light_intensity)
    if mode == "textureless":
        white = torch.ones_like(albedo)
        return lambertian(white, normals, points, light_position, cfg.ambient, cfg.light_intensity)
    raise ValueError(f"unknown shading mode '{mode}' (use one of {', '.join(SHADING_MODES)})")


def choose_shading(step: int, cfg: ShadingConfig, generator: torch.Generator) -> ShadingMode:
    """The paper's schedule: albedo only during warm-up, then lit with probability 0.75
    (half of those textureless), else albedo. Draws from `generator` at every step so the
    random stream does not depend on the warm-up length."""
    u = torch.rand(2, generator=generator)
    if step < cfg.albedo_warmup_steps:
        return "albedo"
    if u[0] >= cfg.shaded_probability:
        return "albedo"
    return "textureless" if u[1] < cfg.textureless_probability else "lambertian"
