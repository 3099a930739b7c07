"""The bundled prior: a small text-to-image pixel diffusion model trained on the procedural world.

text.py (tokenizer, text encoder) -> unet.py (camera- and text-conditioned U-Net) -> model.py
(PriorModel, one safetensors file with a checksum) -> data.py + train.py (training on world
renders) -> sample.py (DDIM with CFG). The guidance backend is dreamfusion.guidance.bundled.
See docs/prior.md.
"""

import importlib

_EXPORTS = {
    "PriorConfig": "model",
    "PriorFileError": "model",
    "PriorModel": "model",
    "load_prior": "model",
    "save_prior": "model",
    "TextEncoder": "text",
    "TextStates": "text",
    "Tokenizer": "text",
    "UNet": "unet",
    "UNetConfig": "unet",
    "camera_features": "unet",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy, so that `dreamfusion --help` (which builds the `prior` parsers) does not import torch.
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dreamfusion.prior.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dreamfusion.prior' has no attribute {name!r}")
