"""Settings of the world's dataset renderer (its own dataclass: the engine's config is not touched)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dreamfusion.render.shading import ShadingConfig
from dreamfusion.scene.cameras import CameraConfig
from dreamfusion.world.captions import BOTTOM_BELOW, OVERHEAD_ABOVE


def world_cameras() -> CameraConfig:
    """The paper's camera and light distribution, with elevations down to -45 degrees so that
    the bottoms of objects are seen (the paper's -10 never shows the base of a cone)."""
    return CameraConfig(elevation_range=(-45.0, 90.0))


@dataclass
class WorldConfig:
    """How `sample_batch` draws and renders images of the procedural world."""

    camera: CameraConfig = field(default_factory=world_cameras)
    """Camera and light distribution; use the same one when distilling with a prior trained here."""
    shading: ShadingConfig = field(default_factory=ShadingConfig)
    """Ambient and point-light intensity of the lambertian and textureless modes."""
    mode_shares: tuple[float, float, float] = (0.25, 0.375, 0.375)
    """Shares of albedo / lambertian / textureless images (the paper's SDS mix after warm-up)."""
    bottom_below: float = BOTTOM_BELOW
    """Cameras below this elevation (degrees) get ", bottom view"."""
    overhead_above: float = OVERHEAD_ABOVE
    """Cameras above this elevation (degrees) get ", overhead view"."""
    view_suffix_probability: float = 1.0
    """Probability that a caption carries its view suffix (the label always has the view)."""
    background_white: float = 0.2
    """Share of plain white backgrounds."""
    background_gradient: float = 0.4
    """Share of vertical two-color gradients; the rest are plain random colors."""
    background_min_contrast: float = 0.2
    """A random background color closer than this (max over channels) to the object's color is
    replaced by its complement, so albedo-only images never hide the object."""
    bound_radius: float = 0.7
    """Radius of the sphere that bounds every object; rays march only inside it."""
    march_steps: int = 64
    """Sphere-tracing steps per ray (fixed; converged rays drop out early)."""
    hit_epsilon: float = 1e-3
    """A ray has hit the surface when the SDF at its point is below this."""
    normal_epsilon: float = 1e-3
    """Step of the finite differences that give normals from the SDF."""
    supersample: int = 2
    """Trace at this many times the resolution per axis and box-filter: anti-aliased silhouettes,
    closer to the soft edges of volume renders (each step up multiplies the rays traced)."""
    fused: bool | None = None
    """GPU strategy (True): render a mixed batch in one pass, marching every ray at every step
    with a fixed-shape step that torch.compile fuses on CUDA (few kernel launches, no host
    syncs). CPU strategy (False): object by object, with rays dropping out as they converge
    (no wasted evaluations). None: fused on CUDA, not on CPU. Both give the same images."""
