"""What a prior training run is: the model's shape plus the training settings, and the two presets.

`bundled` is the recipe of the weights shipped in the package (about 7M parameters, trained on
one GPU); `tiny` is a 16x16 toy for tests and laptops.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from dreamfusion.prior.model import PriorConfig
from dreamfusion.prior.unet import UNetConfig
from dreamfusion.training.optim import OptimConfig


def prior_optim() -> OptimConfig:
    return OptimConfig(
        optimizer="adamw",
        lr=5e-4,
        betas=(0.9, 0.99),
        eps=1e-8,
        weight_decay=0.01,
        schedule="cosine",
        warmup_steps=250,
        final_lr=2.5e-5,
        grad_clip_norm=1.0,
    )


@dataclass
class PriorTrainConfig:
    """How the prior is trained."""

    steps: int = 9000
    """Optimizer steps."""
    batch_size: int = 256
    """Images per step."""
    optim: OptimConfig = field(default_factory=prior_optim)
    """AdamW, linear warm-up then cosine decay (training.optim.lr_factor), gradient-norm clipping."""
    text_dropout: float = 0.12
    """Share of captions replaced by the empty prompt, so one network is also the unconditional
    model of classifier-free guidance."""
    mode_dropout: float = 0.3
    """Share of images whose shading mode is withheld ("unknown"): the input SDS gives."""
    timestep_range: tuple[float, float] = (0.0, 1.0)
    """Fraction of the timesteps t is drawn from, uniformly, for a timestep_range_share of each
    batch. (0.6, 1.0) trains the noisy end, where the camera matters most: the image no longer
    shows which way the object faces (docs/prior.md)."""
    timestep_range_share: float = 1.0
    """Share of each batch whose t comes from timestep_range; the rest is drawn from all timesteps
    (below 1, a fine-tune on the noisy end keeps the low-noise end it would otherwise forget)."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of the weights (the EMA weights are the ones saved)."""
    pool_size: int = 8192
    """Rendered images kept on the device; batches are drawn from all of them."""
    render_batch: int = 256
    """Images rendered into the pool at a time (the GPU renderer is faster per image in large batches)."""
    render_every: int = 8
    """Steps between two renders; each image is used about batch_size * render_every / render_batch
    times (8 by default) while it is in the pool."""
    world_supersample: int = 2
    """Supersampling of the world renderer (anti-aliased silhouettes, like volume renders)."""
    world_march_steps: int = 64
    """Sphere-tracing steps of the world renderer."""
    view_suffix_probability: float = 0.8
    """Share of captions that carry their view suffix; the rest teach the model suffix-free prompts
    (the camera still tells it the view)."""
    objects: tuple[str, ...] | None = None
    """Objects to train on (None: all of the world's)."""
    colors: tuple[str, ...] | None = None
    """Colors to train on (None: all of the world's)."""
    seed: int = 0
    """Seed of initialization, renders, batches, timesteps and noise."""
    init: str | None = None
    """Start from these prior weights (model and EMA) instead of a random initialization: fine-tuning
    the shipped prior with a fresh schedule. Their architecture must equal the recipe's."""
    device: str = "cpu"
    """cpu or cuda (or cuda:N)."""
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    """Autocast dtype of the U-Net on CUDA (weights, optimizer and EMA stay float32); CPU runs float32."""
    channels_last: bool = True
    """Keep U-Net activations in channels_last memory format (faster convolutions on CUDA)."""
    log_every: int = 50
    """Write a metrics line every N steps."""
    checkpoint_every: int = 1000
    """Save a checkpoint (and RUN/prior.safetensors) every N steps, and when the run stops."""
    keep_checkpoints: int = 2
    """How many checkpoints to keep."""
    progress: bool = True
    """Show a progress bar."""
    sample_steps: int = 25
    """DDIM steps of the sample grid written when a segment ends (0: no grid)."""
    sample_guidance_scale: float = 3.0
    """Classifier-free guidance scale of that grid."""


@dataclass
class PriorRecipe:
    """A whole prior training run."""

    model: PriorConfig = field(default_factory=PriorConfig)
    train: PriorTrainConfig = field(default_factory=PriorTrainConfig)


def bundled() -> PriorRecipe:
    """The shipped prior: 64x64, channels 32-64-96-128, attention at 16x16 and 8x8 (middle), ~7M
    parameters; 9,000 steps of batch 256 on one GPU."""
    unet = UNetConfig(
        image_size=64,
        channels=(32, 64, 96, 128),
        blocks_per_level=2,
        attention_levels=(2,),
        head_dim=32,
        emb_dim=256,
        text_dim=128,
        groups=16,
        ff_mult=2,
    )
    return PriorRecipe(model=PriorConfig(unet=unet), train=PriorTrainConfig(device="cuda"))


def bundled_camera_text() -> PriorRecipe:
    """`bundled` plus the camera-text MLP (`UNetConfig.camera_text_width` 256, about 0.17M more
    parameters): the experiment of docs/prior.md that taught the prior the azimuth. Start it from
    the shipped weights with --init; the new MLP starts at zero, so it begins as the shipped prior."""
    recipe = bundled()
    unet = dataclasses.replace(recipe.model.unet, camera_text_width=256)
    return dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, unet=unet))


def tiny() -> PriorRecipe:
    """A 16x16 toy (~0.1M parameters) that trains a few steps on a CPU in seconds: tests, smoke runs.
    It takes each pixel's ray at the input and has the camera-text MLP, so the tests run those paths too."""
    unet = UNetConfig(
        image_size=16,
        channels=(16, 32),
        blocks_per_level=1,
        attention_levels=(1,),
        head_dim=16,
        emb_dim=32,
        text_dim=32,
        groups=8,
        ff_mult=2,
        ray_channels=6,
        camera_text_width=32,
    )
    model = PriorConfig(unet=unet, text_layers=1, text_heads=2)
    optim = dataclasses.replace(prior_optim(), lr=2e-3, warmup_steps=0)
    train = PriorTrainConfig(
        steps=20,
        batch_size=8,
        optim=optim,
        pool_size=16,
        render_batch=4,
        render_every=2,
        world_supersample=1,
        world_march_steps=24,
        dtype="float32",
        channels_last=False,
        log_every=1,
        checkpoint_every=10,
        progress=False,
        sample_steps=0,
    )
    return PriorRecipe(model=model, train=train)


PRIOR_PRESETS = {"tiny": tiny, "bundled": bundled, "bundled-camera-text": bundled_camera_text}


def recipe_to_dict(recipe: PriorRecipe) -> dict[str, Any]:
    return dataclasses.asdict(recipe)


def recipe_from_dict(data: dict[str, Any]) -> PriorRecipe:
    """Inverse of `recipe_to_dict` (lists become tuples again)."""

    def tuples(d: dict[str, Any]) -> dict[str, Any]:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}

    train = tuples(data["train"])
    train["optim"] = OptimConfig(**tuples(train["optim"]))
    return PriorRecipe(model=PriorConfig.from_dict(data["model"]), train=PriorTrainConfig(**train))
