"""dreamfusion: text-to-3D by score distillation sampling, in pure PyTorch."""

__version__ = "0.2.0"

__all__ = ["__version__", "generate", "generate_many"]


def __getattr__(name: str):
    # Lazy: `import dreamfusion` stays cheap; `dreamfusion.generate` pulls in torch on first use.
    if name == "generate":
        from dreamfusion.api import generate

        return generate
    if name == "generate_many":
        from dreamfusion.batch.runner import generate_many

        return generate_many
    raise AttributeError(f"module 'dreamfusion' has no attribute {name!r}")
