"""A procedural 3D world with exact ground truth: objects, colors, captions and a dataset renderer.

Coordinates: +z up, the front faces +x, objects centered at the origin. See docs/world.md.
"""

from dreamfusion.world.captions import (
    BOTTOM_BELOW,
    NOUNS,
    TEMPLATES,
    WORLD_VIEWS,
    caption,
    vocabulary,
    with_view,
    world_view_index,
)
from dreamfusion.world.colors import COLOR_NAMES, COLORS
from dreamfusion.world.config import WorldConfig, world_cameras
from dreamfusion.world.dataset import sample_backgrounds, sample_batch
from dreamfusion.world.objects import (
    COMPOSITES,
    FRONTED,
    OBJECTS,
    PRIMITIVE_VOLUMES,
    PRIMITIVES,
    SHAPE_NAMES,
    WORLD_VERSION,
    Part,
    WorldObject,
)
from dreamfusion.world.render import render_layer, render_object, render_table, sdf_normals, sphere_trace
from dreamfusion.world.table import PartTable

__all__ = [
    "BOTTOM_BELOW",
    "COLORS",
    "COLOR_NAMES",
    "COMPOSITES",
    "FRONTED",
    "NOUNS",
    "OBJECTS",
    "PRIMITIVES",
    "PRIMITIVE_VOLUMES",
    "SHAPE_NAMES",
    "WORLD_VERSION",
    "TEMPLATES",
    "WORLD_VIEWS",
    "Part",
    "PartTable",
    "WorldConfig",
    "WorldObject",
    "caption",
    "render_layer",
    "render_object",
    "render_table",
    "sample_backgrounds",
    "sample_batch",
    "sdf_normals",
    "sphere_trace",
    "vocabulary",
    "with_view",
    "world_cameras",
    "world_view_index",
]
