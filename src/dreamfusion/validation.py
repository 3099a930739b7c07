"""Numbers a user can type into any config field, checked before a run touches anything.

Two layers: every float anywhere in the config (nested dataclasses, tuples of floats) must be
finite, found by walking the dataclass tree so that a field added later is covered without a new
line here; then the ranges that the code relies on (a step count of 0 divides by zero, a seed past
2**63 overflows the generator, a probability of 1.5 silently acts as 1). Each failure is one
UserError naming the field the way it is written in JSON (`sds.guidance_scale`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

from dreamfusion.errors import UserError

SEED_MAX = 2**63 - 1
"""The largest seed: the trainer seeds its device generator with seed + 1 and torch takes 64 bits."""


def walk_numbers(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted name, value) of every int and float in a dataclass tree; tuple items share their
    field's name."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from walk_numbers(value, name + ".")
        elif isinstance(value, (tuple, list)):
            for item in value:
                if isinstance(item, (int, float)) and not isinstance(item, bool):
                    yield name, item
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name, value


def check_finite(cfg: Any) -> None:
    """UserError naming the first field holding NaN or an infinity."""
    for name, value in walk_numbers(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{name} must be a finite number (got {value})")


# Each rule: (dotted field, lowest, highest, what the message says). None leaves that side open.
_POSITIVE = "must be positive"
_NON_NEGATIVE = "must be >= 0"
_FRACTION = "must lie in [0, 1]"
INT_RANGES: list[tuple[str, int | None, int | None, str]] = [
    # train.steps, train.batch_size, camera.resolution and render.samples_per_ray: config.validate_config
    *[
        (name, 1, None, _POSITIVE)
        for name in (
            "train.log_every",
            "train.checkpoint_every",
            "train.preview_resolution",
            "field.mlp_width",
            "field.mlp_depth",
            "field.hash_levels",
            "field.hash_features",
            "field.hash_base_resolution",
            "field.hash_max_resolution",
            "field.hash_mlp_width",
            "background.width",
        )
    ],
    *[
        (name, 0, None, _NON_NEGATIVE)
        for name in (
            "train.micro_batch",
            "train.preview_every",
            "train.keep_checkpoints",
            "render.chunk_rays",
            "render.occupancy_warmup_steps",
            "shading.albedo_warmup_steps",
            "regularizers.orientation_ramp_steps",
            "regularizers.opacity_ramp_steps",
            "regularizers.interior_ramp_steps",
            "optim.warmup_steps",
            "guidance.image_size",
            "field.pe_frequencies",
            "field.hash_mlp_depth",
            "background.frequencies",
        )
    ],
    ("train.seed", 0, SEED_MAX, f"must lie in [0, {SEED_MAX}]"),
    ("field.hash_log2_size", 1, 30, "must lie in [1, 30]"),
]
FLOAT_RANGES: list[tuple[str, float | None, float | None, str]] = [
    *[
        (name, 0.0, 1.0, _FRACTION)
        for name in (
            "camera.uniform_sphere_fraction",
            "shading.shaded_probability",
            "shading.textureless_probability",
            "sds.t_anneal_end",
            "sds.t_anneal_start",
            "guidance.high_noise_from",
            "guidance.latent_warmup",
            "render.occupancy_decay",
            "render.min_transmittance",
        )
    ],
    *[
        (name, 0.0, None, _NON_NEGATIVE)
        for name in (
            "camera.lookat_jitter",
            "camera.up_jitter",
            "camera.light_jitter",
            "shading.ambient",
            "shading.light_intensity",
            "regularizers.orientation_weight",
            "regularizers.orientation_weight_start",
            "regularizers.opacity_weight",
            "regularizers.opacity_weight_start",
            "regularizers.distortion_weight",
            "regularizers.interior_weight",
            "regularizers.interior_weight_start",
            "sds.guidance_scale",
            "sds.grad_clip",
            "optim.background_lr",
            "optim.weight_decay",
            "optim.final_lr",
            "optim.grad_clip_norm",
            "guidance.data_std",
            "guidance.uncond_std",
            "render.occupancy_threshold",
        )
    ],
    ("optim.lr", 0.0, None, "must be positive"),
    ("optim.eps", 0.0, None, "must be positive"),
    ("optim.betas", 0.0, 0.999999, "must lie in [0, 1)"),
    ("field.bound_radius", 0.0, None, "must be positive"),
    ("camera.focal_range", 0.0, None, "must be positive"),
    ("camera.distance_range", 0.0, None, "must be positive"),
    ("camera.light_distance_range", 0.0, None, "must be positive"),
    ("background.color", 0.0, 1.0, _FRACTION),
    ("guidance.target_color", 0.0, 1.0, _FRACTION),
]
_STRICT = {"optim.lr", "optim.eps", "field.bound_radius"}
"""Fields whose lowest value itself is refused (a learning rate of 0 trains nothing)."""
_RISING = ("camera.elevation_range", "camera.azimuth_range", "camera.distance_range", "camera.focal_range")


def _get(cfg: Any, dotted: str) -> Any:
    """The field's value; None where the config has no such field (another guidance backend's)."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part, None)
    return cfg


def check_ranges(cfg: Any) -> None:
    """UserError naming the first field outside the range the code needs."""
    for name, lo, hi, what in [*INT_RANGES, *FLOAT_RANGES]:
        value = _get(cfg, name)
        if value is None:
            continue
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            too_low = lo is not None and (v <= lo if name in _STRICT or name.endswith("_range") else v < lo)
            too_high = hi is not None and v > hi
            if too_low or too_high:
                raise UserError(f"{name} {what} (got {value})")
    for name in _RISING:
        lo, hi = _get(cfg, name)
        if lo > hi:
            raise UserError(f"{name} must be (low, high) with low <= high (got ({lo}, {hi}))")


def check_numbers(cfg: Any) -> None:
    """Every number of a resolved Config: finite, then in range."""
    check_finite(cfg)
    check_ranges(cfg)
