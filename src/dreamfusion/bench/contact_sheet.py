"""The fidelity benchmark's contact sheet: turntable views of each result beside the same views of
its ground truth, one row per run, saved per run (`render_row`) and stacked (`contact_sheet`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from dreamfusion.atomic import atomic_write
from dreamfusion.bench.report import VIEWS, front_cell

SHEET_BACKGROUND = (0.6, 0.6, 0.6)
"""Mid grey behind results and truths alike: white and black objects both stand out."""
GAP = 8
LABEL_WIDTH = 230


def row_size(path: Path) -> int | None:
    """The frame size of a saved row, or None when there is none."""
    if not path.is_file():
        return None
    with Image.open(path) as image:
        return image.height


def render_row(
    run_dir: Path, object_name: str, color: str, size: int, path: Path, device: str = "cpu"
) -> Path:
    """Save the run's contact-sheet row: its field from the VIEWS, a gap, the truth from the same
    cameras under the same light and shading. (size, 8 size + GAP, 3) uint8 PNG."""
    from dreamfusion.export.turntable import TurntableOptions, render_turntable, turntable_cameras
    from dreamfusion.fields.background import ConstantBackground
    from dreamfusion.training.loading import load_run
    from dreamfusion.world import OBJECTS, WorldConfig, render_object

    run = load_run(run_dir, device)
    options = TurntableOptions(frames=len(VIEWS), size=size, mode="color")
    result = render_turntable(run.field, ConstantBackground(SHEET_BACKGROUND), run.config, options)
    truth = render_object(
        OBJECTS[object_name].with_color(color),
        turntable_cameras(options),
        "lambertian",
        torch.tensor(SHEET_BACKGROUND),
        cfg=WorldConfig(shading=run.config.shading),
    )  # (V, 3, S, S)
    truth = (truth.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    gap = np.full((size, GAP, 3), 255, dtype=np.uint8)
    row = np.concatenate([*result, gap, *truth], axis=1)
    atomic_write(path, lambda tmp: Image.fromarray(row).save(tmp, format="PNG"))
    return path


def contact_sheet(report: dict, out: Path) -> Path:
    """OUT/contact_sheet.png: a header, then for every run its label and its row of views."""
    rows = [Image.open(out / r["frames"]).convert("RGB") for r in report["runs"]]
    width = LABEL_WIDTH + max(row.width for row in rows)
    heights = [max(row.height, 40) for row in rows]
    header = 18
    sheet = Image.new("RGB", (width, header + sum(heights)), "white")
    draw = ImageDraw.Draw(sheet)
    views = ", ".join(VIEWS)
    half = (width - LABEL_WIDTH - GAP) // 2
    draw.text((4, 3), report["prompt_set"]["name"] + f" v{report['prompt_set']['version']}", fill="black")
    draw.text((LABEL_WIDTH + 2, 3), f"result: {views}", fill="black")
    draw.text((LABEL_WIDTH + half + GAP + 2, 3), "ground truth", fill="black")
    y = header
    for r, row, h in zip(report["runs"], rows, heights, strict=True):
        sheet.paste(row, (LABEL_WIDTH, y))
        front = front_cell(r)
        label = (
            f"{r['prompt']} (seed {r['seed']})\nIoU {r['iou']:.2f}, scaled {r['scaled_iou']:.2f}\n"
            f"{r['identified']}, {r['nearest_color']}" + ("" if front == "-" else f", front {front}")
        )
        draw.multiline_text((4, y + 2), label, fill="black", spacing=2)
        y += h
    path = out / "contact_sheet.png"
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return path
