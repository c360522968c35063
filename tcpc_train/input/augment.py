"""Augmentation: one random flip/90°-rotation shared by the cubes of a path, per-cube intensity.

Per sample with a NumPy Generator (:func:`augment_path`, :func:`augment_intensity`,
:func:`augment_volume`), and per batch of path samples (:func:`augment_path_batch`,
what pretraining's loader runs): the same transforms, with every random choice
of a sample drawn from a counter-based generator keyed by (seed, epoch, sample
key), so a batch's draws are a few vectorised NumPy operations and its cubes
are gathered into the batch array once and changed in place by one compiled
loop (:mod:`tcpc_train.input.intensity`).
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np

from tcpc_train.input.intensity import GOLDEN, affine_noise, affine_noise_inplace, augment_half, splitmix64

_PLANES = ((0, 1), (0, 2), (1, 2))


@functools.lru_cache(maxsize=None)
def _view_recipe(flips: tuple[bool, bool, bool], plane: int, turns: int) -> tuple[tuple, tuple[int, ...]]:
    """(index, axes) with ``cubes[index].transpose(axes)`` equal to ``np.rot90`` of the flipped cubes.

    ``np.rot90(m, k, (a, b))`` is: k = 1, flip b then swap a and b; k = 2, flip a and b;
    k = 3, flip a then swap. Flips compose by parity, so every one of the 96
    choices is one slicing and one transpose (two C calls per sample).
    """
    flipped = list(flips)
    a, b = _PLANES[plane]
    swap = turns in (1, 3)
    for axis in {0: (), 1: (b,), 2: (a, b), 3: (a,)}[turns]:
        flipped[axis] = not flipped[axis]
    axes = [0, 1, 2, 3]
    if swap:
        axes[a + 1], axes[b + 1] = axes[b + 1], axes[a + 1]
    return (slice(None),) + tuple(slice(None, None, -1) if f else slice(None) for f in flipped), tuple(axes)


def _cube_view(cubes: np.ndarray, flips, plane: int, turns: int) -> np.ndarray:
    index, axes = _view_recipe(tuple(bool(f) for f in flips), int(plane), int(turns))
    return cubes[index].transpose(axes)


def _move_positions(paths: np.ndarray, flips: np.ndarray, plane: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """Positions after the flips and rotations, within each path's bounding box, anchored at its
    minimum corner.

    paths (B, N, 3) ints, flips (B, 3) bool, plane and turns (B,) ints -> (B, N, 3) int64.
    """
    p = paths.astype(np.int64)
    lo = p.min(1, keepdims=True)
    q = p - lo  # positions in the bounding box [0, ext]
    ext = q.max(1, keepdims=True)
    q = np.where(flips[:, None, :], ext - q, q)
    planes = np.asarray(_PLANES)[plane]  # (B, 2)
    ia, ib = planes[:, None, :1], planes[:, None, 1:]
    qa, qb = np.take_along_axis(q, ia, 2), np.take_along_axis(q, ib, 2)
    ea, eb = np.take_along_axis(ext, ia, 2), np.take_along_axis(ext, ib, 2)
    # np.rot90's quarter turn maps (q_a, q_b) -> (ext_b - q_b, q_a); k turns in closed form:
    k = turns[:, None, None]
    na = np.choose(k, (qa, eb - qb, ea - qa, qb))
    nb = np.choose(k, (qb, qa, eb - qb, ea - qa))
    np.put_along_axis(q, ia, na, 2)
    np.put_along_axis(q, ib, nb, 2)
    return q + lo


def augment_path(cubes: np.ndarray, path: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Apply one random flip/90°-rotation to every cube of a path and move the positions to match.

    Parameters
    ----------
    cubes : (N, c, c, c) array
    path : (N, 3) int grid positions
    rng : numpy Generator

    Returns
    -------
    The transformed cubes, a strided view of ``cubes`` (the one copy is made by
    :func:`augment_intensity` or by the batch's stack), and the positions, a
    new (N, 3) int64 array. Positions are mirrored / rotated within the path's
    bounding box, anchored at its minimum corner, so a sub-volume assembled
    from the cubes is the same transform of the original.
    """
    flips = rng.random(3) < 0.5
    plane = int(rng.integers(3))
    turns = int(rng.integers(4))
    moved = _move_positions(path[None], flips[None], np.array([plane]), np.array([turns]))[0]
    return _cube_view(cubes, flips, plane, turns), moved


def augment_intensity(cubes: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Give every cube of a sample its own contrast, offset and noise.

    Cubes of one sample come from one image, so they share its intensity
    statistics; a predictor could match targets by those statistics instead
    of by content. Independent draws per cube remove that cue while the
    geometric transform (:func:`augment_path`) stays shared, as the path
    geometry requires (``docs/design.md``, Geometry).

    Parameters
    ----------
    cubes : (N, c, c, c) float array, intensities in [-1, 1]; any strides
    rng : numpy Generator
    strength : float >= 0
        v: each cube is scaled by a factor in [1 − v, 1 + v], shifted by an
        offset in [−v, v] and given noise of a standard deviation in [0, v/5],
        each drawn uniformly and independently per cube; 0 returns ``cubes``
        unchanged. The noise is approximately Gaussian and independent per
        voxel and per cube (:mod:`tcpc_train.input.intensity`), keyed by one draw of ``rng``.

    Returns
    -------
    (N, c, c, c) C-contiguous array of the dtype of ``cubes``.
    """
    if strength == 0:
        return cubes
    n = len(cubes)
    scale = rng.uniform(1 - strength, 1 + strength, n)
    shift = rng.uniform(-strength, strength, n)
    sd = rng.uniform(0, strength / 5, n)
    key = int(rng.integers(0, 2**64, dtype=np.uint64))
    if cubes.dtype in (np.float16, np.float32):
        return affine_noise(cubes, scale, shift, sd, key)
    return affine_noise(cubes.astype(np.float32), scale, shift, sd, key).astype(cubes.dtype)


def augment_volume(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips and a 90° rotation of a cubic (S, S, S) volume."""
    for axis in range(3):
        if rng.random() < 0.5:
            volume = np.flip(volume, axis=axis)
    a, b = _PLANES[rng.integers(3)]
    return np.ascontiguousarray(np.rot90(volume, int(rng.integers(4)), axes=(a, b)))


def sample_key(seed: int, epoch: int, key: str) -> int:
    """A sample's 64-bit random key: a pure function of (seed, epoch, key) (BLAKE2b)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{epoch}\0{key}".encode(), digest_size=8).digest(), "little")


def uniforms(keys: np.ndarray, count: int) -> np.ndarray:
    """(B, count) float64 uniforms in [0, 1): draw j of row i is SplitMix64 of ``keys[i] + (j+1)·γ``."""
    z = splitmix64(keys.astype(np.uint64)[:, None] + np.arange(1, count + 1, dtype=np.uint64) * GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def augment_path_batch(cubes: list[np.ndarray], paths: np.ndarray, keys: np.ndarray, geometric: bool,
                       strength: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`augment_path` and :func:`augment_intensity` for a batch of samples, into one new array.

    Parameters
    ----------
    cubes : B arrays (N, c, c, c) of one float dtype, any strides (e.g. read-only views of shard bytes)
    paths : (B, N, 3) int grid positions
    keys : (B,) uint64
        Each sample's random key (:func:`sample_key`); every choice for sample i
        depends on ``keys[i]`` alone, so batching does not change it.
    geometric : bool
        Apply the shared random flip/rotation (else the identity).
    strength : float >= 0
        Per-cube intensity augmentation (:func:`augment_intensity`); 0: none.

    Returns
    -------
    cubes (B, N, c, c, c) C-contiguous in the input dtype, and positions (B, N, 3) int64.
    """
    done = augment_half(cubes, paths, keys, geometric, strength)  # the same values, in one compiled call
    if done is not None:
        return done
    shape = cubes[0].shape
    b, n = len(cubes), paths.shape[1]
    u = uniforms(keys, 5 + 3 * n)
    flips = u[:, :3] < 0.5
    plane, turns = (u[:, 3] * 3).astype(np.int64), (u[:, 4] * 4).astype(np.int64)
    if not geometric:  # the identity: no flip, no turn
        flips[:], turns[:] = False, 0
    out = np.empty((b,) + shape, np.result_type(*(c.dtype for c in cubes)))
    u_scale, u_shift, u_sd = u[:, 5:5 + n], u[:, 5 + n:5 + 2 * n], u[:, 5 + 2 * n:]
    scale, shift, sd = 1 - strength + 2 * strength * u_scale, strength * (2 * u_shift - 1), strength / 5 * u_sd
    noise_keys = splitmix64(keys.astype(np.uint64) ^ np.uint64(0xA5A5A5A5A5A5A5A5))
    for i, c in enumerate(cubes):
        np.copyto(out[i], _cube_view(c, flips[i], plane[i], turns[i]))
    if strength:
        affine_noise_inplace(out.reshape(b, n, -1), scale, shift, sd, noise_keys)
    return out, _move_positions(paths, flips, plane, turns)
