"""The bundled prior as one object: tokenizer, text encoder, U-Net and noise schedule, in one file.

File format: one safetensors file whose metadata holds the format tag and the config as JSON,
and whose tensors are the weights (float16 by default: the packaged file stays small). A sidecar
`<file>.sha256` holds the file's SHA-256; when present (always for the packaged weights) it is
checked before anything is read, so a damaged or replaced file fails with one clear line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from dreamfusion.atomic import atomic_write
from dreamfusion.prior.schedule import NoiseSchedule, to_epsilon
from dreamfusion.prior.text import TextEncoder, TextStates, Tokenizer
from dreamfusion.prior.unet import UNet, UNetConfig
from dreamfusion.world.captions import vocabulary

FORMAT = "dreamfusion-prior-v1"


class PriorFileError(ValueError):
    """A prior weights file is missing, damaged, or not a prior."""


def default_words() -> tuple[str, ...]:
    """The tokenizer's words: the world's caption vocabulary plus the comma before a view suffix."""
    return (",", *vocabulary())


@dataclass
class PriorConfig:
    """Everything needed to rebuild the model; saved in the weights file."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    """Shape of the U-Net (its text_dim is also the text encoder's width)."""
    words: tuple[str, ...] = field(default_factory=default_words)
    """Vocabulary of the tokenizer."""
    max_tokens: int = 16
    """Token sequence length, START included."""
    text_layers: int = 2
    """Transformer blocks of the text encoder."""
    text_heads: int = 4
    """Attention heads of the text encoder."""
    schedule: Literal["linear", "cosine"] = "cosine"
    """Noise schedule: cosine (Nichol and Dhariwal 2021, made for 64x64 pixels) or DDPM linear."""
    num_train_timesteps: int = 1000
    """Number of diffusion timesteps T."""
    prediction: Literal["epsilon", "v_prediction"] = "v_prediction"
    """What the U-Net predicts; `PriorModel.eps` always returns the noise."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> PriorConfig:
        unet = {k: tuple(v) if isinstance(v, list) else v for k, v in data["unet"].items()}
        rest = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "unet"}
        return PriorConfig(unet=UNetConfig(**unet), **rest)


class PriorModel(nn.Module):
    """A small text-to-image pixel diffusion model of the procedural world."""

    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = Tokenizer(cfg.words, cfg.max_tokens)
        width = cfg.unet.text_dim
        self.text = TextEncoder(
            self.tokenizer.vocab_size, cfg.max_tokens, width, cfg.text_layers, cfg.text_heads
        )
        self.unet = UNet(cfg.unet)
        self.schedule = NoiseSchedule(cfg.num_train_timesteps, cfg.schedule)
        # A buffer moves with the model, so no step copies the table to the device.
        self.register_buffer("alphas_cumprod", self.schedule.alphas_cumprod.clone(), persistent=False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def image_size(self) -> int:
        return self.cfg.unet.image_size

    def encode(self, prompts: Sequence[str]) -> TextStates:
        """Tokenize and encode prompts on the model's device; unknown words raise ValueError."""
        return self.text(self.tokenizer.encode(prompts).to(self.device))

    def forward(
        self, z: Tensor, t: Tensor, text: TextStates, camera: Tensor, mode: Tensor | None = None
    ) -> Tensor:
        """Raw prediction (noise or v, per cfg.prediction): z (B, 3, H, W), t (B,), camera (B, CAMERA_WIDTH),
        mode (B,) index into SHADING_MODES (UNKNOWN_MODE or None: any shading)."""
        return self.unet(z, t, text, camera, mode)

    def eps(
        self, z: Tensor, t: Tensor, text: TextStates, camera: Tensor, mode: Tensor | None = None
    ) -> Tensor:
        """Noise prediction in float32: (B, 3, H, W)."""
        alphabar = self.alphas_cumprod[t]
        return to_epsilon(self(z, t, text, camera, mode).float(), z.float(), alphabar, self.cfg.prediction)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the U-Net is trained to output for z_t = alpha x0 + sigma noise: (B, 3, H, W)."""
        if self.cfg.prediction == "epsilon":
            return noise
        alphabar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        a, s = alphabar.sqrt(), (1.0 - alphabar).sqrt()
        return a * noise - s * x0  # v = alpha eps - sigma x0


# ------------------------------------------------------------------------------------- the file
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_sidecar(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".sha256")


def save_prior(
    model: PriorModel,
    path: Path,
    state: dict[str, Tensor] | None = None,
    dtype: torch.dtype = torch.float16,
) -> str:
    """Write the weights (`state`, default the model's own, e.g. its EMA) and their sidecar checksum.

    Returns the SHA-256 of the written file.
    """
    path = Path(path)
    state = model.state_dict() if state is None else state
    body = {
        k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
        for k, v in state.items()
    }
    metadata = {"format": FORMAT, "config": json.dumps(model.cfg.to_dict(), sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(body, str(tmp), metadata=metadata))
    digest = file_sha256(path)
    atomic_write(sha256_sidecar(path), lambda tmp: tmp.write_text(f"{digest}  {path.name}\n"))
    return digest


def expected_sha256(path: Path) -> str | None:
    """The checksum in the sidecar file, or None when there is none."""
    sidecar = sha256_sidecar(path)
    if not sidecar.is_file():
        return None
    text = sidecar.read_text().split()
    if not text or len(text[0]) != 64:
        raise PriorFileError(f"checksum file {sidecar} is damaged (expected a 64-digit SHA-256)")
    return text[0].lower()


def load_prior(path: Path, device: torch.device | str = "cpu", sha256: str | None = None) -> PriorModel:
    """Load a prior in float32, frozen and in eval mode.

    The file's SHA-256 must equal `sha256` if given, else the sidecar's if there is one.
    Raises PriorFileError with one line on any problem.
    """
    path = Path(path)
    if not path.is_file():
        raise PriorFileError(f"no prior weights file at {path}")
    expected = sha256.lower() if sha256 else expected_sha256(path)
    if expected is not None:
        actual = file_sha256(path)
        if actual != expected:
            raise PriorFileError(
                f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}; the file is "
                "damaged or was replaced (reinstall the package, or retrain with `dreamfusion prior train`)"
            )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise PriorFileError(f"{path} is not a readable safetensors file ({e})") from None
    if metadata.get("format") != FORMAT:
        raise PriorFileError(f"{path} is not a dreamfusion prior (format {metadata.get('format')!r})")
    try:
        model = PriorModel(PriorConfig.from_dict(json.loads(metadata["config"])))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PriorFileError(f"{path} does not hold a valid prior ({first})") from None
    return model.to(device).eval().requires_grad_(False)
