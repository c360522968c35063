"""float32 <-> float16 inside Numba's compiled loops, bit for bit as NumPy's ``astype`` casts.

NumPy's casts are the library path: they run on one core holding the GIL, and Numba has no float16
type on the CPU, so a compiled loop cannot call them per value. Here float16 values are converted by
LLVM's ``fpext``/``fptrunc`` on ``half`` (one F16C instruction per vector), or, on a CPU without
hardware conversion, by integer arithmetic; both give NumPy's bits (round to nearest even,
subnormals, infinities; a NaN stays a NaN). The store's float16 images
(:mod:`tcpc_data.ingest.normalise`) and the trainer's intensity kernels
(:mod:`tcpc_train.input.kernels`) use this one conversion; the measured reason is on
``docs/performance.md`` (float16 conversions).

The switch: with ``TCPC_FLOAT16=numpy`` in the environment (:func:`numpy_casts`), both take the
library path instead (NumPy's ``astype`` around float32 kernels), with the same results; the
tests compare the two. Imported on first use (Numba's cache keeps the compiled code across runs).
"""
from __future__ import annotations

import os
import platform

import numba
import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


def numpy_casts() -> bool:
    """Whether float16 values go through NumPy's ``astype`` (``TCPC_FLOAT16=numpy``) instead of the
    compiled conversion."""
    return os.environ.get("TCPC_FLOAT16", "").lower() == "numpy"


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
half_to_float, float_to_half = ((_hw_half_to_float, _hw_float_to_half) if _hardware_half()
                                else (_sw_half_to_float, _sw_float_to_half))
