"""Replay a frozen network's forward from CUDA graphs.

A guidance step runs the denoiser once, without gradient, on inputs of the same shapes every
time. Launched op by op, a U-Net of a few hundred layers spends most of its time on a GPU in the
CPU's kernel launches. Captured once into a CUDA graph, the whole forward is one launch, so the
GPU no longer waits on the CPU (benchmarks/guidance_gpu.py).

`GraphedForward(fn)` wraps a function of tensors that returns a tensor. On CUDA it captures one
graph per input signature (shapes, dtypes, device) and replays it, copying the inputs into the
graph's static buffers and the output out of it. Elsewhere, or when disabled, it calls `fn`.
The function must be pure on the GPU: no host synchronization, no randomness, no dependence on
the inputs' values for control flow (the graph replays the kernels of the capture, whatever the
values). If capture fails, the wrapper warns once and calls `fn` eagerly from then on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

Signature = tuple[tuple[tuple[int, ...], torch.dtype, torch.device], ...]


class _Captured:
    """One CUDA graph with its static input and output tensors."""

    def __init__(self, fn: Callable[..., Tensor], args: tuple[Tensor, ...], warmup: int) -> None:
        self.inputs = tuple(a.detach().clone() for a in args)
        # Warm up on a side stream (cuDNN and cuBLAS pick their algorithms, allocator pools
        # settle), as torch.cuda.graphs asks, then capture.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(warmup):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.output = fn(*self.inputs)
        if not isinstance(self.output, Tensor):
            raise TypeError(f"a graphed function must return one tensor, got {type(self.output).__name__}")

    def __call__(self, args: tuple[Tensor, ...]) -> Tensor:
        for static, arg in zip(self.inputs, args, strict=True):
            static.copy_(arg)
        self.graph.replay()
        return self.output.clone()  # the next replay overwrites the static output


class GraphedForward:
    """`fn(*tensors) -> tensor`, replayed from a CUDA graph per input signature on CUDA."""

    def __init__(self, fn: Callable[..., Tensor], enabled: bool = True, warmup: int = 3) -> None:
        self.fn = fn
        self.enabled = enabled
        self.warmup = warmup
        self.graphs: dict[Signature, _Captured] = {}

    def __call__(self, *args: Tensor) -> Tensor:
        if not (self.enabled and args and all(a.is_cuda for a in args)) or torch.is_grad_enabled():
            # Graphs replay no autograd graph: a call that wants gradients runs eagerly.
            return self.fn(*args)
        key = tuple((tuple(a.shape), a.dtype, a.device) for a in args)
        captured = self.graphs.get(key)
        if captured is None:
            try:
                captured = self.graphs[key] = _Captured(self.fn, args, self.warmup)
            except Exception as error:  # noqa: BLE001 - any capture failure falls back to eager
                self.enabled = False
                warnings.warn(
                    f"CUDA graph capture failed ({type(error).__name__}: {error}); "
                    "running the denoiser eagerly",
                    stacklevel=2,
                )
                torch.cuda.synchronize()
                return self.fn(*args)
        return captured(args)


def compile_by_default(setting: bool | None, device: torch.device) -> bool:
    """`guidance.compile` resolved: None means on CUDA only (where it pays; on a CPU the minutes of
    compiling never come back in a run)."""
    return device.type == "cuda" if setting is None else setting


class CompiledOrEager(nn.Module):
    """`torch.compile(module)`, which falls back to `module` itself, with one warning, if compiling
    fails on the first call (no compiler toolchain, an unsupported GPU). Once a compiled call has
    succeeded, errors are the caller's and propagate."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.compiled = torch.compile(module)  # shares the module's parameters
        self.state = "untried"  # then "compiled" or "eager"

    def forward(self, *args, **kwargs):
        if self.state == "compiled":
            return self.compiled(*args, **kwargs)
        if self.state == "untried":
            try:
                out = self.compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any compile failure falls back to eager
                self.state = "eager"
                warnings.warn(
                    f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); running "
                    f"{type(self.module).__name__} eagerly (--guidance.compile False skips compiling)",
                    stacklevel=2,
                )
            else:
                self.state = "compiled"
                return out
        return self.module(*args, **kwargs)
