"""The renderer: cameras -> rays -> field samples -> shading -> composited image.

One straight path (`render`); `render_views` wraps it for previews and evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamfusion.fields.base import Background, Field
from dreamfusion.render.occupancy import OccupancyGrid
from dreamfusion.render.shading import SHADING_MODES, ShadingConfig, ShadingMode, shade
from dreamfusion.render.volume import (
    accumulate,
    accumulated_alpha,
    composite,
    compute_weights,
    expected_depth,
    normals_from_density,
    sample_along_rays,
)
from dreamfusion.scene.cameras import Cameras
from dreamfusion.scene.rays import generate_rays, intersect_sphere


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
    min_transmittance: float = 0.0
    """Training skips the samples that their ray reaches with less light than this (early ray termination;
    0: off). A density pass without autograd finds them before the field is evaluated with it. What the
    skipped samples weigh adds up to less than this, so renders and gradients move by less than that;
    it pays on a CPU, where a sample's training pass costs several of the density pass."""


@dataclass
class RenderOutput:
    """Images of a batch of B cameras at H x W, and the per-sample tensors the losses need."""

    image: Tensor  # (B, 3, H, W) shaded color composited over the background
    alpha: Tensor  # (B, 1, H, W) accumulated opacity
    depth: Tensor  # (B, 1, H, W) expected depth sum_i w_i t_i (0 on empty rays)
    normal: Tensor  # (B, 3, H, W) weight-accumulated normals (zeros when not computed)
    weights: Tensor  # (R, N) rendering weights, R = B * H * W
    t_mid: Tensor  # (R, N) sample distances along the rays
    deltas: Tensor  # (R, N) widths of the samples' bins
    sample_normals: Tensor | None  # (R, N, 3) per-sample normals, None when not computed
    directions: Tensor  # (R, 3) unit ray directions
    samples_evaluated: int  # samples the field was evaluated at, of R * N (the others were skipped)


@dataclass
class _Chunk:
    """What one chunk of rays contributes; concatenated into a RenderOutput."""

    color: Tensor  # (r, 3) composited
    alpha: Tensor  # (r,)
    depth: Tensor  # (r,)
    normal: Tensor  # (r, 3)
    weights: Tensor  # (r, N)
    sample_normals: Tensor | None  # (r, N, 3)
    evaluated: int


def _check_field_output(density: Tensor, albedo: Tensor, n_points: int) -> None:
    if density.shape != (n_points,):
        raise ValueError(
            f"field must return density of shape ({n_points},) for {n_points} points; "
            f"got {tuple(density.shape)}"
        )
    if albedo.shape != (n_points, 3):
        raise ValueError(
            f"field must return albedo of shape ({n_points}, 3) for {n_points} points; "
            f"got {tuple(albedo.shape)}"
        )


def _scatter(values: Tensor, index: Tensor, n: int) -> Tensor:
    """(k, ...) values at rows `index` (k,) of a zero-filled (n, ...) float32 tensor; differentiable."""
    out = values.new_zeros((n, *values.shape[1:]), dtype=torch.float32)
    return out.index_copy(0, index, values.float())


DENSE_SHARE = 0.9
"""On CUDA, with at least this share of the grid's cells occupied, the field is evaluated at every
sample and the skipped ones are zeroed: skipping would save little, and finding which samples to
keep (`nonzero`) makes the host wait for the device in every render."""


NORMALS_DROPPED_WEIGHT = 1.0 / 512.0
"""Renders without a graph (previews, turntables, evaluation) compute normals only at the samples
whose rendering weight is at least this over the samples per ray; the rest, mostly empty space and
what lies hidden behind a surface, get normal 0. What those samples weigh adds up to less than this
on every ray, so no 8-bit pixel moves by more than half a level."""


def _evaluate_all(flat: Tensor, occupancy: OccupancyGrid | None) -> bool:
    return flat.is_cuda and (occupancy is None or occupancy.share >= DENSE_SHARE)


def _mask(values: Tensor, keep: Tensor) -> Tensor:
    """(n, ...) values, float32, zeroed where `keep` (n,) is False; differentiable."""
    values = values.float()
    return torch.where(keep.reshape(-1, *[1] * (values.dim() - 1)), values, values.new_zeros(()))


def _reached(field: Field, flat: Tensor, keep: Tensor, deltas: Tensor, min_transmittance: float) -> Tensor:
    """(r * N,) bool: the samples among `keep` that their ray reaches with at least `min_transmittance`
    of its light, from the field's density at them (no autograd). flat (r * N, 3), deltas (r, N)."""
    r, n = deltas.shape
    index = keep.nonzero()[:, 0]
    with torch.no_grad():
        density = _scatter(field.density(flat.index_select(0, index)), index, r * n).view(r, n)
    optical = density * deltas
    before = torch.cumsum(optical, dim=-1) - optical  # optical depth up to each sample
    return keep & (before <= -math.log(min_transmittance)).reshape(-1)


def _fused_normals(field: Field, points: Tensor, create_graph: bool) -> tuple[Tensor, Tensor, Tensor] | None:
    """A field's density, albedo and normals in one pass where it has such a path (the hash grid's
    fused kernels); None, and the renderer differentiates the density itself, where not."""
    fused = getattr(field, "forward_with_normals", None)
    return fused(points, create_graph) if fused is not None else None


def _render_chunk(
    field: Field,
    background: Background,
    origins: Tensor,  # (r, 3)
    directions: Tensor,  # (r, 3)
    light: Tensor,  # (r, 3)
    t_mid: Tensor,  # (r, N)
    deltas: Tensor,  # (r, N)
    shading: ShadingMode,
    shading_cfg: ShadingConfig,
    compute_normals: bool,
    occupancy: OccupancyGrid | None,
    min_transmittance: float = 0.0,
) -> _Chunk:
    r, n = t_mid.shape
    points = origins[:, None, :] + t_mid[..., None] * directions[:, None, :]  # (r, N, 3)
    flat = points.reshape(r * n, 3)
    building_graph = torch.is_grad_enabled()

    # The field sees only samples that can contribute: those with a segment (rays that miss the
    # bounding sphere have none) in an occupied cell and, in training with `min_transmittance`, not
    # hidden behind what the ray has already crossed. The others get density, albedo and normal 0,
    # exact for zero-length segments (their weight is 0 whatever the density) and, for empty cells
    # and hidden samples, an approximation. Compositing below stays dense, (r, N), as if all had
    # been evaluated.
    keep = (deltas > 0).reshape(-1)
    if occupancy is not None:
        keep = keep & occupancy.occupied(flat)
    index = None
    subset = flat
    if not _evaluate_all(flat, occupancy):
        if min_transmittance > 0 and building_graph:
            keep = _reached(field, flat, keep, deltas, min_transmittance)
        index = keep.nonzero()[:, 0]  # (k,): the host waits for the device here
        if len(index) == 0:
            # Still one sample, so that the image keeps a graph to the field (and fields need not
            # accept empty input). Evaluating a sample is never less exact than skipping it.
            index = torch.zeros(1, dtype=torch.long, device=flat.device)
        subset = flat.index_select(0, index)  # (k, 3)

    # Composite in float32 even when the field ran under autocast: a cumulative sum of optical
    # depth in bfloat16 loses the transmittance of all but the first few samples.
    def place(values: Tensor) -> Tensor:  # (k, ...) -> (r * n, ...) float32, 0 at skipped samples
        return _mask(values, keep) if index is None else _scatter(values, index, r * n)

    if compute_normals and not building_graph:
        # Without a graph to keep, the field runs without autograd at every sample, and the
        # backward pass that normals need (several times the cost of the forward) runs only where
        # the weights show a surface: see NORMALS_DROPPED_WEIGHT.
        with torch.no_grad():
            density, albedo = field(subset)
        _check_field_output(density, albedo, len(subset))
        density, albedo = place(density).reshape(r, n), place(albedo).reshape(r, n, 3)
        weights, _, _ = compute_weights(density, deltas)
        seen = ((weights > 0) & (weights >= NORMALS_DROPPED_WEIGHT / n)).reshape(-1).nonzero()[:, 0]
        at = flat.index_select(0, seen).detach()
        fused = _fused_normals(field, at, create_graph=False)
        if fused is not None:
            normals = fused[2]
        else:
            with torch.enable_grad():
                at = at.requires_grad_(True)
                normals = normals_from_density(field.density(at), at, create_graph=False)
        sample_normals = _scatter(normals.detach(), seen, r * n).reshape(r, n, 3)
    else:
        # Normals are the gradient of density w.r.t. the points, kept as a graph (create_graph)
        # so the orientation loss can reach the geometry during training.
        fused = _fused_normals(field, subset, create_graph=building_graph) if compute_normals else None
        if fused is not None:
            density, albedo, sample_normals = fused
            _check_field_output(density, albedo, len(subset))
        else:
            with torch.enable_grad() if compute_normals else contextlib.nullcontext():
                if compute_normals:
                    subset = subset.detach().requires_grad_(True)
                density, albedo = field(subset)
                _check_field_output(density, albedo, len(subset))
                sample_normals = None
                if compute_normals:
                    sample_normals = normals_from_density(density, subset, create_graph=building_graph)
        if not building_graph:
            density, albedo = density.detach(), albedo.detach()
        density = place(density).reshape(r, n)
        albedo = place(albedo).reshape(r, n, 3)
        if sample_normals is not None:
            sample_normals = place(sample_normals).reshape(r, n, 3)
        weights, _, _ = compute_weights(density, deltas)

    colors = shade(shading, albedo, sample_normals, points, light[:, None, :], shading_cfg)  # (r, N, 3)
    rgb = accumulate(weights, colors)  # (r, 3)
    alpha = accumulated_alpha(weights)  # (r,)
    bg = background(directions)
    if bg.shape != directions.shape:
        raise ValueError(
            f"background must return ({r}, 3) colors for ({r}, 3) directions; got {tuple(bg.shape)}"
        )
    color = composite(rgb, alpha[:, None], bg.float())
    if sample_normals is not None:
        normal = accumulate(weights, sample_normals)
    else:
        normal = torch.zeros_like(rgb)
    depth = expected_depth(weights, t_mid)  # (r,)
    return _Chunk(color, alpha, depth, normal, weights, sample_normals, evaluated=len(subset))


def _cat_optional(tensors: list[Tensor | None]) -> Tensor | None:
    if any(t is None for t in tensors):
        return None
    return torch.cat(tensors)  # type: ignore[arg-type]


def render(
    field: Field,
    background: Background,
    cameras: Cameras,
    shading: ShadingMode,
    render_cfg: RenderConfig,
    shading_cfg: ShadingConfig,
    generator: torch.Generator | None = None,
    compute_normals: bool = True,
    stratified: bool | None = None,
    keep_samples: bool = True,
    occupancy: OccupancyGrid | None = None,
) -> RenderOutput:
    """Render `cameras` (B views of H x W) of `field` over `background` under a shading mode.

    Samples lie only inside the field's bounding sphere; rays that miss it have zero-length
    segments, hence alpha 0, and show the background exactly: the field never sees them. With an
    `occupancy` grid, samples in its empty cells are skipped too (density 0), so the field is
    evaluated only where the grid says it has density. Stratified jitter (default:
    `render_cfg.stratified`) is drawn from `generator`, on the cameras' device, for all rays at
    once before chunking, so a chunked render equals the unchunked one.

    keep_samples=False drops the per-sample tensors as each chunk finishes (they dominate memory
    for long turntables): `weights`, `t_mid` and `deltas` are then empty (0, N) tensors and
    `sample_normals` None.
    """
    if shading not in SHADING_MODES:
        raise ValueError(f"unknown shading mode '{shading}' (use one of {', '.join(SHADING_MODES)})")
    if shading != "albedo" and not compute_normals:
        raise ValueError(f"shading mode '{shading}' needs normals; call render with compute_normals=True")
    if render_cfg.samples_per_ray < 1:
        raise ValueError(f"render_cfg.samples_per_ray must be >= 1, got {render_cfg.samples_per_ray}")
    stratified = render_cfg.stratified if stratified is None else stratified
    param = next(iter(field.parameters()), None) if isinstance(field, torch.nn.Module) else None
    if param is not None and param.device != cameras.c2w.device:
        raise ValueError(
            f"cameras are on {cameras.c2w.device} but the field on {param.device}; "
            "move them with cameras.to(device)"
        )

    if occupancy is not None and (
        occupancy.mask.device != cameras.c2w.device or occupancy.bound_radius != field.bound_radius
    ):
        raise ValueError(
            f"the occupancy grid (on {occupancy.mask.device}, radius {occupancy.bound_radius}) must live "
            f"on the cameras' device ({cameras.c2w.device}) and cover the field's bounding sphere "
            f"(radius {field.bound_radius})"
        )

    B, H, W = len(cameras), cameras.height, cameras.width
    origins, directions = generate_rays(cameras)  # (B, H, W, 3) each
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)  # (R, 3)
    light = cameras.light_position[:, None, :].expand(B, H * W, 3).reshape(-1, 3)  # (R, 3)
    near, far, _ = intersect_sphere(origins, directions, field.bound_radius)  # (R,) each
    t_mid, deltas = sample_along_rays(near, far, render_cfg.samples_per_ray, stratified, generator)

    n_rays = origins.shape[0]
    chunk = render_cfg.chunk_rays if render_cfg.chunk_rays > 0 else n_rays
    parts: list[_Chunk] = []
    for i in range(0, n_rays, chunk):
        part = _render_chunk(
            field,
            background,
            origins[i : i + chunk],
            directions[i : i + chunk],
            light[i : i + chunk],
            t_mid[i : i + chunk],
            deltas[i : i + chunk],
            shading,
            shading_cfg,
            compute_normals,
            occupancy,
            render_cfg.min_transmittance,
        )
        if not keep_samples:
            # A fresh empty tensor, not a [:0] view, which would keep the chunk's storage alive.
            part.weights, part.sample_normals = part.weights.new_empty(0, part.weights.shape[1]), None
        parts.append(part)

    def image(values: Tensor) -> Tensor:  # (R, C) -> (B, C, H, W)
        return values.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()

    return RenderOutput(
        image=image(torch.cat([p.color for p in parts])),
        alpha=image(torch.cat([p.alpha for p in parts])[:, None]),
        depth=image(torch.cat([p.depth for p in parts])[:, None]),
        normal=image(torch.cat([p.normal for p in parts])),
        weights=torch.cat([p.weights for p in parts]),
        t_mid=t_mid if keep_samples else t_mid.new_empty(0, t_mid.shape[1]),
        deltas=deltas if keep_samples else deltas.new_empty(0, deltas.shape[1]),
        sample_normals=_cat_optional([p.sample_normals for p in parts]),
        directions=directions,
        samples_evaluated=sum(p.evaluated for p in parts),
    )


def render_views(
    field: Field,
    background: Background,
    cameras: Cameras,
    shading: ShadingMode,
    render_cfg: RenderConfig,
    shading_cfg: ShadingConfig,
    chunk_rays: int = 4096,
    keep_samples: bool = False,
    normals: bool = True,
) -> RenderOutput:
    """Deterministic renders for previews and evaluation, without an autograd graph.

    Bin-center samples (no jitter), normals computed (unless `normals` is False, which only albedo
    shading allows: its image does not use them, `normal` is then zeros, and the field is evaluated
    without autograd, several times faster), `chunk_rays` rays at a time to bound memory. Outputs are
    detached. Per-sample tensors are dropped unless `keep_samples` (`weights`, `t_mid` and `deltas`
    are then empty (0, N) and `sample_normals` None; see `render`).
    """
    cfg = dataclasses.replace(render_cfg, chunk_rays=chunk_rays)
    with torch.no_grad():
        return render(
            field,
            background,
            cameras,
            shading,
            cfg,
            shading_cfg,
            compute_normals=normals,
            stratified=False,
            keep_samples=keep_samples,
        )
