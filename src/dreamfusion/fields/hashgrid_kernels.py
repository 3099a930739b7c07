"""The Triton kernels of `dreamfusion.fields.hashgrid_triton` (imported only where Triton is).

Helper functions called from a kernel must be module globals for Triton to find them.
"""

import triton
import triton.language as tl


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
    dense = ix + iy * side + iz * side * side
    hashed_row = ((ix * 1) ^ (iy * 2654435761) ^ (iz * 805459861)) & mask
    return tl.where(hashed != 0, hashed_row, dense)


@triton.jit
def forward(
    u_ptr, table_ptr, res_ptr, offset_ptr, hashed_ptr, feat_ptr, jac_ptr,
    n, levels, mask,
    F: tl.constexpr, FP: tl.constexpr, BLOCK: tl.constexpr, JAC: tl.constexpr,
):  # fmt: skip
    points = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = points < n
    f = tl.arange(0, FP)
    fvalid = f < F
    both = valid[:, None] & fvalid[None, :]
    ux = tl.load(u_ptr + points * 3 + 0, mask=valid, other=0.0)
    uy = tl.load(u_ptr + points * 3 + 1, mask=valid, other=0.0)
    uz = tl.load(u_ptr + points * 3 + 2, mask=valid, other=0.0)
    width = levels * F
    for level in range(levels):
        r = tl.load(res_ptr + level)
        offset = tl.load(offset_ptr + level)
        hashed = tl.load(hashed_ptr + level)
        side = r.to(tl.int64) + 1
        acc = tl.zeros((BLOCK, FP), dtype=tl.float32)
        jx = tl.zeros((BLOCK, FP), dtype=tl.float32)
        jy = tl.zeros((BLOCK, FP), dtype=tl.float32)
        jz = tl.zeros((BLOCK, FP), dtype=tl.float32)
        for k in tl.static_range(8):
            ix, wx, dx = corner(ux, r, (k >> 2) & 1)
            iy, wy, dy = corner(uy, r, (k >> 1) & 1)
            iz, wz, dz = corner(uz, r, k & 1)
            index = offset + row(ix, iy, iz, side, hashed, mask)
            values = tl.load(table_ptr + index[:, None] * F + f[None, :], mask=both, other=0.0)
            acc += ((wx * wy) * wz)[:, None] * values
            if JAC:
                jx += (dx * wy * wz)[:, None] * values
                jy += (wx * dy * wz)[:, None] * values
                jz += (wx * wy * dz)[:, None] * values
        column = level * F + f[None, :]
        tl.store(feat_ptr + points[:, None] * width + column, acc, mask=both)
        if JAC:
            at = jac_ptr + (points[:, None] * width + column) * 3
            tl.store(at + 0, jx, mask=both)
            tl.store(at + 1, jy, mask=both)
            tl.store(at + 2, jz, mask=both)


@triton.jit
def backward(
    u_ptr, res_ptr, offset_ptr, hashed_ptr, gfeat_ptr, gjac_ptr, gtable_ptr,
    n, levels, mask,
    F: tl.constexpr, FP: tl.constexpr, BLOCK: tl.constexpr, JAC: tl.constexpr,
):  # fmt: skip
    points = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = points < n
    f = tl.arange(0, FP)
    fvalid = f < F
    both = valid[:, None] & fvalid[None, :]
    ux = tl.load(u_ptr + points * 3 + 0, mask=valid, other=0.0)
    uy = tl.load(u_ptr + points * 3 + 1, mask=valid, other=0.0)
    uz = tl.load(u_ptr + points * 3 + 2, mask=valid, other=0.0)
    width = levels * F
    for level in range(levels):
        r = tl.load(res_ptr + level)
        offset = tl.load(offset_ptr + level)
        hashed = tl.load(hashed_ptr + level)
        side = r.to(tl.int64) + 1
        column = level * F + f[None, :]
        gf = tl.load(gfeat_ptr + points[:, None] * width + column, mask=both, other=0.0)
        if JAC:
            at = gjac_ptr + (points[:, None] * width + column) * 3
            gx = tl.load(at + 0, mask=both, other=0.0)
            gy = tl.load(at + 1, mask=both, other=0.0)
            gz = tl.load(at + 2, mask=both, other=0.0)
        for k in tl.static_range(8):
            ix, wx, dx = corner(ux, r, (k >> 2) & 1)
            iy, wy, dy = corner(uy, r, (k >> 1) & 1)
            iz, wz, dz = corner(uz, r, k & 1)
            index = offset + row(ix, iy, iz, side, hashed, mask)
            grad = ((wx * wy) * wz)[:, None] * gf
            if JAC:
                grad += (dx * wy * wz)[:, None] * gx + (wx * dy * wz)[:, None] * gy
                grad += (wx * wy * dz)[:, None] * gz
            tl.atomic_add(gtable_ptr + index[:, None] * F + f[None, :], grad, mask=both)
