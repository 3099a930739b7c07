"""DeepFloyd IF stage I as the frozen prior: SDS on the 64x64 render itself, in pixel space.

The closest public model to the paper's Imagen: a pixel-space cascaded model whose first stage
works at 64x64 from T5-XXL text embeddings. The render, scaled to [-1, 1], is the diffusion variable;
no VAE. The U-Net also predicts a variance range (6 output channels); SDS keeps the noise half.

T5-XXL (4.7B parameters) is loaded only when a prompt misses the embedding cache and dropped right
after embedding, so training holds only the stage-I U-Net.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

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
from dreamfusion.guidance.sds import SDSConfig
from dreamfusion.guidance.unet_sds import check_images, frozen_unet, guided_sds
from dreamfusion.scene.cameras import Cameras


@dataclass
class DeepFloydIFConfig(DiffusersGuidanceConfig):
    """DeepFloyd IF stage I (diffusers): SDS on 64x64 pixels."""

    name: tyro.conf.Suppress[Literal["deepfloyd-if"]] = "deepfloyd-if"
    """The backend's tag (config.json's guidance.name)."""
    # Only stable-diffusion renders latents; the trainer reads this of every backend.
    latent_warmup: ClassVar[float] = 0.0


DEFAULT_MODEL = "DeepFloyd/IF-I-XL-v1.0"
"""IF stage I, XL (4.3B U-Net). Gated: accept the license on its Hub page and log in first."""

MAX_TOKENS = 77
"""T5 sequence length IFPipeline.encode_prompt uses."""

KIND = ModelKind(
    backend="deepfloyd-if",
    pipelines=("IFPipeline",),
    components=("unet", "scheduler", "text_encoder", "tokenizer"),
    default_id=DEFAULT_MODEL,
)


class DeepFloydIFGuidance:
    """The Guidance protocol for IF stage I (pixel-space U-Net on 64x64 images)."""

    def __init__(
        self,
        unet: Any,  # diffusers UNet2DConditionModel of IF stage I, on the training device
        scheduler: Any,  # diffusers scheduler with alphas_cumprod and config.prediction_type
        cfg: DeepFloydIFConfig,
        sds_cfg: SDSConfig,
        load_text_encoder: Callable[[], TextEncoder] | None = None,
        fingerprint: str = "",
    ) -> None:
        if unet.config.in_channels != 3 or getattr(unet.config, "class_embed_type", None) is not None:
            raise UserError(
                "the model's U-Net is not an IF stage-I U-Net (3 input channels, no noise-level class "
                f"embedding); use a stage-I model such as {DEFAULT_MODEL}"
            )
        self.cfg, self.sds_cfg = cfg, sds_cfg
        self.model = frozen_unet(unet, scheduler, cfg)
        self.device = next(unet.parameters()).device
        self.image_size = cfg.image_size or unet.config.sample_size  # 64 for IF-I
        self.load_text_encoder = load_text_encoder
        self.fingerprint = fingerprint

    def embed(self, prompts: Sequence[str]) -> PromptEmbeddings:
        """T5 embeddings of the prompts and the negative prompt: (P, 77, D) and (1, 77, D)."""
        if self.load_text_encoder is None:
            raise ValueError("this guidance was built without a text encoder; pass PromptEmbeddings directly")
        return embed_prompts(
            prompts, self.cfg, self.fingerprint, self.load_text_encoder, self.device, self.model.dtype
        )

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
        """SDS on x = 2 images - 1 at the U-Net's size; gradient w.r.t. x is w (eps_hat - eps) / B."""
        check_images(images)
        x = images.to(self.device)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        x = x * 2.0 - 1.0
        return guided_sds(
            self.model, x, embeddings, prompt_index, cameras, generator, progress, self.cfg, self.sds_cfg
        )


def t5_text_encoder(tokenizer: Any, text_encoder: Any) -> TextEncoder:
    """encode(texts) -> (N, 77, D), as IFPipeline.encode_prompt without caption cleaning (lower-cased)."""
    device = next(text_encoder.parameters()).device

    def encode(texts: list[str]) -> Tensor:
        texts = [t.lower().strip() for t in texts]
        tokens = tokenizer(
            texts,
            padding="max_length",
            max_length=MAX_TOKENS,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return text_encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))[0]

    return encode


def load_deepfloyd_if(
    cfg: DeepFloydIFConfig, sds_cfg: SDSConfig, device: torch.device
) -> DeepFloydIFGuidance:
    """Find, validate and load the stage-I model named by cfg.model (default DEFAULT_MODEL) onto `device`."""
    require_diffusers("deepfloyd-if")
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, T5EncoderModel

    source = locate_model(cfg.model or DEFAULT_MODEL, cfg.revision, KIND)
    dtype = resolve_dtype(cfg.dtype, device)
    unet = load_component(UNet2DConditionModel, source, "unet", dtype, cfg.variant).to(device)
    scheduler = load_component(DDPMScheduler, source, "scheduler")

    def load_text_encoder() -> TextEncoder:
        tokenizer = load_component(AutoTokenizer, source, "tokenizer")
        text_encoder = load_component(T5EncoderModel, source, "text_encoder", dtype, cfg.variant)
        return t5_text_encoder(tokenizer, text_encoder.to(device).eval())

    return DeepFloydIFGuidance(unet, scheduler, cfg, sds_cfg, load_text_encoder, source.fingerprint)
