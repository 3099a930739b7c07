"""Measuring results against the world's ground truth: a render classifier, 3D geometry and color metrics."""
