"""The Python API takes the command line's choices: presets, guidance, model and dotted overrides."""

import pytest

from dreamfusion.api import resolve_config
from dreamfusion.config import (
    BundledGuidanceConfig,
    ClosedFormGuidanceConfig,
    StableDiffusionConfig,
    apply_overrides,
    from_dict,
    to_dict,
)
from dreamfusion.errors import UserError


def test_dotted_overrides_reach_the_resolved_config():
    cfg = resolve_config("smoke", guidance="stable-diffusion", device="cpu")
    cfg = apply_overrides(
        cfg,
        {
            "sds.guidance_scale": 100,  # an int for a float field
            "optim.lr": 5e-3,
            "optim.betas": [0.5, 0.9],  # JSON's list for a tuple
            "guidance.negative_prompt": "blurry",
            "guidance.compile": False,
        },
    )
    assert cfg.sds.guidance_scale == 100.0 and isinstance(cfg.sds.guidance_scale, float)
    assert cfg.optim.lr == 5e-3 and cfg.optim.betas == (0.5, 0.9)
    assert cfg.guidance.negative_prompt == "blurry" and cfg.guidance.compile is False


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optim.lrr": 1e-3}, "unknown setting 'optim.lrr'.*did you mean optim.lr"),
        (
            {"guidance.negative_prompt": "x"},
            "unknown setting 'guidance.negative_prompt' for guidance bundled",
        ),
        ({"nothing": 1}, "unknown setting 'nothing'"),
        ({"optim.lr": "fast"}, "optim.lr takes a float"),
        ({"optim.betas": [0.9]}, "optim.betas takes 2 values"),
    ],
)
def test_bad_overrides_are_one_clear_error(overrides, message):
    cfg = resolve_config("cpu", device="cpu")
    with pytest.raises(UserError, match=message) as caught:
        apply_overrides(cfg, overrides)
    assert "\n" not in str(caught.value)


def test_the_guidance_switch_gives_that_backends_config():
    assert isinstance(resolve_config("cpu", device="cpu").guidance, BundledGuidanceConfig)
    sd = resolve_config("cpu", guidance="stable-diffusion", device="cpu")
    assert isinstance(sd.guidance, StableDiffusionConfig) and sd.guidance.name == "stable-diffusion"
    assert not hasattr(sd.guidance, "high_noise_model")  # the bundled prior's expert is its own
    assert isinstance(resolve_config("cpu", guidance="closed-form").guidance, ClosedFormGuidanceConfig)
    with pytest.raises(UserError, match="unknown guidance 'imagen9'"):
        resolve_config("cpu", guidance="imagen9")


def test_an_old_flat_guidance_section_reads_as_its_backends_config():
    """A config.json whose guidance section holds every backend's 29 settings side by side."""
    old = {
        "name": "stable-diffusion",
        "model": "./sd21-base",
        "shading_aware": True,
        "high_noise_model": None,
        "high_noise_from": 0.6,
        "target_shape": "sphere",
        "target_radius": 0.45,
        "target_color": [0.8, 0.2, 0.2],
        "data_std": 0.05,
        "uncond_std": 0.5,
        "target_modes": ["albedo", "lambertian", "textureless"],
        "noise_schedule": "linear",
        "revision": None,
        "variant": "auto",
        "dtype": "float16",
        "image_size": 0,
        "negative_prompt": "blurry",
        "cache_dir": None,
        "embedding_cache": True,
        "cuda_graphs": True,
        "compile": None,
        "channels_last": False,
        "latent_warmup": 0.25,
        "vae_slicing": False,
        "perp_neg": True,
        "perp_neg_front_side": [4.0, 0.5, -2.426],
        "perp_neg_side_front": [4.0, 0.5, -2.426],
        "perp_neg_side_back": [1.0, 0.5, -0.606],
        "perp_neg_front_back": [1.0, 0.5, 0.967],
    }
    assert len(old) == 29
    data = to_dict(resolve_config("smoke"))
    cfg = from_dict({**data, "guidance": old})
    assert cfg.guidance == StableDiffusionConfig(
        model="./sd21-base", dtype="float16", negative_prompt="blurry", latent_warmup=0.25, perp_neg=True
    )
    bundled = from_dict({**data, "guidance": {**old, "name": "bundled", "dtype": "auto"}}).guidance
    assert bundled == BundledGuidanceConfig(model="./sd21-base")
    with pytest.raises(ValueError, match="unknown config keys in section 'guidance'"):
        from_dict({**data, "guidance": {"name": "bundled", "no_such_setting": 1}})
    assert from_dict(to_dict(cfg)) == cfg
