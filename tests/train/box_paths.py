"""Paths of cubes cut from a known volume, for tests that augmentation keeps cubes and positions
consistent: the cubes, augmented together, must tile one of the volume's 48 axis-aligned symmetries."""
from __future__ import annotations

import numpy as np

C, S = 4, 2  # cube side and grid stride, in voxels: neighbouring cubes overlap


def cut_path(rng: np.random.Generator, extent, n: int, dtype=np.float16):
    """(lo, path, vol, cubes): ``n`` random positions of a box of ``extent`` grid steps at offset
    ``lo``, then the box's two corners (so the path spans the box and fixes its transform); a
    volume of uniform values in [-1, 1] that the box covers, and the (n + 2, C, C, C) cubes cut
    from it at those positions."""
    lo = rng.integers(0, 5, 3)
    grid = np.array(np.meshgrid(*[np.arange(e) for e in extent], indexing="ij")).reshape(3, -1).T
    path = np.vstack([grid[rng.permutation(len(grid))[:n]] + lo, lo, lo + np.array(extent) - 1])
    vol = rng.uniform(-1, 1, tuple((np.array(extent) - 1) * S + C)).astype(dtype)
    cubes = np.stack([vol[z * S:z * S + C, y * S:y * S + C, x * S:x * S + C] for z, y, x in path - lo])
    return lo, path, vol, cubes


def symmetries(vol: np.ndarray) -> list[np.ndarray]:
    """The 48 axis-aligned symmetries of ``vol`` (flips, then quarter turns in each plane)."""
    return [np.rot90(np.flip(vol, [a for a in range(3) if f[a]]) if any(f) else vol, k, axes)
            for f in np.ndindex(2, 2, 2) for axes in ((0, 1), (0, 2), (1, 2)) for k in range(4)]
