"""Weights shipped inside the package.

prior.safetensors          the bundled prior (docs/prior.md), float16, at most 16 MiB
prior.safetensors.sha256   its SHA-256, checked every time it is loaded

Both are written by `dreamfusion prior train` (RUN/prior.safetensors and its .sha256): copy the
two files here to ship new weights.
"""

from pathlib import Path

PRIOR_PATH = Path(__file__).with_name("prior.safetensors")
"""Where the packaged prior's weights are."""
