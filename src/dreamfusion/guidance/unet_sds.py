"""The SDS step around a frozen diffusers U-Net, shared by the Stable Diffusion and IF backends.

The backend turns renders into the diffusion variable x (a VAE latent, or pixels in [-1, 1]);
`guided_sds` supplies `dreamfusion.guidance.sds.score_distillation` with a denoiser that runs the U-Net on the
unconditional and conditional branches in one batch (with Perp-Neg: also two negatives), in the
U-Net's own dtype, and hands back float32 noise predictions. CFG and the SDS gradient stay in sds.py.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dreamfusion.guidance import sds
from dreamfusion.guidance.base import SDSOutput
from dreamfusion.guidance.diffusers_common import DiffusersGuidanceConfig, PromptEmbeddings
from dreamfusion.guidance.graphs import CompiledOrEager, GraphedForward, compile_by_default
from dreamfusion.guidance.perp_neg import UNCOND, perp_neg_conditional, perp_neg_plan
from dreamfusion.guidance.sds import SDSConfig
from dreamfusion.prior.schedule import to_epsilon
from dreamfusion.scene.cameras import Cameras
from dreamfusion.scene.prompts import VIEWS


def annealed_t_range(cfg: SDSConfig, progress: float) -> tuple[float, float]:
    """The timestep range at a fraction `progress` of training under cfg.t_anneal (t_max only moves down)."""
    lo, hi = cfg.t_range
    if cfg.t_anneal == "none" or progress < cfg.t_anneal_start:
        return (lo, hi)
    end = min(max(cfg.t_anneal_end, lo), hi)
    u = min(max((progress - cfg.t_anneal_start) / max(1.0 - cfg.t_anneal_start, 1e-8), 0.0), 1.0)
    schedules = {"linear": u, "sqrt": math.sqrt(u), "step": 1.0}
    if cfg.t_anneal not in schedules:
        raise ValueError(f"unknown t_anneal '{cfg.t_anneal}' (use none, linear, sqrt or step)")
    return (lo, hi + (end - hi) * schedules[cfg.t_anneal])


@dataclass
class FrozenUNet:
    """A frozen diffusers U-Net with its noise schedule, called in its own dtype."""

    unet: Any  # UNet2DConditionModel, possibly torch.compile'd
    alphas_cumprod: Tensor  # (T,) float32 on the U-Net's device
    prediction_type: str
    dtype: torch.dtype
    channels: int  # input channels; IF also predicts a variance range in the next `channels`
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        self._forward = GraphedForward(self._forward_eager, enabled=self.cuda_graphs)

    def _forward_eager(self, z_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        return self.unet(z_t, t, encoder_hidden_states=emb, return_dict=False)[0]

    def eps(self, z_t: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """Noise prediction in float32: z_t (N, C, H, W), t (N,), emb (N, L, D) -> (N, C, H, W).

        Cast in and out explicitly (no autocast): a float16 U-Net sees float16 inputs and the SDS
        arithmetic after it stays in float32.
        """
        out = self._forward(z_t.to(self.dtype), t, emb.to(self.dtype))
        out = out[:, : self.channels].float()
        return to_epsilon(out, z_t.float(), self.alphas_cumprod[t], self.prediction_type)


def frozen_unet(unet: Any, scheduler: Any, cfg: DiffusersGuidanceConfig) -> FrozenUNet:
    """Freeze a loaded U-Net and pair it with its scheduler's alphas_cumprod (optionally compiled)."""
    unet.requires_grad_(False).eval()
    if cfg.channels_last:
        unet.to(memory_format=torch.channels_last)
    device = next(unet.parameters()).device
    return FrozenUNet(
        unet=CompiledOrEager(unet) if compile_by_default(cfg.compile, device) else unet,
        alphas_cumprod=scheduler.alphas_cumprod.to(device=device, dtype=torch.float32),
        prediction_type=scheduler.config.prediction_type,
        dtype=unet.dtype,
        channels=unet.config.in_channels,
        # A compiled U-Net is captured too: its fused kernels replay in one launch.
        cuda_graphs=cfg.cuda_graphs,
    )


def guided_sds(
    model: FrozenUNet,
    x: Tensor,  # (B, C, H, W): latents or [-1, 1] pixels, with gradient
    embeddings: PromptEmbeddings,
    prompt_index: Tensor,  # (B,)
    cameras: Cameras,
    generator: torch.Generator,
    progress: float,
    cfg: DiffusersGuidanceConfig,
    sds_cfg: SDSConfig,
) -> SDSOutput:
    """One SDS estimate through `sds.score_distillation`; this only supplies the denoiser.

    The unconditional and conditional branches (and Perp-Neg's two negatives) run as one batch.
    """
    B = x.shape[0]
    t_range = annealed_t_range(sds_cfg, progress)
    if t_range != tuple(sds_cfg.t_range):
        sds_cfg = dataclasses.replace(sds_cfg, t_range=t_range)
    prompt_index = prompt_index.to(embeddings.cond.device)
    uncond = embeddings.uncond.expand(B, -1, -1)  # (B, L, D)
    if cfg.perp_neg:
        rows = embeddings.view_rows()
        table = torch.cat([embeddings.cond[rows], embeddings.uncond])  # (V + 1, L, D), UNCOND last
        plan = perp_neg_plan(
            cameras.azimuth.to(x.device),
            prompt_index == rows[VIEWS.index("overhead")],
            cfg.perp_neg_front_side,
            cfg.perp_neg_side_front,
            cfg.perp_neg_side_back,
            cfg.perp_neg_front_back,
        )
        positive = torch.einsum("bv,vld->bld", plan.positive.to(table.dtype), table[:UNCOND])
        negatives = table[plan.negatives]  # (B, 2, L, D)
        emb = torch.cat([uncond, positive, negatives[:, 0], negatives[:, 1]])  # (4B, L, D)

        def denoise(z_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            eps = model.eps(z_t.repeat(4, 1, 1, 1), t.repeat(4), emb).view(4, *z_t.shape)
            return eps[0], perp_neg_conditional(eps[0], eps[1], eps[2:], plan.weights)

    else:
        emb = torch.cat([uncond, embeddings.cond[prompt_index]])  # (2B, L, D)

        def denoise(z_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            eps_uncond, eps_cond = model.eps(torch.cat([z_t, z_t]), torch.cat([t, t]), emb).chunk(2)
            return eps_uncond, eps_cond

    return sds.score_distillation(x, denoise, model.alphas_cumprod, sds_cfg, generator)


def check_images(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
