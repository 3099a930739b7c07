"""The hash encoding as two fused Triton kernels, with its spatial Jacobian in closed form.

`HashEncoding` in plain PyTorch builds (points x levels x 8 corners) intermediates, and normals (a
gradient of the density) need a double backward through all of them. Here one kernel reads each
point's 8 corners per level and writes the features and their derivative with respect to the
point (the trilinear weights' derivatives are products of two 1-D weights); a second scatters the
gradients of both into the tables. Normals then need a double backward through the small MLP
only (`HashGridField` with `hash_kernel="triton"`).

Triton ships with PyTorch's CUDA wheels; nothing is compiled at install time. On a CPU the
PyTorch path runs, except where `INTERPRET_ON_CPU` is set with `TRITON_INTERPRET=1` (read when
Triton is imported): then the kernels run on CPU tensors in Triton's interpreter, which is how the
tests check them on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import Tensor

from dreamfusion.fields.hashgrid import HashEncoding, is_hashed

log = logging.getLogger(__name__)

BLOCK = 128
INTERPRET_ON_CPU = False
_RUNS_ON: dict[str, bool] = {}  # device -> whether the kernels built and ran there


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def runs_on(device: torch.device) -> bool:
    """Whether the kernels build and run on `device`, found once per device: Triton is installed,
    and a tiny encoding runs (forward with the Jacobian, backward through both). Triton builds its
    launchers with the machine's C compiler on first use, and not every GPU is one it supports:
    where it cannot, the hash grid keeps its PyTorch path with one warning instead of failing in
    the middle of a step."""
    key = str(device)
    if key not in _RUNS_ON and not triton_available():
        log.warning("Triton not found: the hash grid runs its PyTorch path (pip install triton)")
        _RUNS_ON[key] = False
    if key not in _RUNS_ON:
        try:
            _probe(device)
            _RUNS_ON[key] = True
        except Exception as error:  # noqa: BLE001 - whatever stops the kernels, the PyTorch path runs
            log.warning(
                "Triton cannot run the fused hash grid here (%s: %s): the hash grid runs its PyTorch "
                "path (--field.hash-kernel torch skips trying)",
                type(error).__name__,
                " ".join(str(error).split())[:200],
            )
            _RUNS_ON[key] = False
    return _RUNS_ON[key]


def _probe(device: torch.device) -> None:
    # Its own random numbers, so that trying leaves the caller's generators as they were; and
    # gradients, whatever mode the first caller is in.
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode(False), torch.enable_grad():
        encoding = HashEncoding(levels=2, features=2, log2_size=4, base=2, finest=8).to(device)
        feat, jac = encoding.fused(torch.rand(4, 3, device=device), jacobian=True)
        (feat.sum() + jac.sum()).backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # a launch that failed on the GPU says so here


def _kernels():
    """Imported on first use, so that importing this module needs no Triton."""
    from dreamfusion.fields import hashgrid_kernels

    return hashgrid_kernels.forward, hashgrid_kernels.backward


def _on_device_of(tensor: Tensor):
    """Triton launches on the current CUDA device and its stream: make that the tensor's, so a field
    on another GPU than the current one (`--device cuda:1`) runs where its tables are."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def level_constants(encoding: HashEncoding) -> tuple[Tensor, Tensor, Tensor]:
    """Per level of `encoding`, on its device: the resolution (float32), the first row of its table
    in the tables end to end (int64, from `level_offsets`) and whether it hashes (int32)."""
    offsets = encoding.level_offsets.long()
    resolutions, size = encoding.resolutions, encoding.table_size
    return (
        torch.tensor(resolutions, dtype=torch.float32, device=offsets.device),
        offsets,
        torch.tensor(
            [int(is_hashed(r, size)) for r in resolutions], dtype=torch.int32, device=offsets.device
        ),
    )


def _launch(n: int, features: int) -> tuple[int, tuple[int]]:
    """Features padded to a power of two (a block's width), and the grid: one program per BLOCK points."""
    return 1 << max(features - 1, 0).bit_length(), ((n + BLOCK - 1) // BLOCK,)


class FusedHashEncode(torch.autograd.Function):
    """(N, 3) unit points and the (R, F) tables end to end -> features (N, L F), level-major as
    `HashEncoding`'s, and with `jacobian` their derivative w.r.t. the unit point (N, L F, 3).

    Differentiable w.r.t. the tables, through both outputs. Not w.r.t. the points: their
    derivative is the Jacobian output itself.
    """

    @staticmethod
    def forward(ctx, unit: Tensor, table: Tensor, constants: tuple, table_size: int, jacobian: bool):
        if unit.requires_grad:
            raise ValueError("FusedHashEncode has no gradient w.r.t. the points: use its Jacobian output")
        forward_kernel, _ = _kernels()
        res, offsets, hashed = constants
        n, levels, features = len(unit), len(res), table.shape[1]
        unit, table = unit.float().contiguous(), table.float().contiguous()
        feat = unit.new_empty(n, levels * features)
        jac = unit.new_empty(n, levels * features, 3) if jacobian else feat
        fp, grid = _launch(n, features)
        with _on_device_of(unit):
            forward_kernel[grid](
                unit, table, res, offsets, hashed, feat, jac, n, levels, table_size - 1,
                F=features, FP=fp, BLOCK=BLOCK, JAC=jacobian,
            )  # fmt: skip
        ctx.save_for_backward(unit)
        ctx.constants, ctx.table_size, ctx.shape = constants, table_size, table.shape
        return (feat, jac) if jacobian else feat

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_feat: Tensor, grad_jac: Tensor | None = None):
        _, backward_kernel = _kernels()
        (unit,) = ctx.saved_tensors
        res, offsets, hashed = ctx.constants
        n, levels, features = len(unit), len(res), ctx.shape[1]
        with_jac = grad_jac is not None
        grad_table = torch.zeros(ctx.shape, dtype=torch.float32, device=unit.device)
        grad_feat = grad_feat.float().contiguous()
        grad_jac = grad_jac.float().contiguous() if with_jac else grad_feat
        fp, grid = _launch(n, features)
        with _on_device_of(unit):
            backward_kernel[grid](
                unit, res, offsets, hashed, grad_feat, grad_jac, grad_table, n, levels, ctx.table_size - 1,
                F=features, FP=fp, BLOCK=BLOCK, JAC=with_jac,
            )  # fmt: skip
        return None, grad_table, None, None, None
