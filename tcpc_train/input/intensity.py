"""Per-cube intensity augmentation in compiled loops: gather, affine change and noise, float16 in and out.

The augmentations of :mod:`tcpc_train.input.augment` run here. In NumPy the intensity
change alone cost more than the rest of a sample's preparation (``docs/performance.md``,
Loader): a float16 -> float32 cast without hardware conversion, a float32 Gaussian draw
per value, and five passes over the data. For a batch, one call
gathers each sample's flipped/rotated cubes straight from the shard bytes
into the batch array (rows that are contiguous or reversed in the source are
vectorised copies), then changes each cube in place in one vectorised loop
while it is in L1.

The noise is approximately Gaussian: the sum of the four bytes of a 32-bit hash
(Irwin–Hall of order 4 over 256 levels), shifted and scaled to mean 0 and
variance 1; it is bounded by ±3.45 standard deviations and has a kurtosis of
2.7 (3 for a Gaussian). Each cube gets a 32-bit seed from SplitMix64 of its
sample's 64-bit key and its index; voxel j's value is the "lowbias32" hash of
``seed + (j + 1)·γ₃₂`` (a Weyl sequence mod 2^32): a counter-based generator, so every
voxel's value is a pure function of (key, cube, voxel index). 32-bit lanes make
it about 3x cheaper than a 64-bit SplitMix64 output per voxel (16 lanes per
AVX-512 multiply instead of 8, two multiplies instead of two 64-bit ones that
AVX2 lacks). Two cubes' sequences overlap (one cube's noise a shifted copy of the
other's) with probability ~2·4096/2^32 ≈ 2·10^-6 per pair: harmless for an augmentation.

The compiled loops are in :mod:`tcpc_train.input.kernels`, imported on first use (importing the training
loops loads no Numba).
"""
from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's Weyl increment γ
MIX1 = np.uint64(0xBF58476D1CE4E5B9)  # SplitMix64's output multipliers
MIX2 = np.uint64(0x94D049BB133111EB)
GOLDEN32 = np.uint32(0x9E3779B9)  # the 32-bit Weyl increment of the per-voxel counters
HASH1 = np.uint32(0x7FEB352D)  # multipliers of the 32-bit "lowbias32" integer hash (C. Wellons)
HASH2 = np.uint32(0x846CA68B)
BYTE_SUM_SD = np.float32(np.sqrt(4 * (256**2 - 1) / 12))  # sd of the sum of four uniform 8-bit integers


def splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 values (wrapping arithmetic), elementwise."""
    z = np.asarray(z, np.uint64)
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
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
    from tcpc_data.float16 import numpy_casts
    from tcpc_train.input import kernels
    if flat.dtype not in (np.float16, np.float32) or flat.ndim != 3 or not flat.flags.c_contiguous:
        raise TypeError(f"expected a C-contiguous (B, N, voxels) float16 or float32 array, got "
                        f"{flat.dtype} {flat.shape}")
    params = [np.ascontiguousarray(np.broadcast_to(p, flat.shape[:2]), np.float32) for p in (scale, shift, sd)]
    keys = np.ascontiguousarray(keys, np.uint64)
    if flat.dtype == np.float16 and numpy_casts():  # the library path: NumPy's casts around the float32 kernel
        values = flat.astype(np.float32)
        kernels.intensity_single(values, *params, keys)
        np.copyto(flat, values, casting="same_kind")
    elif flat.dtype == np.float16:
        kernels.intensity_half(flat.view(np.uint16), *params, keys)
    else:
        kernels.intensity_single(flat, *params, keys)


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


def augment_half(sources: list[np.ndarray], paths: np.ndarray, keys: np.ndarray, geometric: bool,
                 strength: float) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`tcpc_train.input.augment.augment_path_batch` for C-contiguous float16 sources, in one compiled call.

    The draws, the moved positions, the gather of each sample's flipped/rotated
    cubes into the batch array and the intensity change (:func:`affine_noise_inplace`'s
    noise) all run in the kernel, with the same values as the NumPy path.

    Parameters
    ----------
    sources : B arrays (N, c, c, c)
    paths : (B, N, 3) int grid positions
    keys : (B,) uint64, each sample's random key
    geometric : bool
    strength : float >= 0

    Returns
    -------
    cubes (B, N, c, c, c) float16 and positions (B, N, 3) int64; None when the sources are not
    C-contiguous float16 cubes of one shape matching ``paths``, or with ``TCPC_FLOAT16=numpy``
    (:mod:`tcpc_data.float16`): the caller then takes the NumPy path.
    """
    from tcpc_data.float16 import numpy_casts
    from tcpc_train.input import kernels
    b, n = len(sources), paths.shape[1]
    shape = sources[0].shape
    c = shape[-1] if len(shape) == 4 else 0
    if (numpy_casts() or not c or paths.shape != (b, n, 3) or shape != (n, c, c, c)
            or not all(x.dtype == np.float16 and x.flags.c_contiguous and x.shape == shape for x in sources)):
        return None
    out = np.empty((b,) + shape, np.float16)
    moved = np.empty((b, n, 3), np.int64)
    kernels.augment_half(np.array([x.ctypes.data for x in sources], np.int64), c,
                         np.ascontiguousarray(paths, np.int64), np.ascontiguousarray(keys, np.uint64),
                         bool(geometric), float(strength), out.reshape(b, n, -1).view(np.uint16), moved)
    return out, moved
