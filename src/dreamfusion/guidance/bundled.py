"""Guidance from the bundled prior: the package's own 64x64 pixel diffusion model of the world.

Like the paper's Imagen base model, it denoises the render itself (scaled to [-1, 1]); unlike it,
it is also told the camera (elevation, azimuth, distance, focal length), which removes the
size/proportion ambiguity of a random lens at a random distance. Only the denoiser lives here:
CFG and the SDS gradient are `dreamfusion.guidance.sds.score_distillation`.

View prompts: the prior was trained on the world's captions, which say ", bottom view" for
cameras below BOTTOM_BELOW (-20) degrees; set `camera.bottom_view_below` to that value when
distilling with it, so that the trainer embeds and picks the bottom-view prompt the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
import tyro
from torch import Tensor

from dreamfusion.errors import UserError
from dreamfusion.guidance import sds
from dreamfusion.guidance.base import SDSOutput
from dreamfusion.guidance.graphs import GraphedForward
from dreamfusion.guidance.sds import SDSConfig
from dreamfusion.guidance.unet_sds import annealed_t_range
from dreamfusion.prior.model import PriorModel, expected_sha256, load_prior, sha256_sidecar
from dreamfusion.prior.text import TextStates
from dreamfusion.prior.unet import camera_input
from dreamfusion.render.shading import SHADING_MODES
from dreamfusion.scene.cameras import Cameras
from dreamfusion.scene.prompts import ALL_VIEWS
from dreamfusion.weights import HIGH_NOISE_PRIOR_PATH, PRIOR_PATH


@dataclass
class BundledGuidanceConfig:
    """The bundled prior: a small text-to-image model shipped in the package (no download)."""

    name: tyro.conf.Suppress[Literal["bundled"]] = "bundled"
    """The backend's tag (config.json's guidance.name)."""
    model: str | None = None
    """Prior weights (.safetensors); None: the packaged prior."""
    shading_aware: bool = True
    """Tell the prior how each render was shaded (albedo, lit, textureless) rather than "any shading";
    without it, textureless-looking white objects also satisfy a color prompt."""
    high_noise_model: str | None = None
    """A second prior (.safetensors) that denoises from `high_noise_from` up, the first one below
    (`prior.experts.Experts`), or "bundled" for the one in the package: a fine-tune that learned the
    azimuth at high noise (docs/prior.md). The `cpu` and `default` presets take
    "bundled"; on the command line a prior of your own (`--guidance.model`) drops it unless this flag
    is given too, and None runs the first prior alone."""
    high_noise_from: float = 0.6
    """First timestep of `high_noise_model`, as a fraction of the schedule."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Frozen prior precision: auto and float32 run it in float32 (it is small); bfloat16 and float16
    run it under autocast on CUDA."""
    cuda_graphs: bool = True
    """On CUDA, replay the frozen denoiser's forward from a CUDA graph (one launch instead of hundreds)."""
    # Only stable-diffusion renders latents; the trainer reads this of every backend.
    latent_warmup: ClassVar[float] = 0.0


@dataclass
class BundledEmbeddings:
    """The encoded prompts, then the empty prompt (the unconditional branch) as the last row."""

    text: TextStates  # (P + 1, ...)

    @property
    def uncond_row(self) -> int:
        return self.text.pooled.shape[0] - 1


class BundledGuidance:
    """The Guidance protocol around a PriorModel."""

    def __init__(
        self,
        model: PriorModel,
        sds_cfg: SDSConfig,
        dtype: str = "auto",
        shading_aware: bool = True,
        cuda_graphs: bool = True,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.shading_aware = shading_aware
        self.sds_cfg = sds_cfg
        # The model is small: float32 by default; bfloat16/float16 run it under autocast on CUDA.
        self.autocast_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
        self._eps = GraphedForward(self._eps_eager, enabled=cuda_graphs)

    def _eps_eager(
        self, z: Tensor, t: Tensor, tokens: Tensor, mask: Tensor, pooled: Tensor, camera: Tensor, mode: Tensor
    ) -> Tensor:
        """The prior's noise prediction from tensors alone (so it can be replayed from a CUDA graph);
        an empty mode means the shading is not told."""
        with self._autocast(z.device):
            text = TextStates(tokens, mask, pooled)
            return self.model.eps(z, t, text, camera, mode if mode.numel() else None)

    @property
    def alphas_cumprod(self) -> Tensor:
        return self.model.alphas_cumprod

    def embed(self, prompts: Sequence[str]) -> BundledEmbeddings:
        """Encode the prompts once (unknown words raise ValueError naming the known ones)."""
        if isinstance(prompts, str):
            raise TypeError("embed takes a sequence of prompts, not one string")
        for prompt in prompts:
            self._check_readable(prompt)
        with torch.no_grad():
            return BundledEmbeddings(text=self.model.encode([*prompts, ""]))

    def _check_readable(self, prompt: str) -> None:
        """ValueError for a prompt of which the tokenizer reads no word (emoji, other scripts): it
        drops what it cannot split into words, so such a prompt would train as if it were empty."""
        subject = prompt
        for view in ALL_VIEWS:  # the trainer appends ", <view> view" to the user's text
            subject = subject.removesuffix(f", {view} view")
        if subject.strip() and not [w for w in self.model.tokenizer.split(subject) if w != ","]:
            raise ValueError(
                f"the prompt {subject!r} holds no word the bundled prior can read (it reads English words "
                'in letters a-z and digits); give a sentence such as "a red cube"'
            )

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None or device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.autocast_dtype)

    def sds_loss(
        self,
        images: Tensor,  # (B, 3, H, W) in [0, 1]
        embeddings: BundledEmbeddings,
        prompt_index: Tensor,  # (B,)
        cameras: Cameras,
        generator: torch.Generator,
        progress: float,
        shading: str | None = None,
    ) -> SDSOutput:
        """SDS of the renders under the prior. Renders of another size are resized to the model's
        (with gradient); x = 2 images - 1, so d loss / d images is twice the gradient in x."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        B, device, size = images.shape[0], images.device, self.model.image_size
        if len(cameras) != B:
            raise ValueError(f"{B} images but {len(cameras)} cameras")
        model = self.model
        if model.device != device:
            model = self.model = self.model.to(device)
        if images.shape[-2:] != (size, size):
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        cameras = cameras.to(device)
        index = prompt_index.to(device)
        text = embeddings.text.to(device)
        both = TextStates.cat([text[torch.full_like(index, embeddings.uncond_row)], text[index]])  # (2B, ...)
        camera = camera_input(cameras)
        camera = torch.cat([camera, camera])  # (2B, CAMERA_WIDTH): the unconditional branch sees it too
        # The prior was trained knowing each image's shading (or not, 30% of the time). Telling it
        # the render's shading lets an albedo render be judged as a colored object and a
        # textureless one as bare geometry; otherwise "a red sphere" also admits white renders.
        mode = torch.empty(0, device=device, dtype=torch.long)  # empty: shading not told
        if self.shading_aware and shading is not None:
            mode = torch.full((2 * B,), SHADING_MODES.index(shading), device=device, dtype=torch.long)

        def denoise(z_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            eps = self._eps(
                torch.cat([z_t, z_t]), torch.cat([t, t]), both.tokens, both.mask, both.pooled, camera, mode
            )
            eps_uncond, eps_cond = eps.to(z_t.dtype).chunk(2)
            return eps_uncond, eps_cond

        sds_cfg = self.sds_cfg
        t_range = annealed_t_range(sds_cfg, progress)
        if t_range != tuple(sds_cfg.t_range):
            sds_cfg = dataclasses.replace(sds_cfg, t_range=t_range)
        x = images * 2.0 - 1.0
        return sds.score_distillation(x, denoise, model.alphas_cumprod, sds_cfg, generator)


def load_bundled(cfg: BundledGuidanceConfig, sds_cfg: SDSConfig, device: torch.device) -> BundledGuidance:
    """The bundled prior from `cfg.model` (a .safetensors file) or the weights in the package; with
    `cfg.high_noise_model` (a file, or "bundled" for the packaged expert) a pair of experts."""
    if cfg.model:
        path = Path(cfg.model).expanduser()
        if not path.is_file():
            raise UserError(f"--guidance.model {cfg.model}: no such prior weights file (a .safetensors file)")
    else:
        path = _packaged(
            PRIOR_PATH,
            "the bundled prior",
            "train them with `dreamfusion prior train --preset bundled --device cuda --out runs/prior` "
            "and pass --guidance.model runs/prior/prior.safetensors, or use another --guidance",
        )
    model = load_prior(path, device)
    if cfg.high_noise_model:
        from dreamfusion.prior.experts import Experts

        if cfg.high_noise_model == "bundled":
            high = _packaged(
                HIGH_NOISE_PRIOR_PATH,
                "the bundled high-noise expert",
                "reinstall the package, or pass a prior's .safetensors file to --guidance.high-noise-model",
            )
        else:
            high = Path(cfg.high_noise_model).expanduser()
            if not high.is_file():
                raise UserError(
                    f"--guidance.high-noise-model {high}: no such prior weights file "
                    "(a .safetensors file, or 'bundled' for the one in the package)"
                )
        try:
            model = Experts(model, load_prior(high, device), cfg.high_noise_from)
        except ValueError as e:
            raise UserError(f"--guidance.high-noise-model {high}: {e}") from None
    return BundledGuidance(model, sds_cfg, cfg.dtype, cfg.shading_aware, cfg.cuda_graphs)


def _packaged(path: Path, what: str, fix: str) -> Path:
    """A weights file shipped in the package, present and with its checksum beside it."""
    if not path.is_file():
        raise UserError(f"{what}'s weights are not installed (no {path}); {fix}")
    if expected_sha256(path) is None:  # the packaged files are always checked
        raise UserError(f"{what}'s checksum file {sha256_sidecar(path)} is missing; reinstall the package")
    return path
