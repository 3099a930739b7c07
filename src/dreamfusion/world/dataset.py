"""On-the-fly training data: random objects, colors, cameras, shading and backgrounds, rendered.

All randomness is drawn on the CPU from one `torch.Generator`, so a seeded generator gives the
same batch on any device; only the rendering runs on `device`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dreamfusion.render.shading import SHADING_MODES
from dreamfusion.scene.cameras import sample_cameras
from dreamfusion.world.captions import NOUNS, TEMPLATES, WORLD_VIEWS, caption, with_view, world_view_index
from dreamfusion.world.colors import COLOR_NAMES, COLORS
from dreamfusion.world.config import WorldConfig
from dreamfusion.world.objects import OBJECTS, SHAPE_NAMES
from dreamfusion.world.render import fused_on, render_table
from dreamfusion.world.table import table_for


def background_columns(
    n: int,
    height: int,
    generator: torch.Generator,
    cfg: WorldConfig,
    avoid: Tensor | None = None,
) -> Tensor:
    """One column (n, 3, H, 1) of each background, constant along rows: see sample_backgrounds."""
    kind = torch.rand(n, generator=generator)
    top = torch.rand(n, 3, generator=generator)
    bottom = torch.rand(n, 3, generator=generator)
    white = kind < cfg.background_white
    gradient = ~white & (kind < cfg.background_white + cfg.background_gradient)
    top[white] = 1.0
    bottom = torch.where(gradient[:, None], bottom, top)
    if avoid is not None:
        for c in (top, bottom):
            close = (c - avoid).abs().amax(-1) < cfg.background_min_contrast
            c[close] = 1.0 - c[close]
    # Row weight 0 at the top row, 1 at the bottom row.
    w = torch.linspace(0.0, 1.0, height)[None, None, :, None]
    return top[:, :, None, None] * (1.0 - w) + bottom[:, :, None, None] * w


def sample_backgrounds(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator,
    cfg: WorldConfig,
    avoid: Tensor | None = None,
) -> Tensor:
    """Plain white, plain random and vertical-gradient backgrounds: (n, 3, H, W) on the CPU.

    `avoid` (n, 3): the object's color per image; background colors too close to it (white
    included) are replaced by their complement so the object stays visible in albedo images.
    """
    return background_columns(n, height, generator, cfg, avoid).expand(n, 3, height, width)


def _pick(n: int, k: int, generator: torch.Generator) -> Tensor:
    return torch.randint(k, (n,), generator=generator)


def sample_batch(
    n: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    objects: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    cfg: WorldConfig | None = None,
) -> tuple[Tensor, list[str], dict[str, Tensor]]:
    """Draw and render `n` captioned images of the world.

    `objects` / `colors` restrict the names drawn from (default: all of OBJECTS / COLORS);
    `generator` must be a CPU generator. Returns
      images (n, 3, H, W) in [0, 1] on `device` (H = W = cfg.camera.resolution, 64 by default),
      captions: n strings such as "a photo of a red box, front view",
      labels on `device`: "shape" (index into SHAPE_NAMES), "color" (into COLOR_NAMES),
        "view" (into WORLD_VIEWS), "mode" (into SHADING_MODES), all long; and float camera
        "elevation", "azimuth" (degrees), "distance", "focal" (multiplier lambda = focal / width),
        and "c2w" (n, 4, 4) camera-to-world matrices.
    """
    cfg = cfg or WorldConfig()
    object_names = list(objects) if objects is not None else list(SHAPE_NAMES)
    color_names = list(colors) if colors is not None else list(COLOR_NAMES)
    for name in object_names:
        if name not in OBJECTS:
            raise KeyError(f"unknown object '{name}' (known: {', '.join(SHAPE_NAMES)})")
    for name in color_names:
        if name not in COLORS:
            raise KeyError(f"unknown color '{name}' (known: {', '.join(COLOR_NAMES)})")

    pick = _pick(n, len(object_names), generator)  # index into object_names
    shape = torch.tensor([SHAPE_NAMES.index(s) for s in object_names])[pick]
    color = torch.tensor([COLOR_NAMES.index(c) for c in color_names])[_pick(n, len(color_names), generator)]
    cameras = sample_cameras(n, cfg.camera, generator)
    mode = torch.multinomial(torch.tensor(cfg.mode_shares), n, replacement=True, generator=generator)
    template = _pick(n, len(TEMPLATES), generator)
    synonym = torch.rand(n, generator=generator)
    suffix = torch.rand(n, generator=generator) < cfg.view_suffix_probability
    rgb = torch.tensor([COLORS[c] for c in COLOR_NAMES])[color]  # (n, 3)
    res = cfg.camera.resolution
    backgrounds = background_columns(n, res, generator, cfg, avoid=rgb)  # (n, 3, H, 1)
    view = world_view_index(cameras.elevation, cameras.azimuth, cfg.bottom_below, cfg.overhead_above)

    device = torch.device(device)
    modes = [SHADING_MODES[m] for m in mode.tolist()]
    if not fused_on(device, cfg):
        images = torch.empty(n, 3, res, res, device=device)
        for p in pick.unique().tolist():
            idx = torch.nonzero(pick == p).squeeze(-1)
            table = table_for((OBJECTS[object_names[p]],), str(device))
            images[idx.to(device)] = render_table(
                table,
                torch.zeros(len(idx), dtype=torch.long),
                cameras[idx].to(device),
                [modes[i] for i in idx.tolist()],
                backgrounds[idx].to(device),
                rgb[idx].to(device),
                cfg,
            )
    else:
        table = table_for(tuple(OBJECTS[name] for name in object_names), str(device))
        images = render_table(
            table, pick, cameras.to(device), modes, backgrounds.to(device), rgb.to(device), cfg
        )

    captions = []
    columns = (shape, color, template, synonym, view.cpu(), suffix)
    for s, c, tpl, u, v, with_suffix in zip(*(x.tolist() for x in columns), strict=True):
        name = SHAPE_NAMES[s]
        text = caption(name, COLOR_NAMES[c], tpl, int(u * len(NOUNS[name])))
        captions.append(with_view(text, WORLD_VIEWS[v]) if with_suffix else text)

    labels = {
        "shape": shape,
        "color": color,
        "view": view,
        "mode": mode,
        "elevation": cameras.elevation,
        "azimuth": cameras.azimuth,
        "distance": cameras.distance,
        "focal": cameras.focal / res,
        "c2w": cameras.c2w,
    }
    return images, captions, {k: v.to(device) for k, v in labels.items()}
