"""Score a trained run against the world's ground truth: every metric of docs/evaluation.md in one dict."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dreamfusion.eval.front import front_consistency
from dreamfusion.eval.geometry import (
    aligned_iou,
    density_grid,
    identify_shape,
    iou,
    opaque_occupancy,
    support_level,
    truth_grid,
)
from dreamfusion.eval.surface import chamfer_distance, surface_color
from dreamfusion.fields import build_field
from dreamfusion.fields.base import Field
from dreamfusion.training.checkpoint import list_checkpoints
from dreamfusion.training.loading import load_run
from dreamfusion.world import COLORS, OBJECTS, PRIMITIVE_VOLUMES


def initial_field(config, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The run's field before any training: built from its config under its seed, as the trainer does."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        field = build_field(config.field)
    return field.to(device).eval()


def render_level(field: Field, resolution: int = 128) -> float:
    """The density at which rays through the field turn half opaque (export.grid.auto_level): the
    surface a render of this field shows, whatever the field's overall density scale."""
    from dreamfusion.export.grid import auto_level, sample_density

    return float(auto_level(sample_density(field, resolution)).value)


def evaluate_field(
    field: Field,
    object_name: str,
    color_name: str,
    resolution: int = 64,
    level: float | str = "auto",
    mesh: bool = True,
    mesh_resolution: int = 128,
) -> dict:
    """Geometry, color, shape identity, Chamfer distance and (for fronted objects) the front of one field.

    `level` "auto" puts the surface where renders put it (the export's transmittance rule, per
    field); a number fixes it (DENSITY_LEVEL is the fixed world-unit choice)."""
    level = render_level(field) if level == "auto" else float(level)
    if object_name not in OBJECTS:
        raise KeyError(f"unknown object '{object_name}' (known: {', '.join(OBJECTS)})")
    if color_name not in COLORS:
        raise KeyError(f"unknown color '{color_name}' (known: {', '.join(COLORS)})")
    obj = OBJECTS[object_name]
    bound = float(field.bound_radius)
    density = density_grid(field, resolution, bound)
    occupied = density > level
    truth = truth_grid(obj, resolution, bound, density.device)
    alignment = aligned_iou(density, bound, obj, level)
    identified, shape_ious = identify_shape(density, bound, level)
    # The geometric support (half the plateau density) beside the render level: a faint field's
    # renders put its surface inside the object, while its support may have the right size.
    support = support_level(density)
    support_alignment = aligned_iou(density, bound, obj, support)
    support_identified, _ = identify_shape(density, bound, support)
    color = surface_color(field, obj, color_name, alignment.scale, alignment.shift)
    cell = (2.0 * bound / resolution) ** 3
    result = {
        "object": object_name,
        "color": color_name,
        "level": level,
        "resolution": resolution,
        "iou": iou(occupied, truth),
        "scaled_iou": alignment.iou,
        "scale": alignment.scale,
        "shift": alignment.shift,
        "support_level": support,
        "support_iou": iou(density > support, truth),
        "support_scaled_iou": support_alignment.iou,
        "support_scale": support_alignment.scale,
        "support_identified": support_identified,
        "opaque_iou": iou(opaque_occupancy(density, bound), truth),
        "volume": float(occupied.sum()) * cell,
        "true_volume": PRIMITIVE_VOLUMES.get(object_name, float(truth.sum()) * cell),
        "identified": identified,
        "shape_correct": identified == object_name,
        "shape_ious": shape_ious,
        "color_error": color.error,
        "albedo": list(color.body_albedo),
        "nearest_color": color.nearest,
        "color_correct": color.correct,
    }
    if mesh:
        result.update(_chamfer(field, obj, mesh_resolution))
    if obj.front is not None:
        front = front_consistency(field, obj, color_name, alignment.scale, alignment.shift, level)
        result.update(
            front_correct=front.correct,
            two_fronts=front.two_fronts,
            front_best=front.best,
            front_margin=front.margin,
            front_scores={str(k): v for k, v in front.scores.items()},
            front_janus=front.janus_scores,
        )
    return result


def _chamfer(field: Field, obj, resolution: int) -> dict:
    """Chamfer distance of the mesh that export would make (automatic level), or why there is none."""
    from dreamfusion.errors import UserError
    from dreamfusion.export import ExportOptions, build_mesh

    try:
        mesh, level, _, _ = build_mesh(field, ExportOptions(resolution=resolution))
    except (UserError, ValueError) as e:
        return {"chamfer": None, "mesh_error": str(e)}
    c = chamfer_distance(mesh, obj)
    return {
        "chamfer": c.chamfer,
        "chamfer_accuracy": c.accuracy,
        "chamfer_completeness": c.completeness,
        "mesh_level": level.value,
    }


def evaluate_run(
    run_dir: str | Path,
    object_name: str,
    color_name: str,
    device: str | torch.device = "cpu",
    resolution: int = 64,
    level: float | str = "auto",
    mesh: bool = True,
) -> dict:
    """Every metric of a finished run (its newest checkpoint) against `object_name` painted `color_name`.

    Adds to `evaluate_field`'s dict: the initial field's IoU at true scale and aligned (the run's
    field rebuilt from its config and seed, untrained), the prompt, steps, training seconds, and
    the seconds this evaluation took.
    """
    start = time.perf_counter()
    run = load_run(run_dir, device)
    result = evaluate_field(run.field, object_name, color_name, resolution, level, mesh)
    init = initial_field(run.config, device)
    bound = float(init.bound_radius)
    init_density = density_grid(init, resolution, bound)
    init_level = render_level(init) if level == "auto" else float(level)
    truth = truth_grid(object_name, resolution, bound, init_density.device)
    result.update(
        prompt=run.prompt,
        run_dir=str(run.run_dir),
        steps=run.step,
        train_seconds=run.train_seconds,
        initial_level=init_level,
        initial_iou=iou(init_density > init_level, truth),
        initial_support_iou=iou(init_density > support_level(init_density), truth),
        initial_scaled_iou=aligned_iou(init_density, bound, object_name, init_level).iou,
        initial_max_density=float(init_density.max()),
        field=run.config.field.kind,
        eval_seconds=time.perf_counter() - start,
    )
    return result


def quality_curve(run_dir: Path, object_name: str, device: str, resolution: int, final: dict) -> list[dict]:
    """IoU against training seconds: the initial field, every saved checkpoint, and the final one
    (whose numbers `final`, evaluate_run's, already hold). Same level rule and grid as evaluate_run."""
    points = [
        {
            "step": 0,
            "train_seconds": 0.0,
            "iou": final["initial_iou"],
            "scaled_iou": final["initial_scaled_iou"],
            "support_iou": final.get("initial_support_iou"),
        }
    ]
    for path in list_checkpoints(run_dir / "checkpoints")[:-1]:
        run = load_run(path, device)
        bound = float(run.field.bound_radius)
        level = render_level(run.field)
        density = density_grid(run.field, resolution, bound)
        truth = truth_grid(object_name, resolution, bound, density.device)
        points.append(
            {
                "step": run.step,
                "train_seconds": run.train_seconds,
                "iou": iou(density > level, truth),
                "scaled_iou": aligned_iou(density, bound, object_name, level).iou,
                "support_iou": iou(density > support_level(density), truth),
                "opaque_iou": iou(opaque_occupancy(density, bound), truth),
                "level": level,
            }
        )
    points.append(
        {
            "step": final["steps"],
            "train_seconds": final["train_seconds"],
            "iou": final["iou"],
            "scaled_iou": final["scaled_iou"],
            "support_iou": final.get("support_iou"),
            "opaque_iou": final.get("opaque_iou"),
            "level": final.get("level"),
        }
    )
    return points
