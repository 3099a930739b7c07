"""Score distillation sampling (paper section 3.2): the one place its gradient and CFG are written.

Every guidance backend renders nothing and knows nothing of SDS: it supplies a `denoise`
callable that runs its frozen model, and `score_distillation` does the rest:

    t ~ U[t_lo, t_hi),  eps ~ N(0, I),  z_t = alpha_t x + sigma_t eps
    eps_hat = CFG(eps_uncond(z_t, t), eps_cond(z_t, t))        (no gradient)
    grad_x  = w(t) (eps_hat - eps)                              (U-Net Jacobian dropped)

The gradient is injected through a surrogate loss whose derivative is exactly grad_x / B, so
the caller back-propagates it into whatever produced x (a NeRF render, a VAE latent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dreamfusion.guidance.base import SDSOutput


@dataclass
class SDSConfig:
    """Score distillation sampling, shared by every guidance backend."""

    t_range: tuple[float, float] = (0.02, 0.98)
    """Diffusion timesteps are drawn uniformly from this fraction of the model's range."""
    guidance_scale: float = 100.0
    """Classifier-free guidance weight omega."""
    cfg_formulation: Literal["uncond", "cond"] = "uncond"
    """uncond: eps_u + omega (eps_c - eps_u) (the paper); cond: eps_c + omega (eps_c - eps_u)."""
    weighting: Literal["sigma2", "uniform", "snr_sqrt"] = "sigma2"
    """w(t): sigma2 = 1 - alphabar_t (the paper), uniform = 1, snr_sqrt = sqrt(alphabar_t) sigma_t."""
    grad_clip: float = 0.0
    """Clip |w (eps_hat - eps)| elementwise at this value (0: off)."""
    t_anneal: Literal["none", "linear", "sqrt", "step"] = "none"
    """Lower the top of t_range over training (beyond the paper): none keeps t_range; linear and sqrt move
    t_max from t_range[1] to t_anneal_end between t_anneal_start and the end; step jumps at t_anneal_start.
    Applied by the diffusers backends from the trainer's progress."""
    t_anneal_end: float = 0.5
    """t_max at the end of training when t_anneal is not none (fraction of the model's timesteps)."""
    t_anneal_start: float = 0.0
    """Fraction of training before which t_range is used unchanged (step: the fraction where t_max jumps)."""


CFGFormulation = Literal["uncond", "cond"]
Weighting = Literal["sigma2", "uniform", "snr_sqrt"]

Denoiser = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""denoise(z_t (B, C, H, W), t (B,) long) -> (eps_uncond, eps_cond), each (B, C, H, W)."""


def guided_eps(eps_uncond: Tensor, eps_cond: Tensor, scale: float, formulation: CFGFormulation) -> Tensor:
    """Classifier-free guidance with the formulation made explicit.

    'uncond' (the paper, Ho and Salimans): eps_u + s (eps_c - eps_u); scale 1 gives eps_c.
    'cond' (some open implementations): eps_c + s (eps_c - eps_u), i.e. 'uncond' at s + 1.
    """
    if formulation == "uncond":
        return eps_uncond + scale * (eps_cond - eps_uncond)
    if formulation == "cond":
        return eps_cond + scale * (eps_cond - eps_uncond)
    raise ValueError(f"unknown CFG formulation '{formulation}' (use 'uncond' or 'cond')")


def sds_weight(alphas_cumprod: Tensor, t: Tensor, kind: Weighting) -> Tensor:
    """w(t) for each timestep: (T,), (B,) long -> (B,) on t's device.

    'sigma2': 1 - alphabar_t (the paper); 'uniform': 1; 'snr_sqrt': sqrt(alphabar_t (1 - alphabar_t)).
    """
    alphabar = alphas_cumprod.to(t.device)[t]
    if kind == "sigma2":
        return 1.0 - alphabar
    if kind == "uniform":
        return torch.ones_like(alphabar)
    if kind == "snr_sqrt":
        return alphabar.sqrt() * (1.0 - alphabar).sqrt()
    raise ValueError(f"unknown SDS weighting '{kind}' (use 'sigma2', 'uniform' or 'snr_sqrt')")


def timestep_bounds(num_train_timesteps: int, t_range: tuple[float, float]) -> tuple[int, int]:
    """[lo, hi) integer timesteps for a fractional range: lo = round(t_lo T), hi = round(t_hi T).

    A range that rounds to nothing (t_lo == t_hi) keeps the single timestep lo.
    """
    t_lo, t_hi = t_range
    if not 0.0 <= t_lo <= t_hi <= 1.0:
        raise ValueError(f"t_range must satisfy 0 <= t_lo <= t_hi <= 1, got {t_range}")
    lo = min(round(t_lo * num_train_timesteps), num_train_timesteps - 1)
    hi = max(round(t_hi * num_train_timesteps), lo + 1)
    return lo, hi


def sample_timesteps(
    batch: int,
    num_train_timesteps: int,
    t_range: tuple[float, float],
    generator: torch.Generator,
    device: torch.device | str,
) -> Tensor:
    """(batch,) long timesteps uniform on [round(t_lo T), round(t_hi T)) (hi exclusive).

    Drawn on the generator's device, then moved, so a CPU generator gives the same draws
    whichever device trains.
    """
    lo, hi = timestep_bounds(num_train_timesteps, t_range)
    t = torch.randint(lo, hi, (batch,), generator=generator, device=generator.device)
    return t.to(device)


def sds_grad(eps_hat: Tensor, eps: Tensor, w: Tensor, grad_clip: float = 0.0) -> Tensor:
    """w(t) (eps_hat - eps) in float32, non-finite values zeroed, optionally clamped elementwise.

    eps_hat, eps: (B, C, H, W); w: (B,) or broadcastable. Returns (B, C, H, W) float32.
    """
    if w.dim() == 1:
        w = w.view(-1, *([1] * (eps.dim() - 1)))
    grad = w.float() * (eps_hat.float() - eps.float())
    # A half-precision U-Net can overflow at large guidance; one bad pixel must not kill the run.
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    if grad_clip > 0.0:
        grad = grad.clamp(-grad_clip, grad_clip)
    return grad


def surrogate_loss(x: Tensor, grad: Tensor) -> Tensor:
    """0.5 sum((x - target)^2) / B with target = (x - grad).detach(): d loss / d x = grad / B.

    The loss value itself (0.5 |grad|^2 / B) says nothing about convergence; only its gradient matters.
    """
    target = (x.float() - grad).detach()
    return 0.5 * ((x.float() - target) ** 2).sum() / x.shape[0]


def sds_loss(x: Tensor, eps_hat: Tensor, eps: Tensor, w: Tensor, grad_clip: float = 0.0) -> Tensor:
    """Scalar SDS surrogate loss for x (B, C, H, W); its gradient is w (eps_hat - eps) / B."""
    return surrogate_loss(x, sds_grad(eps_hat, eps, w, grad_clip))


def score_distillation(
    x: Tensor,
    denoise: Denoiser,
    alphas_cumprod: Tensor,
    cfg: SDSConfig,
    generator: torch.Generator,
) -> SDSOutput:
    """One SDS estimate for a batch x (B, C, H, W) in the model's input space (pixels in [-1, 1]
    or latents).

    Random draws, in this order, from `generator` (on its own device): t (B,), then eps
    (B, C, H, W) in x's dtype. The frozen model runs under no_grad on a detached z_t, so it is
    never back-propagated through; the gradient reaches x only through the surrogate loss.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    B = x.shape[0]
    t = sample_timesteps(B, alphas_cumprod.shape[0], cfg.t_range, generator, x.device)
    eps = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
    alphabar = alphas_cumprod.to(x.device)[t].to(x.dtype).view(B, 1, 1, 1)
    with torch.no_grad():
        z_t = alphabar.sqrt() * x.detach() + (1.0 - alphabar).sqrt() * eps
        eps_uncond, eps_cond = denoise(z_t, t)
        eps_hat = guided_eps(eps_uncond, eps_cond, cfg.guidance_scale, cfg.cfg_formulation)
    w = sds_weight(alphas_cumprod, t, cfg.weighting)
    grad = sds_grad(eps_hat, eps, w, cfg.grad_clip)
    return SDSOutput(
        loss=surrogate_loss(x, grad),
        timesteps=t,
        grad_norm=grad.flatten(1).norm(dim=1).mean(),
    )
