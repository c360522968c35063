"""The per-cube intensity augmentation as one compiled loop: affine change and noise, float16 in and out.

:func:`tcpc_train.loader.augment_intensity` runs here for float16 and float32
cubes. NumPy spent about 0.6 ms per U-path sample (8 cubes of 16³) on it: a
float16 -> float32 cast without hardware conversion, a float32 Gaussian draw
of 7-8 ns per value, and five passes over the data. This kernel reads each
voxel once, through whatever strides the (flipped, rotated) view of the cubes
has (one NumPy copy), and then changes it in place in one vectorised loop.

The noise is approximately Gaussian: the sum of four independent uniform
16-bit integers (Irwin–Hall of order 4), shifted and scaled to mean 0 and variance 1; it is
bounded by ±3.46 standard deviations and has a kurtosis of 2.7 (3 for a
Gaussian). The integers come from SplitMix64 over a Weyl sequence started at a
64-bit key per sample: a counter-based generator, so every voxel's value is a
pure function of (key, voxel index), and samples with different keys draw
from non-overlapping parts of the sequence except with probability ~2^-48.

Numba has no float16 type on the CPU: float16 values are converted by LLVM's
``fpext``/``fptrunc`` on ``half`` (one F16C instruction per vector), or, on a
CPU without hardware conversion, by integer arithmetic; both match NumPy's
conversions bit for bit (round to nearest even, subnormals, infinities, NaN).
"""
from __future__ import annotations

import platform

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's Weyl increment γ
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_FIELD_SUM_SD = np.float32(np.sqrt(4 * (65536**2 - 1) / 12))  # sd of the sum of four uniform 16-bit fields


@intrinsic
def _f32_of_bits(typingctx, bits):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@intrinsic
def _bits_of_f32(typingctx, value):
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@intrinsic
def _hw_half_to_float(typingctx, bits):
    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def _hw_float_to_half(typingctx, value):
    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


@numba.njit(cache=True, inline="always")
def _sw_half_to_float(h):
    """IEEE binary16 bits -> float32, exact: the magnitude bits shifted into place and rescaled by
    2^112 (which also normalises subnormals); infinities and NaNs get the all-ones exponent."""
    h = np.uint32(h)
    magnitude = h & np.uint32(0x7FFF)
    bits = _bits_of_f32(_f32_of_bits(magnitude << np.uint32(13)) * np.float32(2.0**112))
    bits = bits | np.uint32(0x7F800000) if magnitude >= np.uint32(0x7C00) else bits
    return _f32_of_bits(bits | ((h & np.uint32(0x8000)) << np.uint32(16)))


@numba.njit(cache=True, inline="always")
def _sw_float_to_half(x):
    """float32 -> IEEE binary16 bits, rounded to nearest even; all three cases are computed and one
    selected, so the loop vectorises."""
    bits = _bits_of_f32(x)
    sign = bits & np.uint32(0x80000000)
    f = bits ^ sign
    # normal results: rebias the exponent and round the dropped 13 mantissa bits to nearest even
    normal = (f + np.uint32(0xC8000FFF) + ((f >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
    # subnormal results: adding 0.5 lets the FPU round the mantissa into place
    subnormal = _bits_of_f32(_f32_of_bits(f) + np.float32(0.5)) - np.uint32(0x3F000000)
    big = np.uint32(0x7E00) if f > np.uint32(0x7F800000) else np.uint32(0x7C00)  # NaN, else infinity
    out = subnormal if f < np.uint32(113 << 23) else normal
    out = big if f >= np.uint32(143 << 23) else out
    return np.uint16(out | (sign >> np.uint32(16)))


def _hardware_half() -> bool:
    """Whether LLVM converts float16 in hardware here (x86 F16C, or AArch64, where it is part of the
    base ISA); elsewhere it would call compiler-rt helpers that Numba's JIT may not link."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    return machine in ("x86_64", "amd64") and "+f16c" in llvm.get_host_cpu_features().flatten()


# One vector instruction per 8-16 values where the CPU has it; the bit arithmetic otherwise.
_half_to_float, _float_to_half = ((_hw_half_to_float, _hw_float_to_half) if _hardware_half()
                                  else (_sw_half_to_float, _sw_float_to_half))


@numba.njit(cache=True, inline="always")
def _noise(counter):
    """An approximately standard normal float32 value from one SplitMix64 output: the sum of its
    four 16-bit fields (Irwin–Hall of order 4), standardised."""
    z = counter
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    m = np.uint64(0xFFFF)
    total = (z & m) + ((z >> np.uint64(16)) & m) + ((z >> np.uint64(32)) & m) + (z >> np.uint64(48))
    return (np.float32(np.int64(total)) - np.float32(2 * 65535.0)) / _FIELD_SUM_SD


@numba.njit(cache=True, nogil=True)
def _intensity_half(flat, scale, shift, sd, keys):
    """In place on float16 bits ``flat`` (B, N, voxels) uint16: v·scale + shift + sd·noise per cube,
    the noise of cube (b, i) from counters ``keys[b] + (i·voxels + j + 1)·γ``."""
    m = flat.shape[2]
    for b in range(flat.shape[0]):
        for i in range(flat.shape[1]):
            row = flat[b, i]
            s, t, d = np.float32(scale[b, i]), np.float32(shift[b, i]), np.float32(sd[b, i])
            base = keys[b] + np.uint64(i) * np.uint64(m) * GOLDEN
            for j in range(m):
                g = _noise(base + np.uint64(j + 1) * GOLDEN)
                row[j] = _float_to_half(_half_to_float(row[j]) * s + t + d * g)


@numba.njit(cache=True, nogil=True)
def _intensity_single(flat, scale, shift, sd, keys):
    """As :func:`_intensity_half` for float32 values."""
    m = flat.shape[2]
    for b in range(flat.shape[0]):
        for i in range(flat.shape[1]):
            row = flat[b, i]
            s, t, d = np.float32(scale[b, i]), np.float32(shift[b, i]), np.float32(sd[b, i])
            base = keys[b] + np.uint64(i) * np.uint64(m) * GOLDEN
            for j in range(m):
                row[j] = row[j] * s + t + d * _noise(base + np.uint64(j + 1) * GOLDEN)


@intrinsic
def _half_bits_at(typingctx, address):
    """The uint16 pointer at an integer address (of a float16 array the caller keeps alive)."""
    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], ir.PointerType(ir.IntType(16)))
    return types.CPointer(types.uint16)(types.int64), codegen


@numba.njit(cache=True, nogil=True)
def _gather_half(addresses, n, c, sstrides, sbase, out, scale, shift, sd, keys, noisy):
    """Batch of float16 sources at ``addresses`` (each C-contiguous (n, c, c, c)) -> ``out`` (B, n, c³):
    voxel (z, y, x) of cube i of sample s reads source voxel ``i·c³ + sbase + z·sz + y·sy + x·sx``,
    then changed by v·scale + shift + sd·noise when ``noisy``, with the noise counters of
    :func:`_intensity_half`. Rows whose source is contiguous or reversed get their own loops,
    which vectorise; the other rows are strided gathers."""
    m = c * c * c
    for s in range(len(addresses)):
        src = numba.carray(_half_bits_at(addresses[s]), (n * m,))
        sz, sy, sx = sstrides[s, 0], sstrides[s, 1], sstrides[s, 2]
        for i in range(n):
            row = out[s, i]
            for z in range(c):
                for y in range(c):
                    start = np.uint64(i * m + sbase[s] + z * sz + y * sy)
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
            if noisy:  # the cube is in L1 now: one long vectorised loop over it
                sc, sh, d = np.float32(scale[s, i]), np.float32(shift[s, i]), np.float32(sd[s, i])
                base = keys[s] + np.uint64(i) * np.uint64(m) * GOLDEN
                for j in range(m):
                    g = _noise(base + np.uint64(j + 1) * GOLDEN)
                    row[j] = _float_to_half(_half_to_float(row[j]) * sc + sh + d * g)


def gather_affine_noise(sources: list[np.ndarray], out: np.ndarray, sstrides: np.ndarray, sbase: np.ndarray,
                        scale: np.ndarray | None, shift: np.ndarray | None, sd: np.ndarray | None,
                        keys: np.ndarray) -> None:
    """Gather float16 ``sources`` into ``out`` through per-sample index maps, optionally changing intensities.

    The result equals copying each source's transformed view into ``out`` and then
    :func:`affine_noise_inplace`, in one pass over the batch.

    Parameters
    ----------
    sources : B C-contiguous float16 arrays (N, c, c, c); they must stay alive during the call
    out : (B, N, c, c, c) C-contiguous float16 array, written in full
    sstrides, sbase : (B, 3) and (B,) int
        Voxel (z, y, x) of a cube of ``out`` reads flat index ``sbase + z·sz + y·sy + x·sx`` of the
        same cube of its source; each map must be a bijection of the cube's voxels.
    scale, shift, sd : (B, N) arrays, or None for a plain gather
    keys : (B,) uint64
        Noise key per sample (:func:`affine_noise_inplace`).
    """
    b, n = out.shape[:2]
    c = out.shape[2]
    if (out.dtype != np.float16 or not out.flags.c_contiguous or out.shape[2:] != (c, c, c) or len(sources) != b
            or any(x.dtype != np.float16 or x.shape != out.shape[1:] or not x.flags.c_contiguous for x in sources)):
        raise ValueError("gather_affine_noise needs C-contiguous float16 sources of out's (N, c, c, c) sample shape")
    addresses = np.array([x.ctypes.data for x in sources], np.int64)
    noisy = scale is not None
    params = [np.ascontiguousarray(p if noisy else np.zeros((b, n)), np.float32) for p in (scale, shift, sd)]
    _gather_half(addresses, n, c, np.ascontiguousarray(sstrides, np.int64), np.ascontiguousarray(sbase, np.int64),
                 out.reshape(b, n, -1).view(np.uint16), *params, np.ascontiguousarray(keys, np.uint64), noisy)


def splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 values (wrapping arithmetic), elementwise."""
    z = np.asarray(z, np.uint64)
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def affine_noise_inplace(flat: np.ndarray, scale: np.ndarray, shift: np.ndarray, sd: np.ndarray,
                         keys: np.ndarray) -> None:
    """``flat[b, i] = flat[b, i] * scale[b, i] + shift[b, i] + sd[b, i] * noise``, computed in float32.

    Parameters
    ----------
    flat : (B, N, voxels) C-contiguous float16 or float32 array, changed in place
    scale, shift, sd : (B, N) arrays
        Per-cube contrast factor, offset and noise standard deviation.
    keys : (B,) uint64
        Noise key per sample: equal keys give equal noise, different keys independent noise.
    """
    if flat.dtype not in (np.float16, np.float32) or flat.ndim != 3 or not flat.flags.c_contiguous:
        raise TypeError(f"expected a C-contiguous (B, N, voxels) float16 or float32 array, got "
                        f"{flat.dtype} {flat.shape}")
    params = [np.ascontiguousarray(np.broadcast_to(p, flat.shape[:2]), np.float32) for p in (scale, shift, sd)]
    keys = np.ascontiguousarray(keys, np.uint64)
    if flat.dtype == np.float16:
        _intensity_half(flat.view(np.uint16), *params, keys)
    else:
        _intensity_single(flat, *params, keys)


def affine_noise(cubes: np.ndarray, scale: np.ndarray, shift: np.ndarray, sd: np.ndarray, key: int) -> np.ndarray:
    """``cubes[i] * scale[i] + shift[i] + sd[i] * noise`` per cube, computed in float32, into a new array.

    Parameters
    ----------
    cubes : (N, ...) float16 or float32 array, any strides (a flipped or rotated view is read as is)
    scale, shift, sd : (N,) arrays
    key : int in [0, 2^64)
        Noise key (:func:`affine_noise_inplace`).

    Returns
    -------
    A new C-contiguous array of the shape and dtype of ``cubes``.
    """
    out = np.empty(cubes.shape, cubes.dtype)
    np.copyto(out, cubes)  # the one gather of a strided view (NumPy picks its fastest loop)
    affine_noise_inplace(out.reshape(1, len(out), -1), np.asarray(scale)[None], np.asarray(shift)[None],
                         np.asarray(sd)[None], np.array([key], np.uint64))
    return out
