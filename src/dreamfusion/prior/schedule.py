"""The DDPM noise schedule: how much signal and noise a diffusion timestep keeps.

Variance-preserving forward process, indexed like diffusers (t = 0 is the least noisy step):

    alphabar_t = prod_{i <= t} (1 - beta_i),   z_t = alpha_t x + sigma_t eps,
    alpha_t = sqrt(alphabar_t),                 sigma_t = sqrt(1 - alphabar_t).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

ScheduleKind = Literal["linear", "cosine"]


def linear_alphas_cumprod(num_train_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """DDPM (Ho et al. 2020): betas linear from beta_start to beta_end. Returns (T,) float64."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def cosine_alphas_cumprod(num_train_timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Improved DDPM (Nichol and Dhariwal 2021): alphabar(u) = cos^2((u + s) / (1 + s) * pi / 2).

    Betas are derived from consecutive ratios and capped at `max_beta` so the last step does not
    destroy the signal in one jump (alphabar_T would otherwise be exactly 0). Returns (T,) float64.
    """
    u = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    f = torch.cos((u + offset) / (1.0 + offset) * math.pi / 2.0) ** 2
    betas = (1.0 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1.0 - betas, dim=0)


class NoiseSchedule:
    """alphabar_t for t in [0, T) and the alpha_t, sigma_t derived from it.

    `alphas_cumprod` is stored in float32 (computed in float64) so it can live on any device,
    including ones without float64 support.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        kind: ScheduleKind = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be positive, got {num_train_timesteps}")
        if kind == "linear":
            alphas_cumprod = linear_alphas_cumprod(num_train_timesteps, beta_start, beta_end)
        elif kind == "cosine":
            alphas_cumprod = cosine_alphas_cumprod(num_train_timesteps)
        else:
            raise ValueError(f"unknown noise schedule '{kind}' (use 'linear' or 'cosine')")
        self.kind = kind
        self.num_train_timesteps = num_train_timesteps
        self.alphas_cumprod = alphas_cumprod.to(device=device, dtype=torch.float32)  # (T,)

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def alpha(self, t: Tensor) -> Tensor:
        """sqrt(alphabar_t): (B,) long -> (B,) float on t's device."""
        return self.alphas_cumprod.to(t.device)[t].sqrt()

    def sigma(self, t: Tensor) -> Tensor:
        """sqrt(1 - alphabar_t): (B,) long -> (B,) float on t's device."""
        return (1.0 - self.alphas_cumprod.to(t.device)[t]).sqrt()

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """The same schedule with its table on `device` (self when already there)."""
        if torch.device(device) == self.device:
            return self
        moved = object.__new__(NoiseSchedule)
        moved.kind = self.kind
        moved.num_train_timesteps = self.num_train_timesteps
        moved.alphas_cumprod = self.alphas_cumprod.to(device)
        return moved

    def __repr__(self) -> str:
        return f"NoiseSchedule(kind={self.kind!r}, T={self.num_train_timesteps}, device={self.device})"


def to_epsilon(pred: Tensor, z_t: Tensor, alphabar: Tensor, prediction_type: str) -> Tensor:
    """The model's output as a noise prediction. alphabar (N,) per row; v: eps = alpha v + sigma z_t."""
    if prediction_type == "epsilon":
        return pred
    a = alphabar.view(-1, 1, 1, 1).sqrt().to(pred.dtype)
    s = (1.0 - alphabar).view(-1, 1, 1, 1).sqrt().to(pred.dtype)
    if prediction_type == "v_prediction":
        return a * pred + s * z_t
    if prediction_type == "sample":
        return (z_t - a * pred) / s
    raise ValueError(f"unsupported prediction_type '{prediction_type}'")
