import dataclasses

import pytest

from dreamfusion.presets import smoke


def tiny_config(steps: int = 6, **train):
    """The smoke preset, shrunk further so a whole run takes about a second."""
    cfg = smoke()
    return dataclasses.replace(
        cfg,
        camera=dataclasses.replace(cfg.camera, resolution=12),
        render=dataclasses.replace(cfg.render, samples_per_ray=12),
        shading=dataclasses.replace(cfg.shading, albedo_warmup_steps=2),
        train=dataclasses.replace(
            cfg.train,
            **{"steps": steps, "progress": False, "preview_every": 0, "preview_resolution": 16, **train},
        ),
    )


@pytest.fixture
def tiny():
    return tiny_config
