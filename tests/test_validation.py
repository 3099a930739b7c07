"""Every number of a config: finite (found by walking the dataclass tree) and in the range the code needs."""

import dataclasses
import math

import pytest

from dreamfusion.config import Config, validate_config
from dreamfusion.errors import UserError
from dreamfusion.presets import PRESETS
from dreamfusion.validation import SEED_MAX, walk_numbers


def _with(cfg: Config, dotted: str, value) -> Config:
    section, name = dotted.split(".")
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{name: value})})


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_passes(preset):
    validate_config(PRESETS[preset]())


def test_every_float_field_is_walked_and_a_non_finite_one_is_named():
    """No list of fields: each float of the tree, NaN and both infinities, is refused by its own name."""
    cfg = PRESETS["smoke"]()
    floats = sorted({name for name, value in walk_numbers(cfg) if isinstance(value, float)})
    assert {"sds.guidance_scale", "optim.lr", "optim.betas", "regularizers.opacity_weight"} <= set(floats)
    for name in floats:
        section, field = name.split(".")
        value = getattr(getattr(cfg, section), field)
        for bad in (math.nan, math.inf, -math.inf):
            broken = (bad, *value[1:]) if isinstance(value, tuple) else bad
            with pytest.raises(UserError, match=rf"^{name} must be a finite number"):
                validate_config(_with(cfg, name, broken))


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("train.checkpoint_every", 0, "train.checkpoint_every must be positive"),
        ("train.log_every", 0, "train.log_every must be positive"),
        ("train.seed", SEED_MAX + 1, "train.seed must lie in"),
        ("train.seed", 2**70, "train.seed must lie in"),
        ("train.keep_checkpoints", -1, "train.keep_checkpoints must be >= 0"),
        ("shading.shaded_probability", 1.5, "shading.shaded_probability must lie in [0, 1]"),
        ("optim.betas", (0.9, 1.0), "optim.betas must lie in [0, 1)"),
        ("optim.eps", 0.0, "optim.eps must be positive"),
        ("sds.guidance_scale", -1.0, "sds.guidance_scale must be >= 0"),
        ("camera.distance_range", (1.5, 1.0), "camera.distance_range must be (low, high)"),
        ("camera.focal_range", (0.0, 1.0), "camera.focal_range must be positive"),
        ("background.color", (1.0, 2.0, 0.0), "background.color must lie in [0, 1]"),
    ],
)
def test_out_of_range_is_one_line_naming_the_field(name, value, message):
    with pytest.raises(UserError) as e:
        validate_config(_with(PRESETS["smoke"](), name, value))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_largest_seed_is_accepted_and_seeds_the_generators():
    import torch

    validate_config(_with(PRESETS["smoke"](), "train.seed", SEED_MAX))
    torch.Generator().manual_seed(SEED_MAX + 1)  # the trainer's device generator takes seed + 1
