"""Configuration: `Config` composes the component configs, each defined beside what it configures
(one docstring per field; tyro turns them into CLI help).

Every number of the method is a field here. The paper's values live in the `paper` preset
(`dreamfusion.presets`); the defaults below are the project's own choices for a hash-grid field
on one GPU, and `smoke` / `cpu` shrink them for tests and laptops.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from dreamfusion.errors import UserError
from dreamfusion.fields.background import BackgroundConfig
from dreamfusion.fields.base import FieldConfig
from dreamfusion.guidance.sds import SDSConfig
from dreamfusion.render.renderer import RenderConfig
from dreamfusion.render.shading import ShadingConfig
from dreamfusion.scene.cameras import CameraConfig
from dreamfusion.training.config import TrainConfig
from dreamfusion.training.optim import OptimConfig
from dreamfusion.training.regularizers import RegularizerConfig

# The section classes are re-exported: `from dreamfusion.config import SDSConfig` reads as well as
# importing from the component.
__all__ = [
    "BackgroundConfig",
    "CameraConfig",
    "Config",
    "FieldConfig",
    "GuidanceConfig",
    "OptimConfig",
    "RegularizerConfig",
    "RenderConfig",
    "SDSConfig",
    "ShadingConfig",
    "TrainConfig",
    "from_dict",
    "to_dict",
    "validate_config",
]


@dataclass
class GuidanceConfig:
    """Which frozen text-to-image prior scores the renders."""

    name: str = "bundled"
    """Guidance backend; see `dreamfusion generate --help` for the list."""
    model: str | None = None
    """Hub id or local folder of the backend's weights (backends that need one)."""
    shading_aware: bool = True
    """bundled: tell the prior how each render was shaded (albedo, lit, textureless) rather than
    "any shading"; without it, textureless-looking white objects also satisfy a color prompt."""
    high_noise_model: str | None = None
    """bundled: a second prior (.safetensors) that denoises from `high_noise_from` up, the first one
    below (`prior.experts.Experts`), or "bundled" for the one in the package: a fine-tune that
    learned the azimuth at high noise (docs/results/fidelity_h100x4_expert/). The `cpu` and `default`
    presets take "bundled"; on the command line a prior of your own (`--guidance.model`) drops it
    unless this flag is given too, and None runs the first prior alone."""
    high_noise_from: float = 0.6
    """bundled: first timestep of `high_noise_model`, as a fraction of the schedule."""
    target_shape: Literal["sphere"] = "sphere"
    """closed-form: the known object whose renders are the data distribution."""
    target_radius: float = 0.45
    """closed-form: radius of the target sphere."""
    target_color: tuple[float, float, float] = (0.8, 0.2, 0.2)
    """closed-form: albedo of the target when the prompt names no known color."""
    data_std: float = 0.05
    """closed-form: standard deviation of the Gaussian data around each target image ([-1, 1] units)."""
    uncond_std: float = 0.5
    """closed-form: standard deviation of the unconditional (empty prompt) Gaussian around mid-grey."""
    target_modes: tuple[Literal["albedo", "lambertian", "textureless"], ...] = (
        "albedo",
        "lambertian",
        "textureless",
    )
    """closed-form: shading modes of the target renders forming the equally weighted data mixture."""
    noise_schedule: Literal["linear", "cosine"] = "linear"
    """closed-form: DDPM noise schedule of the model (linear betas 1e-4..0.02, or cosine), T = 1000."""
    revision: str | None = None
    """stable-diffusion, deepfloyd-if: Hub revision (branch, tag or commit) of a hub id in `model`."""
    variant: str | None = "auto"
    """stable-diffusion, deepfloyd-if: weight-file variant such as fp16; auto: fp16 files when loading in
    float16 and they exist (or when a folder holds only those), else the full files; None: full files."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """stable-diffusion, deepfloyd-if: frozen model precision (auto: float16 on CUDA, float32 on CPU)."""
    image_size: int = 0
    """stable-diffusion: renders are resized to this before the VAE; deepfloyd-if: before the U-Net.
    0: the model's native size (512 for SD 1.x/2.x-base, 64 for IF stage I)."""
    negative_prompt: str = ""
    """stable-diffusion, deepfloyd-if: prompt of the 'unconditional' branch of classifier-free guidance."""
    cache_dir: str | None = None
    """stable-diffusion, deepfloyd-if: folder of the prompt-embedding cache; None: $DREAMFUSION_CACHE or
    ~/.cache/dreamfusion (model weights stay in the Hugging Face cache, see HF_HOME)."""
    embedding_cache: bool = True
    """stable-diffusion, deepfloyd-if: reuse prompt embeddings saved on disk (keyed by model and text)."""
    cuda_graphs: bool = True
    """On CUDA, replay the frozen denoiser's forward from a CUDA graph (one launch instead of hundreds)."""
    compile: bool | None = None
    """stable-diffusion, deepfloyd-if: torch.compile the U-Net and (stable-diffusion) the VAE encoder: a
    minute or two of compiling at the first steps (less once PyTorch has cached it), faster after. None: on
    CUDA only. If compiling fails, the model runs eagerly, with a warning."""
    channels_last: bool = False
    """stable-diffusion, deepfloyd-if: keep the U-Net in channels_last memory format, which recent NVIDIA
    GPUs run faster in float16. SD's VAE encoder stays channels-first: channels_last made its forward and
    backward slower on an H100, eager and compiled (benchmarks/guidance_gpu.py)."""
    latent_warmup: float = 0.0
    """stable-diffusion: fraction of training (0 to 1) in which the render is the latent itself, not
    encoded by the VAE (Latent-NeRF; stable-dreamfusion's latent_iter_ratio): the normal map's colors
    (n + 1) / 2 and the opacity, over black, are the four latent channels, resized to the latent size
    and scaled to [-1, 1]. Coarse geometry without the VAE's cost. 0: off."""
    vae_slicing: bool = False
    """stable-diffusion: encode a batch through the VAE one image at a time (less memory, a little slower)."""
    perp_neg: bool = False
    """stable-diffusion, deepfloyd-if: Perp-Neg (Armandpour et al. 2023): the positive prompt interpolates the
    view prompts by azimuth and the other views' prompts act as perpendicular negatives, against multi-face
    objects. Costs two more U-Net evaluations per image."""
    perp_neg_front_side: tuple[float, float, float] = (4.0, 0.5, -2.426)
    """Perp-Neg (a, b, c): weight a exp(-b r) + c of the front prompt as a negative, front to side;
    r = 1 at the front."""
    perp_neg_side_front: tuple[float, float, float] = (4.0, 0.5, -2.426)
    """Perp-Neg (a, b, c): weight of the side prompt as a negative, front to side; r = 1 at the side."""
    perp_neg_side_back: tuple[float, float, float] = (1.0, 0.5, -0.606)
    """Perp-Neg (a, b, c): weight of the side prompt as a negative, side to back; r = 1 at the side."""
    perp_neg_front_back: tuple[float, float, float] = (1.0, 0.5, 0.967)
    """Perp-Neg (a, b, c): weight of the front prompt as a negative, side to back; r = 1 at the side."""


@dataclass
class Config:
    """A whole DreamFusion run."""

    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    background: BackgroundConfig = dataclasses.field(default_factory=BackgroundConfig)
    render: RenderConfig = dataclasses.field(default_factory=RenderConfig)
    shading: ShadingConfig = dataclasses.field(default_factory=ShadingConfig)
    regularizers: RegularizerConfig = dataclasses.field(default_factory=RegularizerConfig)
    sds: SDSConfig = dataclasses.field(default_factory=SDSConfig)
    guidance: GuidanceConfig = dataclasses.field(default_factory=GuidanceConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain JSON-able data (tuples become lists)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> Config:
    """Inverse of `to_dict`; unknown keys raise ValueError naming them."""
    sections = {}
    for f in dataclasses.fields(Config):
        cls = f.default_factory  # type: ignore[misc]
        values = dict(data.get(f.name, {}))
        known = {g.name: g for g in dataclasses.fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown config keys in section '{f.name}': {sorted(unknown)}")
        for key, value in values.items():
            if isinstance(value, list):
                values[key] = tuple(value)
        sections[f.name] = cls(**values)
    unknown = set(data) - set(sections)
    if unknown:
        raise ValueError(f"unknown config sections: {sorted(unknown)}")
    return Config(**sections)


def validate_config(cfg: Config) -> None:
    """Reject settings that cannot run, each with one line saying which and how to fix it."""
    checks = [
        (cfg.train.steps > 0, f"--steps must be positive (got {cfg.train.steps})"),
        (cfg.train.batch_size > 0, f"batch size must be positive (got {cfg.train.batch_size})"),
        (cfg.camera.resolution > 0, f"resolution must be positive (got {cfg.camera.resolution})"),
        (
            cfg.render.samples_per_ray > 0,
            f"samples per ray must be positive (got {cfg.render.samples_per_ray})",
        ),
        (cfg.field.bound_radius > 0, f"bound radius must be positive (got {cfg.field.bound_radius})"),
        (
            0.0 <= cfg.sds.t_range[0] < cfg.sds.t_range[1] <= 1.0,
            f"sds.t_range must lie in [0, 1] and rise (got {cfg.sds.t_range})",
        ),
        (cfg.optim.lr > 0, f"learning rate must be positive (got {cfg.optim.lr})"),
        (cfg.train.seed >= 0, f"--seed must be non-negative (got {cfg.train.seed})"),
        (
            not cfg.render.occupancy_grid
            or (cfg.render.occupancy_resolution > 0 and cfg.render.occupancy_update_every > 0),
            "render.occupancy_resolution and render.occupancy_update_every must be positive "
            f"(got {cfg.render.occupancy_resolution}, {cfg.render.occupancy_update_every})",
        ),
        (
            0.0 <= cfg.guidance.latent_warmup <= 1.0,
            f"guidance.latent_warmup is a fraction of training in [0, 1] (got {cfg.guidance.latent_warmup})",
        ),
        (
            cfg.regularizers.interior_weight <= 0 or cfg.render.occupancy_grid,
            "regularizers.interior_weight needs the occupancy grid to find the inside: "
            "add --render.occupancy-grid or set --regularizers.interior-weight 0",
        ),
        (
            cfg.regularizers.interior_weight_start >= 0,
            f"regularizers.interior_weight_start must be >= 0 (got {cfg.regularizers.interior_weight_start})",
        ),
        (
            cfg.regularizers.interior_density > 0
            and cfg.regularizers.interior_depth > 0
            and cfg.regularizers.interior_points > 0,
            "regularizers.interior_density, interior_depth and interior_points must be positive (got "
            f"{cfg.regularizers.interior_density}, {cfg.regularizers.interior_depth}, "
            f"{cfg.regularizers.interior_points})",
        ),
        (
            0.0 <= cfg.render.occupancy_decay <= 1.0,
            f"render.occupancy_decay must lie in [0, 1] (got {cfg.render.occupancy_decay})",
        ),
        (
            not cfg.guidance.high_noise_model or cfg.guidance.name == "bundled",
            f"guidance.high_noise_model pairs bundled priors and does nothing for --guidance "
            f"{cfg.guidance.name}: drop --guidance.high-noise-model or use --guidance bundled",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
