"""Weights shipped inside the package.

prior.safetensors          the bundled prior (docs/prior.md), float16, at most 16 MiB
prior.safetensors.sha256   its SHA-256, checked every time it is loaded
prior_high_noise.safetensors (+ .sha256)
                           the high-noise expert: a fine-tune of the prior on t in [0.6, 1) that
                           learned the azimuth (docs/prior.md), used with
                           `--guidance.high-noise-model bundled`

Both are written by `dreamfusion prior train` (RUN/prior.safetensors and its .sha256): copy the
two files here to ship new weights.
"""

from pathlib import Path

PRIOR_PATH = Path(__file__).with_name("prior.safetensors")
"""Where the packaged prior's weights are."""
HIGH_NOISE_PRIOR_PATH = Path(__file__).with_name("prior_high_noise.safetensors")
"""Where the packaged high-noise expert's weights are."""
