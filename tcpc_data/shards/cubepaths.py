"""Where U-paths are defined: the cube grid of a crop and the registry of path kinds.

A crop of side S is cut into cubes of side c with stride s = c·(1 − overlap);
the grid has g = (S − c)/s + 1 cubes per axis, and cube (i, j, k) covers
[i·s, i·s + c) × [j·s, j·s + c) × [k·s, k·s + c) (``DESIGN.md``, Geometry).

A *path* is an (P+1, 3) int array of grid positions: the support set in the
order the RNN reads it, then the target (last row). Each kind is one function
``fn(target, plane, opening, size) -> positions`` registered in ``PATHS``,
plus its tuple of variants. Orientation words, for every kind:

- ``plane``: the grid plane the path lies in, given as (row axis, column axis)
  of the (z, y, x) grid: axial = (y, x), coronal = (z, x), sagittal = (z, y).
- ``opening``: a side of the target in that plane: up = −row, down = +row,
  left = −column, right = +column. It is the side with no support: the U is
  open there, and a straight line comes from the opposite side.

Variants of one kind are rotations (within the plane) and axis permutations
(across planes) of each other, so they show the encoder the same tissue from
every side.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

PLANES = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}
OPENINGS = ("up", "down", "left", "right")


def grid_size(crop_size: int, cube_size: int, overlap: float) -> tuple[int, int]:
    """Cubes per axis g and stride s (voxels) of a crop's cube grid.

    Parameters
    ----------
    crop_size
        Crop side S in voxels.
    cube_size
        Cube side c in voxels.
    overlap
        Fraction in [0, 1) of a cube shared with its grid neighbour.

    Returns
    -------
    g, s
        ``g = (S - c) / s + 1`` and ``s = c·(1 - overlap)``; both integers.

    Raises
    ------
    ValueError
        When c·(1 − overlap) is not a positive integer, c > S, or the cubes do
        not tile S exactly.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if cube_size < 1 or cube_size > crop_size:
        raise ValueError(f"cube size {cube_size} must be between 1 and the crop size {crop_size}")
    stride_f = cube_size * (1 - overlap)
    stride = int(round(stride_f))
    if stride < 1 or abs(stride - stride_f) > 1e-9:
        raise ValueError(f"cube size {cube_size} with overlap {overlap} gives a stride of {stride_f} "
                         "voxels; it must be a positive integer")
    if (crop_size - cube_size) % stride:
        raise ValueError(f"cubes of {cube_size} voxels with stride {stride} do not tile a crop of "
                         f"{crop_size} voxels: (S - c) must be a multiple of the stride")
    return (crop_size - cube_size) // stride + 1, stride


def _in_plane(offsets_uv: list[tuple[int, int]], plane: str, opening: str) -> np.ndarray:
    """Map (row, column) offsets drawn for opening 'up' to (z, y, x) offsets for ``plane``/``opening``."""
    rot = {"up": lambda u, v: (u, v), "down": lambda u, v: (-u, -v),
           "left": lambda u, v: (-v, u), "right": lambda u, v: (v, -u)}[opening]
    row, col = PLANES[plane]
    out = np.zeros((len(offsets_uv), 3), dtype=np.int64)
    for n, (u, v) in enumerate(offsets_uv):
        ru, rv = rot(u, v)
        out[n, row], out[n, col] = ru, rv
    return out


def u_path(target, plane: str = "axial", opening: str = "up", size: int = 1) -> np.ndarray:
    """TCPC's 'U': the ring of Chebyshev radius ``size`` around the target, open on one side.

    For the axial plane, opening 'up' (−y) and size 1, target T at (y, x)::

        1 . 7        (y-1,x-1)  open   (y-1,x+1)
        2 T 6   =    (y  ,x-1) TARGET  (y  ,x+1)
        3 4 5        (y+1,x-1) (y+1,x) (y+1,x+1)

    Read down the left arm, along the bottom, up the right arm; the target is
    last. Size r keeps the corners of the open side and drops its 2r − 1
    middle cubes, leaving 6r + 1 support cubes (7 for r = 1).

    Returns
    -------
    (6·size + 2, 3) int64 grid positions z, y, x; the target last.
    """
    r = size
    left = [(u, -r) for u in range(-r, r + 1)]
    bottom = [(r, v) for v in range(-r + 1, r)]
    right = [(u, r) for u in range(r, -r - 1, -1)]
    return np.asarray(target, dtype=np.int64) + _in_plane(left + bottom + right + [(0, 0)], plane, opening)


def straight_path(target, plane: str = "axial", opening: str = "up", size: int = 3) -> np.ndarray:
    """3D CPC's straight line: ``size`` cubes on the side opposite the opening, read towards the target.

    For the axial plane, opening 'up' (−y) and size 3, target T at (y, x)::

        T      (y  , x)   target, last
        3      (y+1, x)
        2      (y+2, x)
        1      (y+3, x)   read first

    Returns
    -------
    (size + 1, 3) int64 grid positions; the target last.
    """
    offsets = [(u, 0) for u in range(size, 0, -1)] + [(0, 0)]
    return np.asarray(target, dtype=np.int64) + _in_plane(offsets, plane, opening)


def block_path(target, plane: str = "axial", opening: str = "up", size: int = 1) -> np.ndarray:
    """A 2×2×2 block of cubes ``size`` grid steps apart, for the Rubik's-cube and 3D-Jigsaw baselines.

    The block's corners are (target − size) + size·(a, b, c), a, b, c ∈ {0, 1},
    in C order, so the target is the last corner (+,+,+)::

        z-size:  1 2      z:  5 6        (rows y, columns x)
                 3 4          7 T

    At overlap 0.5, size 2 gives cubes that touch without overlapping (the
    default of ``ShardConfig`` for blocks). The
    block has one orientation: ``plane`` and ``opening`` are accepted and
    ignored, and its only variant is ('axial', 'up').

    Returns
    -------
    (8, 3) int64 grid positions; the target last.
    """
    corners = np.array([(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.int64)
    return np.asarray(target, dtype=np.int64) - size + size * corners


@dataclasses.dataclass(frozen=True)
class PathKind:
    """A registered path kind: its function, its variants (plane, opening), and its default size."""

    fn: Callable[..., np.ndarray]
    variants: tuple[tuple[str, str], ...]
    default_size: int


_ALL_VARIANTS = tuple((p, o) for p in PLANES for o in OPENINGS)

PATHS: dict[str, PathKind] = {
    "u": PathKind(u_path, _ALL_VARIANTS, 1),
    "straight": PathKind(straight_path, _ALL_VARIANTS, 3),
    "block": PathKind(block_path, (("axial", "up"),), 1),
}


def path_positions(kind: str, target, plane: str, opening: str, size: int | None = None) -> np.ndarray:
    """Grid positions (P+1, 3) of a path of ``kind`` ending at ``target``; validates the words.

    Parameters
    ----------
    kind
        A key of ``PATHS``: 'u', 'straight' or 'block'.
    target
        Grid position (i, j, k) of the target cube.
    plane, opening
        A variant of the kind (see the module docstring).
    size
        U radius, straight length or block step in grid units; None takes the
        kind's default.
    """
    if kind not in PATHS:
        raise ValueError(f"unknown path kind {kind!r}; known: {', '.join(sorted(PATHS))}")
    pk = PATHS[kind]
    if (plane, opening) not in pk.variants:
        raise ValueError(f"path kind {kind!r} has no variant plane={plane!r}, opening={opening!r}; "
                         f"variants: {list(pk.variants)}")
    size = pk.default_size if size is None else size
    if size < 1:
        raise ValueError(f"path size must be >= 1, got {size}")
    return pk.fn(target, plane, opening, size)


def valid_targets(kind: str, grid: int, size: int | None = None, target_radius: int | None = None,
                  variants: tuple[tuple[str, str], ...] | None = None) -> np.ndarray:
    """Grid positions usable as targets: every variant's whole path lies inside the grid.

    Parameters
    ----------
    kind, size
        The path kind and its size (see ``path_positions``).
    grid
        Cubes per axis g.
    target_radius
        Keep only targets within this many grid steps (Chebyshev) of the grid
        centre (g − 1)/2, half a step more for even g; None keeps all.
    variants
        The variants that must fit; None = all of the kind's.

    Returns
    -------
    (T, 3) int64 positions in C order; empty when nothing fits.
    """
    pk = PATHS[kind]
    variants = pk.variants if variants is None else variants
    ii = np.stack(np.meshgrid(*[np.arange(grid)] * 3, indexing="ij"), -1).reshape(-1, 3)
    keep = np.ones(len(ii), dtype=bool)
    if target_radius is not None:
        keep &= np.abs(2 * ii - (grid - 1)).max(1) <= 2 * target_radius + (grid - 1) % 2
    for plane, opening in variants:
        # Path offsets do not depend on the target: shift them once.
        off = path_positions(kind, (0, 0, 0), plane, opening, size)
        lo, hi = -off.min(0), grid - 1 - off.max(0)
        keep &= np.all((ii >= lo) & (ii <= hi), axis=1)
    return ii[keep]


def cube_slices(position, stride: int, cube_size: int) -> tuple[slice, slice, slice]:
    """Voxel slices of the crop covered by the cube at grid ``position``."""
    return tuple(slice(int(p) * stride, int(p) * stride + cube_size) for p in position)
