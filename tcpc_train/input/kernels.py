"""Numba kernels of :mod:`tcpc_train.input.intensity` (imported on first use, so that importing the
training loops loads no Numba; its cache keeps the compiled code across runs).

float16 values are converted by :mod:`tcpc_data.float16` (NumPy's casts, bit for bit, inside
compiled loops).
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from tcpc_data.float16 import float_to_half as _float_to_half
from tcpc_data.float16 import half_to_float as _half_to_float
from tcpc_train.input.intensity import BYTE_SUM_SD as _BYTE_SUM_SD
from tcpc_train.input.intensity import GOLDEN, GOLDEN32
from tcpc_train.input.intensity import HASH1 as _HASH1
from tcpc_train.input.intensity import HASH2 as _HASH2
from tcpc_train.input.intensity import MIX1 as _MIX1
from tcpc_train.input.intensity import MIX2 as _MIX2


@numba.njit(cache=True, inline="always")
def _cube_seed(key, cube):
    """The 32-bit noise seed of cube ``cube`` of the sample with 64-bit key ``key``: the high half of
    SplitMix64's output for counter ``key + (cube + 1)·γ``."""
    z = key + np.uint64(cube + 1) * GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return np.uint32((z ^ (z >> np.uint64(31))) >> np.uint64(32))


@intrinsic
def _byte_sum_of_hash(typingctx, seed, j):
    """The sum of the four bytes of lowbias32(seed + (j + 1)·γ₃₂), as 32-bit LLVM IR: Numba would
    widen uint32 arithmetic to 64 bits, halving the vector lanes of the noise loop."""
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)

        def const(v):
            return ir.Constant(i32, int(v))
        x = builder.add(args[0], builder.mul(builder.add(builder.trunc(args[1], i32), const(1)), const(GOLDEN32)))
        for shift, factor in ((16, _HASH1), (15, _HASH2)):
            x = builder.mul(builder.xor(x, builder.lshr(x, const(shift))), const(factor))
        x = builder.xor(x, builder.lshr(x, const(16)))
        total = builder.and_(x, const(0xFF))
        for shift in (8, 16):
            total = builder.add(total, builder.and_(builder.lshr(x, const(shift)), const(0xFF)))
        return builder.add(total, builder.lshr(x, const(24)))
    return types.uint32(types.uint32, types.int64), codegen


@numba.njit(cache=True, inline="always")
def _noise(seed, j):
    """An approximately standard normal float32 value for voxel ``j`` of the cube with 32-bit ``seed``:
    the sum of the four bytes of lowbias32(seed + (j + 1)·γ₃₂) (Irwin–Hall of order 4), standardised."""
    return (np.float32(np.int32(_byte_sum_of_hash(seed, j))) - np.float32(2 * 255.0)) / _BYTE_SUM_SD


@numba.njit(cache=True, nogil=True)
def intensity_half(flat, scale, shift, sd, keys):
    """In place on float16 bits ``flat`` (B, N, voxels) uint16: v·scale + shift + sd·noise per cube,
    the noise of voxel j of cube (b, i) ``_noise(_cube_seed(keys[b], i), j)``."""
    m = flat.shape[2]
    for b in range(flat.shape[0]):
        for i in range(flat.shape[1]):
            row = flat[b, i]
            s, t, d = np.float32(scale[b, i]), np.float32(shift[b, i]), np.float32(sd[b, i])
            seed = _cube_seed(keys[b], i)
            for j in range(m):
                row[j] = _float_to_half(_half_to_float(row[j]) * s + t + d * _noise(seed, j))


@numba.njit(cache=True, nogil=True)
def intensity_single(flat, scale, shift, sd, keys):
    """As :func:`intensity_half` for float32 values."""
    m = flat.shape[2]
    for b in range(flat.shape[0]):
        for i in range(flat.shape[1]):
            row = flat[b, i]
            s, t, d = np.float32(scale[b, i]), np.float32(shift[b, i]), np.float32(sd[b, i])
            seed = _cube_seed(keys[b], i)
            for j in range(m):
                row[j] = row[j] * s + t + d * _noise(seed, j)


@intrinsic
def _half_bits_at(typingctx, address):
    """The uint16 pointer at an integer address (of a float16 array the caller keeps alive)."""
    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], ir.PointerType(ir.IntType(16)))
    return types.CPointer(types.uint16)(types.int64), codegen


@intrinsic
def _prefetch(typingctx, address):
    """Ask for the cache line at an integer address (a hint: never faults)."""
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        ptr = ir.PointerType(ir.IntType(8))
        fn = builder.module.declare_intrinsic("llvm.prefetch", [ptr],
                                              ir.FunctionType(ir.VoidType(), [ptr, i32, i32, i32]))
        read, keep, data = (ir.Constant(i32, v) for v in (0, 3, 1))  # a read, kept in every level, data
        builder.call(fn, [builder.inttoptr(args[0], ptr), read, keep, data])
        return context.get_dummy_value()
    return types.none(types.int64), codegen


@numba.njit(cache=True, inline="always")
def _mix64(z):
    """SplitMix64's output function (wrapping uint64 arithmetic), as :func:`tcpc_train.input.intensity.splitmix64`."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, inline="always")
def _uniform(key, j):
    """Draw ``j`` in [0, 1) of the sample with 64-bit ``key``, as :func:`tcpc_train.input.augment.uniforms`."""
    return np.float64(_mix64(key + np.uint64(j + 1) * GOLDEN) >> np.uint64(11)) * 2.0**-53


@numba.njit(cache=True, nogil=True)
def augment_half(addresses, c, paths, keys, geometric, strength, out, moved):
    """The batch augmentation of :func:`tcpc_train.input.augment.augment_path_batch` for float16 cubes, draws included.

    Sample s's source (``n`` C-contiguous cubes of c³ float16 at ``addresses[s]``) is
    flipped/rotated into ``out[s]`` (n, c³) as uint16 bits and, when ``strength`` > 0, changed by
    v·scale + shift + sd·noise per cube (the noise counters of :func:`intensity_half`); its
    positions ``paths[s]`` (n, 3) go to ``moved[s]`` moved alike. Every choice is drawn from
    ``keys[s]`` as the NumPy path draws it, so the two agree bit for bit. Rows whose source is
    contiguous or reversed get their own loops, which vectorise; the other rows are strided gathers.
    """
    n = paths.shape[1]
    m = c * c * c
    # The next sample's source is fetched into the cache while this one is worked on, spread over
    # its slices: rotated cubes are read in an order the hardware prefetchers do not follow, and a
    # source read cold (it waited in the shuffle buffer) cost as much again as one in the cache.
    lines = (2 * n * m + 63) // 64
    if len(addresses):  # the first sample's: requests in flight together beat strided misses one by one
        for line in range(lines):
            _prefetch(addresses[0] + line * 64)
    flipped = np.empty(3, np.bool_)
    lo, ext, q = np.empty(3, np.int64), np.empty(3, np.int64), np.empty(3, np.int64)
    unit, perm = np.empty(3, np.int64), np.empty(3, np.int64)
    unit[0], unit[1], unit[2] = c * c, c, 1  # source strides of a cube's axes, in voxels
    for s in range(len(addresses)):
        key = keys[s]
        for d in range(3):
            flipped[d] = geometric and _uniform(key, d) < 0.5
        plane = np.int64(_uniform(key, 3) * 3)
        turns = np.int64(_uniform(key, 4) * 4) if geometric else 0
        a, b = (0, 1) if plane == 0 else ((0, 2) if plane == 1 else (1, 2))
        # Positions: mirrored within the path's bounding box, then turned in plane (a, b) as
        # np.rot90 turns (q_a, q_b) -> (ext_b - q_b, q_a) per quarter.
        for d in range(3):
            lo[d] = paths[s, 0, d]
            ext[d] = paths[s, 0, d]
            for i in range(1, n):
                lo[d] = min(lo[d], paths[s, i, d])
                ext[d] = max(ext[d], paths[s, i, d])
            ext[d] -= lo[d]
        for i in range(n):
            for d in range(3):
                q[d] = paths[s, i, d] - lo[d]
                if flipped[d]:
                    q[d] = ext[d] - q[d]
            qa, qb, ea, eb = q[a], q[b], ext[a], ext[b]
            if turns == 1:
                qa, qb = eb - qb, qa
            elif turns == 2:
                qa, qb = ea - qa, eb - qb
            elif turns == 3:
                qa, qb = qb, ea - qa
            q[a], q[b] = qa, qb
            for d in range(3):
                moved[s, i, d] = q[d] + lo[d]
        # The cubes' index map: np.rot90 in plane (a, b) is, for one quarter turn, a flip of b then a
        # swap of a and b; for two, flips of both; for three, a flip of a then the swap (flips compose
        # by parity). Voxel (z, y, x) of a cube then reads base + z·sz + y·sy + x·sx of its source.
        if turns == 1 or turns == 2:
            flipped[b] = not flipped[b]
        if turns == 2 or turns == 3:
            flipped[a] = not flipped[a]
        perm[0], perm[1], perm[2] = 0, 1, 2
        if turns == 1 or turns == 3:
            perm[a], perm[b] = b, a
        base = 0
        for d in range(3):
            if flipped[d]:
                base += (c - 1) * unit[d]
        sz = -unit[perm[0]] if flipped[perm[0]] else unit[perm[0]]
        sy = -unit[perm[1]] if flipped[perm[1]] else unit[perm[1]]
        sx = -unit[perm[2]] if flipped[perm[2]] else unit[perm[2]]
        src = numba.carray(_half_bits_at(addresses[s]), (n * m,))
        noise_key = _mix64(key ^ np.uint64(0xA5A5A5A5A5A5A5A5))
        for i in range(n):
            row = out[s, i]
            for z in range(c):
                if s + 1 < len(addresses):  # this slice's share of the next sample's cache lines
                    k = i * c + z
                    for line in range(k * lines // (n * c), (k + 1) * lines // (n * c)):
                        _prefetch(addresses[s + 1] + line * 64)
                for y in range(c):
                    start = np.uint64(i * m + base + z * sz + y * sy)
                    o = (z * c + y) * c
                    if sx == 1:
                        for x in range(c):
                            row[o + x] = src[start + np.uint64(x)]
                    elif sx == -1:
                        for x in range(c):
                            row[o + x] = src[start - np.uint64(x)]
                    else:
                        for x in range(c):
                            row[o + x] = src[np.uint64(np.int64(start) + x * sx)]
            if strength != 0:  # the cube is in L1 now: one long vectorised loop over it
                sc = np.float32(1 - strength + 2 * strength * _uniform(key, 5 + i))
                sh = np.float32(strength * (2 * _uniform(key, 5 + n + i) - 1))
                d = np.float32(strength / 5 * _uniform(key, 5 + 2 * n + i))
                seed = _cube_seed(noise_key, i)
                for j in range(m):
                    row[j] = _float_to_half(_half_to_float(row[j]) * sc + sh + d * _noise(seed, j))
