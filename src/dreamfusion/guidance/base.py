"""The guidance protocol every backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from dreamfusion.scene.cameras import Cameras


@dataclass
class SDSOutput:
    """What a guidance backend returns for a batch of renders."""

    # Scalar whose gradient w.r.t. the model's input x is w(t) (eps_hat - eps) / B; x is the image in
    # the model's space (pixels scaled to [-1, 1] for pixel models, so d/d image is twice that).
    loss: Tensor
    timesteps: Tensor  # (B,) integer timesteps used
    grad_norm: Tensor  # scalar: mean norm of w(t) (eps_hat - eps) per image, for logging


class Guidance(Protocol):
    """A frozen text-to-image diffusion model used as a critic.

    The trainer calls `embed` once per run with every prompt it will need (the view prompts),
    then `sds_loss` every step with the images rendered from `cameras`, in [0, 1].
    """

    def embed(self, prompts: Sequence[str]) -> Any:
        """Embed the prompts (and the empty prompt for guidance) once; returns an opaque handle."""
        ...

    def sds_loss(
        self,
        images: Tensor,  # (B, 3, H, W) in [0, 1]
        embeddings: Any,  # what `embed` returned
        prompt_index: Tensor,  # (B,) which embedded prompt each image is scored against
        cameras: Cameras,
        generator: torch.Generator,
        progress: float,  # fraction of training done, in [0, 1]
        shading: str | None = None,  # how the images were shaded (albedo, lambertian, textureless)
    ) -> SDSOutput:
        """The SDS loss for the batch, computed by `dreamfusion.guidance.sds`."""
        ...


@runtime_checkable
class LatentGuidance(Guidance, Protocol):
    """A latent model that can also score a render taken as its latent (`guidance.latent_warmup`);
    the trainer checks for it with isinstance."""

    def sds_loss_latent(
        self,
        latents: Tensor,  # (B, 4, H, W) in [0, 1]: normal-map colors and opacity
        embeddings: Any,
        prompt_index: Tensor,
        cameras: Cameras,
        generator: torch.Generator,
        progress: float,
    ) -> SDSOutput:
        """SDS with the render itself as the latent (resized, scaled to [-1, 1]; no VAE)."""
        ...
