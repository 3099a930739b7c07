"""From a field to an image: volume-rendering weights, the renderer, shading and the occupancy grid."""
