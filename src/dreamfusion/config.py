"""Configuration: nested dataclasses, one docstring per field (tyro turns them into CLI help).

Every number of the method is a field here. The paper's values live in the `paper` preset
(`dreamfusion.presets`); the defaults below are the project's own choices for a hash-grid field
on one GPU, and `smoke` / `cpu` shrink them for tests and laptops.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from dreamfusion.errors import UserError
from dreamfusion.validation import check_numbers


@dataclass
class CameraConfig:
    """Where training cameras and point lights are sampled (paper section 3, step 1)."""

    resolution: int = 64
    """Rendered image width and height in pixels."""
    elevation_range: tuple[float, float] = (-10.0, 90.0)
    """Camera elevation above the xy-plane, in degrees."""
    azimuth_range: tuple[float, float] = (0.0, 360.0)
    """Camera azimuth in degrees; 0 looks at the object's front (+x)."""
    distance_range: tuple[float, float] = (1.0, 1.5)
    """Camera distance from the origin."""
    focal_range: tuple[float, float] = (0.7, 1.35)
    """Focal length multiplier lambda: focal = lambda * resolution (in pixels)."""
    uniform_sphere_fraction: float = 0.5
    """Share of cameras drawn uniformly on the sphere; the rest are uniform in elevation angle."""
    lookat_jitter: float = 0.05
    """Standard deviation of the look-at point around the origin."""
    up_jitter: float = 0.02
    """Standard deviation of the noise added to the +z up vector before orthogonalizing."""
    light_distance_range: tuple[float, float] = (0.8, 1.5)
    """Distance of the point light from the origin."""
    light_jitter: float = 1.0
    """Standard deviation of the noise added to the camera direction to place the light."""
    bottom_view_below: float | None = None
    """Cameras below this elevation get the prompt suffix ", bottom view" (None: never, as in the paper)."""


@dataclass
class FieldConfig:
    """The 3D field: density and albedo at points inside the bounding sphere."""

    kind: Literal["mlp", "hashgrid"] = "hashgrid"
    """Which field: the paper's MLP with positional encoding, or a pure-PyTorch hash grid."""
    bound_radius: float = 0.8
    """Radius of the bounding sphere; the field is queried only inside it."""
    density_activation: Literal["exp", "softplus"] = "softplus"
    """Activation turning the raw density into a non-negative density."""
    blob_density: float = 10.0
    """lambda of the initial density blob tau_init = lambda * exp(-|x|^2 / (2 sigma^2))."""
    blob_radius: float = 0.5
    """sigma of the initial density blob."""
    density_bias: float = 0.0
    """Added to the raw density everywhere, blob included (beyond the paper). Under exp, a raw value of 0
    is a density of 1, a fog through the whole bounding sphere at initialization; -3 starts empty space
    at e^-3 = 0.05 instead."""
    mlp_width: int = 128
    """Hidden width of the MLP field."""
    mlp_depth: int = 4
    """Hidden layers of the MLP field."""
    pe_frequencies: int = 8
    """Octaves of the positional encoding of the MLP field."""
    hash_levels: int = 16
    """Resolution levels of the hash grid."""
    hash_features: int = 2
    """Features per level of the hash grid."""
    hash_log2_size: int = 19
    """log2 of the number of entries of each level's hash table."""
    hash_base_resolution: int = 16
    """Grid resolution of the coarsest level."""
    hash_max_resolution: int = 1024
    """Grid resolution of the finest level."""
    hash_mlp_width: int = 64
    """Hidden width of the small MLP decoding hash-grid features."""
    hash_mlp_depth: int = 2
    """Hidden layers of the small MLP decoding hash-grid features."""
    activation: Literal["softplus", "silu", "relu"] = "softplus"
    """Hidden activation of both fields' MLPs; softplus and silu keep second derivatives (normals) smooth."""


@dataclass
class BackgroundConfig:
    """What rays that leave the bounding sphere see."""

    kind: Literal["envmap", "constant", "random"] = "envmap"
    """envmap: an MLP on the encoded ray direction (the paper); constant: a fixed color; random: a
    new uniformly random solid color for every training view (so only the object can carry the
    prompt's color), `color` for previews and exports."""
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """The fixed background color (kind=constant; previews and exports of kind=random)."""
    frequencies: int = 4
    """Octaves of the direction encoding of the environment map."""
    width: int = 32
    """Hidden width of the environment-map MLP."""


@dataclass
class RenderConfig:
    """Volume rendering along rays."""

    samples_per_ray: int = 64
    """Samples along each ray inside the bounding sphere."""
    stratified: bool = True
    """Jitter sample positions within their bins during training."""
    chunk_rays: int = 0
    """Render at most this many rays at once (0: all); bounds memory at evaluation."""
    occupancy_grid: bool = False
    """Training skips samples in empty space: the field is evaluated only in the cells of a coarse grid
    that it marked occupied at the last refresh (Instant-NGP; see dreamfusion.render.occupancy). Previews and
    exports always evaluate every sample."""
    occupancy_resolution: int = 64
    """Cells per side of the occupancy grid over the bounding cube."""
    occupancy_threshold: float = 0.01
    """A cell is occupied above this density (or above the mean over the sphere's cells, if lower)."""
    occupancy_decay: float = 0.5
    """Each refresh keeps max(decay * previous, new reading) per cell; lower forgets emptied space sooner."""
    occupancy_update_every: int = 16
    """Refresh the grid every N training steps."""
    occupancy_warmup_steps: int = 0
    """First refresh at this step; before it every cell counts as occupied (exact renders)."""


@dataclass
class ShadingConfig:
    """Shading of each sample and the schedule of shading modes (paper section 3, step 2)."""

    ambient: float = 0.1
    """Ambient light l_a."""
    light_intensity: float = 0.9
    """Point-light color l_p (grey)."""
    albedo_warmup_steps: int = 1000
    """Render the albedo alone for this many first steps."""
    shaded_probability: float = 0.75
    """After warm-up: probability of a lit render (else albedo only)."""
    textureless_probability: float = 0.5
    """Of lit renders: probability of a textureless one (white albedo)."""


@dataclass
class RegularizerConfig:
    """Geometry regularizers (paper appendix A.2)."""

    orientation_weight: float = 1e-2
    """Final weight of the orientation loss (Ref-NeRF) with stop-gradient weights."""
    orientation_weight_start: float = 1e-4
    """Weight of the orientation loss at step 0; ramps linearly to the final weight."""
    orientation_ramp_steps: int = 5000
    """Steps over which the orientation weight ramps up."""
    opacity_weight: float = 1e-3
    """Final weight of the opacity loss sqrt(alpha^2 + 0.01)."""
    opacity_weight_start: float = 1e-3
    """Weight of the opacity loss at step 0."""
    opacity_ramp_steps: int = 0
    """Steps over which the opacity weight ramps up."""
    distortion_weight: float = 0.0
    """Weight of mip-NeRF 360's distortion loss (beyond the paper; 0 = off): it draws each ray's
    weight into one short interval, a surface rather than a fog."""
    interior_weight: float = 0.0
    """Final weight of the interior loss (beyond the paper; 0 = off; needs render.occupancy_grid): it
    raises the density inside the body, which no render sees, to interior_density, so that the body is
    solid rather than a shell around speckle."""
    interior_weight_start: float = 0.0
    """Weight of the interior loss at step 0; ramps linearly to the final weight. A light start leaves
    SDS free to carve through the initial blob (a torus's hole) before the inside fills."""
    interior_ramp_steps: int = 0
    """Steps over which the interior weight ramps up (0: the final weight from the first step)."""
    interior_density: float = 100.0
    """Density (world units) the interior loss raises hidden cells to."""
    interior_depth: float = 1.0
    """A cell counts as inside when the occupancy grid's readings put this optical depth between it and
    the outside from each of the six axis directions (1: under 37% of the light reaches it)."""
    interior_points: int = 4096
    """Points drawn in the hidden cells per step."""


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
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    optimizer: Literal["adam", "adamw"] = "adam"
    """Optimizer (the paper used Distributed Shampoo, not in PyTorch; see docs)."""
    lr: float = 1e-2
    """Peak learning rate of the field."""
    background_lr: float = 1e-3
    """Learning rate of the environment-map MLP."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas."""
    eps: float = 1e-15
    """Adam epsilon (small: hash-grid features see sparse gradients)."""
    weight_decay: float = 0.0
    """Decoupled weight decay (adamw)."""
    schedule: Literal["constant", "cosine"] = "constant"
    """Learning-rate schedule after warm-up."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to the peak learning rate."""
    final_lr: float = 1e-6
    """Learning rate at the last step (cosine)."""
    grad_clip_norm: float = 0.0
    """Clip the global gradient norm at this value (0: off)."""


@dataclass
class TrainConfig:
    """The loop: length, batch, seeds, logging and checkpoints."""

    steps: int = 10000
    """Optimizer steps."""
    batch_size: int = 1
    """Views rendered per step."""
    micro_batch: int = 0
    """Views rendered and back-propagated at once (0: the whole batch); bounds memory, same gradient."""
    seed: int = 0
    """Seed of every random draw of the run."""
    device: str = "cpu"
    """cpu or cuda (or cuda:N)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Autocast dtype of the field on CUDA; float32 everywhere on CPU."""
    log_every: int = 10
    """Write a metrics line every N steps."""
    preview_every: int = 500
    """Save a preview image every N steps (0: off)."""
    checkpoint_every: int = 1000
    """Save a checkpoint every N steps (and always at the end)."""
    keep_checkpoints: int = 2
    """How many checkpoints to keep."""
    progress: bool = True
    """Show a progress bar with loss and ETA."""
    tensorboard: bool = False
    """Also write TensorBoard scalars (needs the tensorboard package)."""
    profile: bool = False
    """Synchronize the device around each phase so the logged timings are exact (slower on CUDA)."""
    preview_resolution: int = 64
    """Width and height of preview renders."""


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
    check_numbers(cfg)  # every field finite and in range (dreamfusion.validation)
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
