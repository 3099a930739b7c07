"""Captions of the world's renders: a small phrase grammar and the camera's view suffix.

A caption is a template filled with a color word and a noun (a synonym of the shape), then
the paper's view suffix (", front view", ...) from the camera that rendered the image, with
one addition for this world: ", bottom view" for cameras below BOTTOM_BELOW degrees.
"""

from __future__ import annotations

from torch import Tensor

from dreamfusion.scene.prompts import ALL_VIEWS, view_index
from dreamfusion.world.colors import COLORS

TEMPLATES: tuple[str, ...] = (
    "{a} {color} {noun}",
    "a photo of {a} {color} {noun}",
    "a render of {a} {color} {noun}",
    "a 3d model of {a} {color} {noun}",
    "{color} {noun}",
)
"""Phrase templates; `{a}` becomes the article for the color word ("a" or "an")."""

NOUNS: dict[str, tuple[str, ...]] = {
    "cube": ("cube", "box", "block"),
    "sphere": ("sphere", "ball"),
    "cylinder": ("cylinder", "column"),
    "cone": ("cone",),
    "torus": ("torus", "donut", "ring"),
    "pyramid": ("pyramid",),
    "capsule": ("capsule", "pill"),
    "snowman": ("snowman",),
    "house": ("house", "cottage"),
    "chair": ("chair",),
    "duck": ("duck", "rubber duck"),
    "table": ("table",),
    "tree": ("tree", "pine tree"),
    "dumbbell": ("dumbbell",),
    "mushroom": ("mushroom",),
}
"""Object name -> nouns that name it; the first is the canonical one."""

WORLD_VIEWS: tuple[str, ...] = ALL_VIEWS
"""The paper's views plus "bottom"; `world_view_index` returns indices into this tuple."""

BOTTOM_BELOW = -20.0
"""Cameras with elevation below this (degrees) get ", bottom view"."""

OVERHEAD_ABOVE = 60.0
"""Cameras with elevation above this (degrees) get ", overhead view" (the paper's rule)."""


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def caption(shape: str, color: str, template: int = 0, synonym: int = 0) -> str:
    """The caption of a `color` `shape` without view suffix, e.g. ("cube", "red", 1, 1) ->
    "a photo of a red box". `template` and `synonym` index TEMPLATES and NOUNS[shape]."""
    if shape not in NOUNS:
        raise KeyError(f"unknown shape '{shape}' (known: {', '.join(NOUNS)})")
    if color not in COLORS:
        raise KeyError(f"unknown color '{color}' (known: {', '.join(COLORS)})")
    return TEMPLATES[template].format(a=article(color), color=color, noun=NOUNS[shape][synonym])


def with_view(text: str, view: str) -> str:
    """Append the view suffix: ("a red cube", "front") -> "a red cube, front view"."""
    if view not in WORLD_VIEWS:
        raise ValueError(f"unknown view '{view}' (use one of {', '.join(WORLD_VIEWS)})")
    return f"{text}, {view} view"


def world_view_index(
    elevation: Tensor,
    azimuth: Tensor,
    bottom_below: float = BOTTOM_BELOW,
    overhead_above: float = OVERHEAD_ABOVE,
) -> Tensor:
    """Index into WORLD_VIEWS per camera: (B,) degrees, (B,) degrees -> (B,) long.

    The paper's rule (dreamfusion.scene.prompts.view_index), then "bottom" below `bottom_below`.
    """
    return view_index(elevation, azimuth, overhead_above, bottom_below)


def vocabulary() -> tuple[str, ...]:
    """Every word a world caption can contain, sorted: the text encoder's vocabulary."""
    words: set[str] = {"view", *WORLD_VIEWS, *COLORS, "a", "an"}
    for template in TEMPLATES:
        words.update(w for w in template.split() if not w.startswith("{"))
    for nouns in NOUNS.values():
        for noun in nouns:
            words.update(noun.split())
    return tuple(sorted(words))
