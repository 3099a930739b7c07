"""Configuration: `Config` composes the component configs, each defined beside what it configures
(one docstring per field; tyro turns them into CLI help).

Every number of the method is a field here. The paper's values live in the `paper` preset
(`dreamfusion.presets`); the defaults below are the project's own choices for a hash-grid field
on one GPU, and `smoke` / `cpu` shrink them for tests and laptops.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any

import tyro

from dreamfusion.errors import UserError
from dreamfusion.fields.background import BackgroundConfig
from dreamfusion.fields.base import FieldConfig
from dreamfusion.guidance.bundled import BundledGuidanceConfig
from dreamfusion.guidance.closed_form import ClosedFormGuidanceConfig
from dreamfusion.guidance.deepfloyd_if import DeepFloydIFConfig
from dreamfusion.guidance.sds import SDSConfig
from dreamfusion.guidance.stable_diffusion import StableDiffusionConfig
from dreamfusion.render.renderer import RenderConfig
from dreamfusion.render.shading import ShadingConfig
from dreamfusion.scene.cameras import CameraConfig
from dreamfusion.training.config import TrainConfig
from dreamfusion.training.optim import OptimConfig
from dreamfusion.training.regularizers import RegularizerConfig
from dreamfusion.validation import check_numbers

# The section classes are re-exported: `from dreamfusion.config import SDSConfig` reads as well as
# importing from the component.
__all__ = [
    "BackgroundConfig",
    "BundledGuidanceConfig",
    "ClosedFormGuidanceConfig",
    "DeepFloydIFConfig",
    "StableDiffusionConfig",
    "GUIDANCE_CONFIGS",
    "guidance_config",
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

# Which prior scores the renders: one config class per backend, told apart by `name`. On the command
# line each is a subcommand named after its backend, so `--help` of one lists only its own options.
GuidanceConfig = (
    Annotated[BundledGuidanceConfig, tyro.conf.subcommand("bundled", prefix_name=False)]
    | Annotated[StableDiffusionConfig, tyro.conf.subcommand("stable-diffusion", prefix_name=False)]
    | Annotated[DeepFloydIFConfig, tyro.conf.subcommand("deepfloyd-if", prefix_name=False)]
    | Annotated[ClosedFormGuidanceConfig, tyro.conf.subcommand("closed-form", prefix_name=False)]
)

GUIDANCE_CONFIGS: dict[str, type] = {
    "bundled": BundledGuidanceConfig,
    "stable-diffusion": StableDiffusionConfig,
    "deepfloyd-if": DeepFloydIFConfig,
    "closed-form": ClosedFormGuidanceConfig,
}


def guidance_config(name: str, **fields: Any) -> GuidanceConfig:
    """The config of backend `name` with `fields` set; an unknown name or field raises UserError."""
    if name not in GUIDANCE_CONFIGS:
        raise UserError(f"unknown guidance '{name}'; choose one of: {', '.join(GUIDANCE_CONFIGS)}")
    cls = GUIDANCE_CONFIGS[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise UserError(
            f"guidance {name} has no setting {unknown[0]}; its settings: {', '.join(sorted(known))}"
        )
    return cls(**fields)


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
    guidance: GuidanceConfig = dataclasses.field(default_factory=BundledGuidanceConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain JSON-able data (tuples become lists)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> Config:
    """Inverse of `to_dict`; unknown keys raise ValueError naming them.

    A guidance section names its backend; settings of the other backends are dropped, so a config.json
    whose guidance section holds every backend's settings side by side reads too."""
    sections = {}
    for f in dataclasses.fields(Config):
        values = dict(data.get(f.name, {}))
        if f.name == "guidance":
            cls = GUIDANCE_CONFIGS.get(values.get("name", "bundled"))
            if cls is None:
                raise ValueError(
                    f"unknown guidance '{values['name']}'; one of: {', '.join(GUIDANCE_CONFIGS)}"
                )
            known = {g.name for g in dataclasses.fields(cls)}
            values = {k: v for k, v in values.items() if k in known or k not in _OTHER_GUIDANCE_KEYS}
        else:
            cls = f.default_factory  # type: ignore[misc]
        known = {g.name for g in dataclasses.fields(cls)}
        unknown = set(values) - known
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


# Every backend's settings: what a guidance section may hold besides its own backend's.
_OTHER_GUIDANCE_KEYS = {g.name for cls in GUIDANCE_CONFIGS.values() for g in dataclasses.fields(cls)}


def validate_config(cfg: Config) -> None:
    """Reject settings that cannot run, each with one line saying which and how to fix it."""
    check_numbers(cfg)  # every number finite and in its field's range (dreamfusion.validation)
    # What a single field's range cannot say: sizes, orderings and settings that need each other.
    checks = [
        (cfg.train.steps > 0, f"--steps must be positive (got {cfg.train.steps})"),
        (cfg.train.batch_size > 0, f"batch size must be positive (got {cfg.train.batch_size})"),
        (cfg.camera.resolution > 0, f"resolution must be positive (got {cfg.camera.resolution})"),
        (
            cfg.render.samples_per_ray > 0,
            f"samples per ray must be positive (got {cfg.render.samples_per_ray})",
        ),
        (
            0.0 <= cfg.sds.t_range[0] < cfg.sds.t_range[1] <= 1.0,
            f"sds.t_range must lie in [0, 1] and rise (got {cfg.sds.t_range})",
        ),
        (
            not cfg.render.occupancy_grid
            or (cfg.render.occupancy_resolution > 0 and cfg.render.occupancy_update_every > 0),
            "render.occupancy_resolution and render.occupancy_update_every must be positive "
            f"(got {cfg.render.occupancy_resolution}, {cfg.render.occupancy_update_every})",
        ),
        (
            cfg.regularizers.interior_weight <= 0 or cfg.render.occupancy_grid,
            "regularizers.interior_weight needs the occupancy grid to find the inside: "
            "add --render.occupancy-grid or set --regularizers.interior-weight 0",
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
            isinstance(cfg.guidance, tuple(GUIDANCE_CONFIGS.values())),
            f"guidance must be one of {', '.join(c.__name__ for c in tuple(GUIDANCE_CONFIGS.values()))} "
            f"(got {type(cfg.guidance).__name__})",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """`cfg` with dotted settings replaced, e.g. {"sds.guidance_scale": 100, "optim.betas": [0.9, 0.99]}.

    Keys name a field of the resolved config (guidance keys: of its backend); an unknown key raises
    UserError with the closest names. Values are checked against the field's type: ints pass for
    floats, lists for tuples, anything else of the wrong type is refused."""
    import difflib

    for key, value in overrides.items():
        section, _, name = key.replace("-", "_").partition(".")
        part = (
            getattr(cfg, section, None) if section in {f.name for f in dataclasses.fields(Config)} else None
        )
        fields = {f.name: f for f in dataclasses.fields(part)} if part is not None else {}
        if name not in fields or name == "name":
            known = [
                f"{s.name}.{f.name}"
                for s in dataclasses.fields(Config)
                for f in dataclasses.fields(getattr(cfg, s.name))
                if f.name != "name"
            ]
            close = difflib.get_close_matches(key.replace("-", "_"), known, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `dreamfusion config` lists them"
            raise UserError(f"unknown setting '{key}' for guidance {cfg.guidance.name}{hint}")
        default = getattr(part, name)
        value = _coerce(key, value, default)
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(part, **{name: value})})
    return cfg


def _coerce(key: str, value: Any, default: Any) -> Any:
    """`value` in the type of the field's `default`, or UserError."""
    if isinstance(default, tuple) and isinstance(value, list | tuple):
        if default and len(value) != len(default) and not isinstance(default[0], str):
            raise UserError(f"{key} takes {len(default)} values (got {len(value)})")
        return tuple(_coerce(key, v, d) for v, d in zip(value, default * len(value), strict=False))
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(value, bool) and (isinstance(default, bool) or default is None):
            return value
    elif isinstance(default, float) and isinstance(value, int | float):
        return float(value)
    elif default is None or type(value) is type(default):
        return value
    raise UserError(f"{key} takes a {type(default).__name__} (got {value!r})")
