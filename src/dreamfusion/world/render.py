"""Dataset renderer: sphere tracing of objects' SDFs from a batch of cameras, then shading.

Rays come from dreamfusion.scene.rays.generate_rays, march inside the bounding sphere for at most a
fixed number of steps (rays that converge or leave drop out of the batch), take normals from
SDF finite differences and colors from dreamfusion.render.shading.shade. Each camera may see a
different object of a PartTable, so a whole mixed batch renders in one pass. Device-agnostic:
everything follows the cameras' device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamfusion.render.shading import SHADING_MODES, ShadingMode, shade
from dreamfusion.scene.cameras import Cameras
from dreamfusion.scene.rays import generate_rays, intersect_sphere
from dreamfusion.world.config import WorldConfig
from dreamfusion.world.objects import WorldObject
from dreamfusion.world.table import PartTable, table_for

# Central differences along +-x, +-y, +-z: second-order accurate (the cheaper tetrahedral
# scheme has a first-order error from the Hessian's off-diagonal terms).
_OFFSETS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

FUSED_COMPACT_EVERY = 16
"""Steps between compactions of the marching rays in the fused (GPU) strategy."""


def _step(
    table: PartTable,
    ray_object: Tensor,
    origins: Tensor,
    directions: Tensor,
    far: Tensor,
    t: Tensor,
    active: Tensor,
    hit: Tensor,
    epsilon: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """One sphere-tracing step of rays (A,), active or not: fixed shapes, no host sync."""
    distance = table.sdf(origins + t[:, None] * directions, ray_object)
    converged = active & (distance < epsilon)
    t = torch.where(active, t + distance, t)
    return t, active & ~converged & (t < far), hit | converged


@functools.cache
def _compiled_step() -> Callable[..., tuple[Tensor, Tensor, Tensor]]:
    # Fuses the ~150 elementwise operations of a step into a few kernels.
    return torch.compile(_step, dynamic=True)


def fused_on(device: torch.device, cfg: WorldConfig) -> bool:
    """Whether `cfg` asks for the fused (GPU) strategy on `device`."""
    return cfg.fused if cfg.fused is not None else device.type == "cuda"


def sphere_trace(
    table: PartTable,
    ray_object: Tensor,
    origins: Tensor,
    directions: Tensor,
    near: Tensor,
    far: Tensor,
    steps: int,
    epsilon: float,
    compact_every: int = 1,
) -> tuple[Tensor, Tensor]:
    """March rays (R, 3) from t = near until the SDF of object `ray_object` (R,) of `table`
    drops below `epsilon` or t passes far, for at most `steps` steps.

    Returns t (R,) and hit (R,) bool. Every `compact_every` steps the rays that converged or
    left are dropped (a host sync): 1 suits a CPU, where evaluations cost; on CUDA a larger
    value keeps the step's shape fixed in between, and the step is compiled. The SDFs are
    exact or lower bounds, so a step never overshoots the surface.
    """
    step_fn = _compiled_step() if origins.device.type == "cuda" else _step
    t = near.clone()
    hit = torch.zeros_like(near, dtype=torch.bool)
    rays = torch.nonzero(far > near).squeeze(-1)  # (A,) indices of rays still marching
    done = 0
    while done < steps and rays.numel() > 0:
        o, d, f, obj = origins[rays], directions[rays], far[rays], ray_object[rays]
        t_r, hit_r = t[rays], torch.zeros_like(rays, dtype=torch.bool)
        active = torch.ones_like(hit_r)
        for _ in range(min(compact_every, steps - done)):
            t_r, active, hit_r = step_fn(table, obj, o, d, f, t_r, active, hit_r, epsilon)
            done += 1
        t[rays], hit[rays] = t_r, hit_r
        rays = rays[active]
    return t, hit


def sdf_normals(table: PartTable, points: Tensor, object_index: Tensor, epsilon: float) -> Tensor:
    """Unit outward normals (N, 3) at points (N, 3) of objects (N,) from central differences."""
    k = points.new_tensor(_OFFSETS)  # (3, 3)
    offsets = torch.cat([k, -k]) * epsilon  # (6, 3)
    values = table.sdf((points[:, None, :] + offsets).reshape(-1, 3), object_index.repeat_interleave(6))
    values = values.reshape(-1, 2, 3)
    return F.normalize(values[:, 0] - values[:, 1], dim=-1)


def _as_image(background: Tensor, batch: int, height: int, width: int) -> Tensor:
    """Background as (3,), (B, 3) or anything that expands to (B, 3, H, W) -> (B, 3, H, W)."""
    if background.dim() == 1:
        background = background[None, :, None, None]
    elif background.dim() == 2:
        background = background[:, :, None, None]
    return background.expand(batch, 3, height, width)


def render_layer(
    table: PartTable,
    object_index: Tensor,
    cameras: Cameras,
    modes: Sequence[ShadingMode],
    colors: Tensor,
    cfg: WorldConfig,
) -> tuple[Tensor, Tensor]:
    """Shaded color (B, 3, H, W) (zero where no object is hit) and coverage (B, 1, H, W).

    Camera b sees object `object_index[b]` of `table`, painted `colors[b]` (parts with a fixed
    color keep it) and shaded in `modes[b]`.
    """
    B, H, W = len(cameras), cameras.height, cameras.width
    if len(modes) != B:
        raise ValueError(f"got {len(modes)} shading modes for {B} cameras")
    origins, directions = generate_rays(cameras)  # (B, H, W, 3) each
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    device = origins.device
    ray_object = object_index.to(device).repeat_interleave(H * W)  # (R,)

    near, far, _ = intersect_sphere(origins, directions, cfg.bound_radius)
    compact_every = FUSED_COMPACT_EVERY if fused_on(device, cfg) else 1
    t, hit = sphere_trace(
        table, ray_object, origins, directions, near, far, cfg.march_steps, cfg.hit_epsilon, compact_every
    )

    index = torch.nonzero(hit).squeeze(-1)  # (N,) hit pixels, flattened over (B, H, W)
    camera = torch.div(index, H * W, rounding_mode="floor")  # (N,)
    points = origins[index] + t[index, None] * directions[index]  # (N, 3)
    normals = sdf_normals(table, points, ray_object[index], cfg.normal_epsilon)
    albedo = table.albedo(points, ray_object[index], colors.to(points)[camera])
    light = cameras.light_position.to(points)[camera]  # (N, 3)

    # Shade every hit point in each mode present and pick per camera: no boolean indexing.
    mode_of_point = torch.tensor([SHADING_MODES.index(m) for m in modes], device=device)[camera]
    rgb = albedo
    for m, name in enumerate(SHADING_MODES):
        if name != "albedo" and name in modes:
            shaded = shade(name, albedo, normals, points, light, cfg.shading)
            rgb = torch.where((mode_of_point == m)[:, None], shaded, rgb)

    color = torch.zeros(B * H * W, 3, device=device, dtype=points.dtype)
    color[index] = rgb.clamp(0.0, 1.0)
    color = color.reshape(B, H, W, 3).permute(0, 3, 1, 2)
    coverage = hit.to(points.dtype).reshape(B, 1, H, W)
    return color, coverage


def _supersampled(cameras: Cameras, factor: int) -> Cameras:
    return Cameras(
        c2w=cameras.c2w,
        focal=cameras.focal * factor,
        width=cameras.width * factor,
        height=cameras.height * factor,
        elevation=cameras.elevation,
        azimuth=cameras.azimuth,
        distance=cameras.distance,
        light_position=cameras.light_position,
    )


def render_table(
    table: PartTable,
    object_index: Tensor,
    cameras: Cameras,
    modes: Sequence[ShadingMode],
    background: Tensor,
    colors: Tensor,
    cfg: WorldConfig,
) -> Tensor:
    """Render object `object_index[b]` of `table` from camera b over `background`: (B, 3, H, W).

    `background` is (3,), (B, 3) or expands to (B, 3, H, W) at the output resolution. With
    cfg.supersample = k the objects are traced at k times the resolution and their color and
    coverage box-filtered before compositing, which anti-aliases the silhouettes.
    """
    k = cfg.supersample
    traced = cameras if k == 1 else _supersampled(cameras, k)
    color, coverage = render_layer(table, object_index, traced, modes, colors, cfg)
    if k > 1:
        color, coverage = F.avg_pool2d(color, k), F.avg_pool2d(coverage, k)
    bg = _as_image(background.to(color), len(cameras), cameras.height, cameras.width)
    return color + (1.0 - coverage) * bg


def render_object(
    obj: WorldObject,
    cameras: Cameras,
    mode: ShadingMode | Sequence[ShadingMode],
    background: Tensor,
    colors: Tensor | None = None,
    cfg: WorldConfig | None = None,
) -> Tensor:
    """Render `obj` from each camera over `background`: (B, 3, H, W) RGB in [0, 1].

    `mode` is one shading mode for all cameras or one per camera; `colors` (B, 3) replaces the
    object's color per camera (parts with a fixed color keep theirs); `background` as in
    `render_table`.
    """
    cfg = cfg or WorldConfig()
    B, device = len(cameras), cameras.c2w.device
    modes = [mode] * B if isinstance(mode, str) else list(mode)
    if colors is None:
        colors = torch.tensor(obj.color, device=device).expand(B, 3)
    table = table_for((obj,), str(device))
    index = torch.zeros(B, dtype=torch.long, device=device)
    return render_table(table, index, cameras, modes, background, colors, cfg)
