"""A fused multiply-add for Numba kernels whose rounding must not depend on the compile.

With ``fastmath``, LLVM may contract ``a * b + c`` into an FMA or reassociate
sums as it sees fit, and it decides afresh when Numba reloads a function from
its cache (the reloaded IR is optimised again): the first run on a cold cache
and later runs then round differently (a Gaussian-smoothed volume differed in
its last bits, and SLIC labels with it). Kernels that must give the same bits
in every build write their arithmetic with :func:`fma` and leave ``fastmath`` off.
"""
from __future__ import annotations

from numba import types
from numba.extending import intrinsic


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` rounded once; all three float32 or all three float64."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)
    return a(a, b, c), codegen
