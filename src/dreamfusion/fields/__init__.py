"""3D fields: density and albedo at points, behind the `Field` protocol; and the backgrounds."""

from __future__ import annotations

from torch import nn

from dreamfusion.fields.analytic import SphereField
from dreamfusion.fields.background import BackgroundConfig, ConstantBackground, EnvMapBackground
from dreamfusion.fields.base import FieldConfig
from dreamfusion.fields.hashgrid import HashGridField
from dreamfusion.fields.mlp import MLPField, positional_encoding

FIELDS: dict[str, type[nn.Module]] = {"mlp": MLPField, "hashgrid": HashGridField}

__all__ = [
    "FIELDS",
    "ConstantBackground",
    "EnvMapBackground",
    "HashGridField",
    "MLPField",
    "SphereField",
    "build_background",
    "build_field",
    "positional_encoding",
]


def build_field(cfg: FieldConfig) -> nn.Module:
    """The trainable field named by `cfg.kind`."""
    if cfg.kind not in FIELDS:
        raise ValueError(f"unknown field kind '{cfg.kind}' (use one of: {', '.join(FIELDS)})")
    return FIELDS[cfg.kind](cfg)


def build_background(cfg: BackgroundConfig) -> nn.Module:
    """The background named by `cfg.kind`: 'envmap' (trainable) or 'constant' (`cfg.color`).

    'random' also gives the constant `cfg.color`: the trainer draws the per-view colors itself
    (from its seeded generator) and composites them; previews and exports see `cfg.color`."""
    if cfg.kind == "envmap":
        return EnvMapBackground(cfg)
    if cfg.kind in ("constant", "random"):
        return ConstantBackground(cfg.color)
    raise ValueError(f"unknown background kind '{cfg.kind}' (use one of: envmap, constant, random)")
