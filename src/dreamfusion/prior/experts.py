"""Two priors as experts by noise level (as in eDiff-I): one denoises below a timestep, the other
from it up, so a prior fine-tuned at high noise (where the azimuth is decided) can take the
noisy end while the shipped prior keeps the details (benchmarks/prior_experts.py checks that the
pair keeps the shipped prior's samples). `Experts` has the interface samplers and
`BundledGuidance` use: encode, eps, alphas_cumprod, cfg, device, image_size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dreamfusion.prior.model import PriorModel
from dreamfusion.prior.text import TextStates


class Experts(nn.Module):
    """`low` denoises t < cut, `high` t >= cut, where cut = round(high_from * T). Each keeps its own
    text encoder: the text states of both sit side by side along the feature axis, so samplers and
    SDS pass them around as one. Raises ValueError for a high_from outside (0, 1) or priors that do
    not share their schedule, prediction, words and image size."""

    def __init__(self, low: PriorModel, high: PriorModel, high_from: float) -> None:
        super().__init__()
        if not 0.0 < high_from < 1.0:
            raise ValueError(f"the high-noise expert's start must be in (0, 1) (got {high_from})")
        same = ("schedule", "num_train_timesteps", "prediction", "words", "max_tokens")
        if any(getattr(low.cfg, k) != getattr(high.cfg, k) for k in same) or (
            low.image_size != high.image_size
        ):
            raise ValueError("the two priors must share their noise schedule, prediction, words, image size")
        self.low, self.high = low, high
        self.cut = round(high_from * low.cfg.num_train_timesteps)
        self.cfg, self.tokenizer, self.width = low.cfg, low.tokenizer, low.cfg.unet.text_dim
        self.register_buffer("alphas_cumprod", low.alphas_cumprod.clone(), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.low.device

    @property
    def image_size(self) -> int:
        return self.low.image_size

    def encode(self, prompts: list[str]) -> TextStates:
        a, b = self.low.encode(prompts), self.high.encode(prompts)
        return TextStates(torch.cat([a.tokens, b.tokens], -1), a.mask, torch.cat([a.pooled, b.pooled], -1))

    def eps(
        self, z: Tensor, t: Tensor, text: TextStates, camera: Tensor, mode: Tensor | None = None
    ) -> Tensor:
        """Noise prediction (B, 3, H, W) float32, each row from the expert of its timestep. On a GPU
        both experts see every row and the right one is kept: no host sync, so a CUDA graph can
        replay it (the priors are small; twice the work of one). Where the timesteps are on the CPU,
        reading them costs nothing, so a batch whose rows all fall to one expert (an SDS step's
        conditional and unconditional rows share their t) runs that expert alone: half the work,
        the same numbers."""
        w = self.width

        def low() -> Tensor:
            return self.low.eps(
                z, t, TextStates(text.tokens[..., :w], text.mask, text.pooled[..., :w]), camera, mode
            )

        def high() -> Tensor:
            return self.high.eps(
                z, t, TextStates(text.tokens[..., w:], text.mask, text.pooled[..., w:]), camera, mode
            )

        is_high = t >= self.cut  # (B,)
        if t.device.type == "cpu":
            if bool(is_high.all()):
                return high()
            if not bool(is_high.any()):
                return low()
        return torch.where(is_high.view(-1, 1, 1, 1), high(), low())
