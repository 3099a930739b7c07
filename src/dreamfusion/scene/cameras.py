"""Cameras and point lights: the paper's random sampling, and fixed orbits for evaluation.

Convention used everywhere: +z is up, the object's front faces +x, so a camera at azimuth 0
looks at the front. Camera-to-world matrices follow OpenGL: the camera looks along its -z axis,
+x is right and +y is up in the image.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor


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


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """`tensor` on `device`; a CPU tensor bound for CUDA is copied from pinned memory asynchronously.

    A plain copy from pageable memory waits until the GPU has finished all queued work, one
    synchronization per small tensor, which keeps the CPU from queueing the next kernels ahead."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@dataclass
class Cameras:
    """A batch of pinhole cameras with one point light each."""

    c2w: Tensor  # (B, 4, 4) camera-to-world
    focal: Tensor  # (B,) focal length in pixels
    width: int
    height: int
    elevation: Tensor  # (B,) degrees
    azimuth: Tensor  # (B,) degrees in [-180, 180), 0 = front (+x)
    distance: Tensor  # (B,)
    light_position: Tensor  # (B, 3) world position of the point light

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def position(self) -> Tensor:  # (B, 3)
        return self.c2w[:, :3, 3]

    def to(self, device: torch.device | str) -> Cameras:
        """The cameras on `device`. CPU cameras go to a GPU through pinned memory without waiting for
        the GPU's queue, so sampling the next step's cameras does not stall training."""
        move = functools.partial(to_device, device=torch.device(device))
        return Cameras(
            c2w=move(self.c2w),
            focal=move(self.focal),
            width=self.width,
            height=self.height,
            elevation=move(self.elevation),
            azimuth=move(self.azimuth),
            distance=move(self.distance),
            light_position=move(self.light_position),
        )

    def __getitem__(self, index: slice | Tensor) -> Cameras:
        return Cameras(
            c2w=self.c2w[index],
            focal=self.focal[index],
            width=self.width,
            height=self.height,
            elevation=self.elevation[index],
            azimuth=self.azimuth[index],
            distance=self.distance[index],
            light_position=self.light_position[index],
        )


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def look_at(position: Tensor, target: Tensor, azimuth_rad: Tensor, roll_noise: Tensor) -> Tensor:
    """Camera-to-world matrices looking from `position` (B, 3) at `target` (B, 3) with +z up.

    The right vector comes from the azimuth rather than cross(forward, up), so overhead
    cameras (elevation 90) stay well defined; `roll_noise` (B, 3) perturbs it (up-vector jitter).
    """
    forward = torch.nn.functional.normalize(target - position, dim=-1)
    right = torch.stack(
        [-torch.sin(azimuth_rad), torch.cos(azimuth_rad), torch.zeros_like(azimuth_rad)], dim=-1
    )
    right = right + roll_noise
    right = right - (right * forward).sum(-1, keepdim=True) * forward
    right = torch.nn.functional.normalize(right, dim=-1)
    up = torch.cross(right, forward, dim=-1)
    c2w = torch.zeros(position.shape[0], 4, 4, dtype=position.dtype)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = position
    c2w[:, 3, 3] = 1.0
    return c2w


def spherical_to_position(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    el, az = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return distance[:, None] * torch.stack(
        [torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], dim=-1
    )


def wrap_degrees(angle: Tensor) -> Tensor:
    """Angles to [-180, 180)."""
    return torch.remainder(angle + 180.0, 360.0) - 180.0


def sample_lights(position: Tensor, cfg: CameraConfig, generator: torch.Generator) -> Tensor:
    """Point lights around the camera direction: (B, 3) camera positions -> (B, 3) light positions."""
    n = position.shape[0]
    direction = torch.nn.functional.normalize(position, dim=-1)
    noise = torch.randn(n, 3, generator=generator, dtype=torch.float64) * cfg.light_jitter
    direction = torch.nn.functional.normalize(direction + noise, dim=-1)
    distance = _uniform(n, *cfg.light_distance_range, generator)
    return direction * distance[:, None]


def sample_cameras(n: int, cfg: CameraConfig, generator: torch.Generator) -> Cameras:
    """Draw `n` random training cameras and lights (on the CPU) from the paper's distribution.

    Half of the elevations (by default) are uniform on the sphere, i.e. sin(elevation) is uniform,
    the rest uniform in angle: the first over-weights low views, the second gives enough overhead.
    """
    el_lo, el_hi = cfg.elevation_range
    on_sphere = torch.rand(n, generator=generator, dtype=torch.float64) < cfg.uniform_sphere_fraction
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    el_angle = el_lo + (el_hi - el_lo) * u
    s_lo, s_hi = math.sin(math.radians(el_lo)), math.sin(math.radians(el_hi))
    el_sphere = torch.rad2deg(torch.asin((s_lo + (s_hi - s_lo) * u).clamp(-1.0, 1.0)))
    elevation = torch.where(on_sphere, el_sphere, el_angle)
    azimuth = wrap_degrees(_uniform(n, *cfg.azimuth_range, generator))
    distance = _uniform(n, *cfg.distance_range, generator)
    focal = _uniform(n, *cfg.focal_range, generator) * cfg.resolution

    position = spherical_to_position(elevation, azimuth, distance)
    target = torch.randn(n, 3, generator=generator, dtype=torch.float64) * cfg.lookat_jitter
    roll = torch.randn(n, 3, generator=generator, dtype=torch.float64) * cfg.up_jitter
    c2w = look_at(position, target, torch.deg2rad(azimuth), roll)
    light = sample_lights(position, cfg, generator)
    return Cameras(
        c2w=c2w.float(),
        focal=focal.float(),
        width=cfg.resolution,
        height=cfg.resolution,
        elevation=elevation.float(),
        azimuth=azimuth.float(),
        distance=distance.float(),
        light_position=light.float(),
    )


def orbit_cameras(
    n: int,
    resolution: int,
    elevation: float = 15.0,
    distance: float = 1.3,
    focal_multiplier: float = 1.0,
    azimuth_start: float = 0.0,
    light_offset: tuple[float, float] = (30.0, 30.0),
) -> Cameras:
    """`n` cameras evenly spaced in azimuth around the object, for turntables and evaluation.

    The light sits `light_offset` (azimuth, elevation degrees) from each camera, at twice the
    camera distance, so the lit side turns with the camera.
    """
    azimuth = wrap_degrees(azimuth_start + torch.arange(n, dtype=torch.float64) * (360.0 / n))
    el = torch.full((n,), float(elevation), dtype=torch.float64)
    dist = torch.full((n,), float(distance), dtype=torch.float64)
    position = spherical_to_position(el, azimuth, dist)
    c2w = look_at(position, torch.zeros_like(position), torch.deg2rad(azimuth), torch.zeros_like(position))
    light = spherical_to_position(
        (el + light_offset[1]).clamp(-89.0, 89.0), azimuth + light_offset[0], 2.0 * dist
    )
    return Cameras(
        c2w=c2w.float(),
        focal=torch.full((n,), focal_multiplier * resolution, dtype=torch.float32),
        width=resolution,
        height=resolution,
        elevation=el.float(),
        azimuth=azimuth.float(),
        distance=dist.float(),
        light_position=light.float(),
    )
