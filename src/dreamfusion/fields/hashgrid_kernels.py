"""The Triton kernels of `dreamfusion.fields.hashgrid_triton` (imported only where Triton is).

Helper functions called from a kernel must be module globals for Triton to find them.
"""

import triton
import triton.language as tl

from dreamfusion.fields.hashgrid import HASH_PRIMES

# The hash's primes as compile-time constants (a kernel reads globals only as constexpr).
PRIME_X, PRIME_Y, PRIME_Z = (tl.constexpr(p) for p in HASH_PRIMES)


@triton.jit
def corner(u, r, c: tl.constexpr):
    """One axis of a corner: its integer coordinate, 1-D weight and that weight's derivative."""
    pos = u * r
    lower = tl.minimum(tl.maximum(tl.floor(pos), 0.0), r - 1.0)
    frac = pos - lower
    if c == 1:
        return lower.to(tl.int64) + 1, frac, r
    return lower.to(tl.int64), 1.0 - frac, -r


@triton.jit
def row(ix, iy, iz, side, hashed, mask):
    """A vertex's row in its level's table: strided in a dense level, Instant-NGP's hash in a hashed one."""
    dense = ix + iy * side + iz * side * side
    hashed_row = ((ix * PRIME_X) ^ (iy * PRIME_Y) ^ (iz * PRIME_Z)) & mask
    return tl.where(hashed != 0, hashed_row, dense)


@triton.jit
def corner_of(ux, uy, uz, r, side, offset, hashed, mask, k: tl.constexpr):
    """Corner k = 4 dx + 2 dy + dz of each point's cell: its row in the tables end to end, its
    trilinear weight, and that weight's derivative along x, y and z."""
    ix, wx, dx = corner(ux, r, (k >> 2) & 1)
    iy, wy, dy = corner(uy, r, (k >> 1) & 1)
    iz, wz, dz = corner(uz, r, k & 1)
    index = offset + row(ix, iy, iz, side, hashed, mask)
    return index, (wx * wy) * wz, dx * wy * wz, wx * dy * wz, wx * wy * dz


@triton.jit
def block_of(u_ptr, n, F: tl.constexpr, FP: tl.constexpr, BLOCK: tl.constexpr):
    """This program's points, their unit coordinates, the feature lanes and the (point, lane) mask."""
    points = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = points < n
    f = tl.arange(0, FP)
    ux = tl.load(u_ptr + points * 3 + 0, mask=valid, other=0.0)
    uy = tl.load(u_ptr + points * 3 + 1, mask=valid, other=0.0)
    uz = tl.load(u_ptr + points * 3 + 2, mask=valid, other=0.0)
    return points, f, valid[:, None] & (f < F)[None, :], ux, uy, uz


@triton.jit
def level_of(res_ptr, offset_ptr, hashed_ptr, level):
    """A level's resolution, first row, whether it hashes, and its vertices per side."""
    r = tl.load(res_ptr + level)
    return r, tl.load(offset_ptr + level), tl.load(hashed_ptr + level), r.to(tl.int64) + 1


@triton.jit
def forward(
    u_ptr, table_ptr, res_ptr, offset_ptr, hashed_ptr, feat_ptr, jac_ptr,
    n, levels, mask,
    F: tl.constexpr, FP: tl.constexpr, BLOCK: tl.constexpr, JAC: tl.constexpr,
):  # fmt: skip
    points, f, both, ux, uy, uz = block_of(u_ptr, n, F, FP, BLOCK)
    for level in range(levels):
        r, offset, hashed, side = level_of(res_ptr, offset_ptr, hashed_ptr, level)
        acc = tl.zeros((BLOCK, FP), dtype=tl.float32)
        jx = tl.zeros((BLOCK, FP), dtype=tl.float32)
        jy = tl.zeros((BLOCK, FP), dtype=tl.float32)
        jz = tl.zeros((BLOCK, FP), dtype=tl.float32)
        for k in tl.static_range(8):
            index, w, wdx, wdy, wdz = corner_of(ux, uy, uz, r, side, offset, hashed, mask, k)
            values = tl.load(table_ptr + index[:, None] * F + f[None, :], mask=both, other=0.0)
            acc += w[:, None] * values
            if JAC:
                jx += wdx[:, None] * values
                jy += wdy[:, None] * values
                jz += wdz[:, None] * values
        at = points[:, None] * (levels * F) + level * F + f[None, :]
        tl.store(feat_ptr + at, acc, mask=both)
        if JAC:
            tl.store(jac_ptr + at * 3 + 0, jx, mask=both)
            tl.store(jac_ptr + at * 3 + 1, jy, mask=both)
            tl.store(jac_ptr + at * 3 + 2, jz, mask=both)


@triton.jit
def backward(
    u_ptr, res_ptr, offset_ptr, hashed_ptr, gfeat_ptr, gjac_ptr, gtable_ptr,
    n, levels, mask,
    F: tl.constexpr, FP: tl.constexpr, BLOCK: tl.constexpr, JAC: tl.constexpr,
):  # fmt: skip
    points, f, both, ux, uy, uz = block_of(u_ptr, n, F, FP, BLOCK)
    for level in range(levels):
        r, offset, hashed, side = level_of(res_ptr, offset_ptr, hashed_ptr, level)
        at = points[:, None] * (levels * F) + level * F + f[None, :]
        gf = tl.load(gfeat_ptr + at, mask=both, other=0.0)
        if JAC:
            gx = tl.load(gjac_ptr + at * 3 + 0, mask=both, other=0.0)
            gy = tl.load(gjac_ptr + at * 3 + 1, mask=both, other=0.0)
            gz = tl.load(gjac_ptr + at * 3 + 2, mask=both, other=0.0)
        for k in tl.static_range(8):
            index, w, wdx, wdy, wdz = corner_of(ux, uy, uz, r, side, offset, hashed, mask, k)
            grad = w[:, None] * gf
            if JAC:
                grad += wdx[:, None] * gx + wdy[:, None] * gy + wdz[:, None] * gz
            tl.atomic_add(gtable_ptr + index[:, None] * F + f[None, :], grad, mask=both)
