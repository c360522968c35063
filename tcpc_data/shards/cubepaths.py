"""Where U-paths are defined: the cube grid of a crop, the registry of path kinds, and the copy share.

A crop of side S is cut into cubes of side c on a grid of stride
s = c·(1 − overlap): overlap 0.5 (the paper) shares half a cube with each
grid neighbour, overlap 0 makes neighbours touch, and a negative overlap
leaves a gap of −overlap·c voxels between them. The grid has
g = ⌊(S − c − 2j)/s⌋ + 1 cubes per axis and is centred in the crop: cube
(i, j, k) starts at m + (i, j, k)·s, with the margin m = (S − c − (g − 1)·s) // 2
(0 when the cubes tile the crop exactly), and then moves by its own jitter, a
uniform integer in [−j, j] voxels per axis (``docs/design.md``, Geometry).

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

:func:`target_share` counts the share of target voxels that also lie in a
support cube: a predictor can copy those voxels instead of learning context.
The paper's geometry (overlap 0.5, target next to its support) gives 100 % for
``u``, 50 % for ``straight``; a gap of at least twice the jitter gives 0 %.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

PLANES = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}
OPENINGS = ("up", "down", "left", "right")


def grid_stride(cube_size: int, overlap: float) -> int:
    """Grid stride s = c·(1 − overlap) in voxels; ValueError unless it is a positive integer.

    Parameters
    ----------
    cube_size
        Cube side c in voxels (>= 1).
    overlap
        Fraction of a cube shared with its grid neighbour, < 1; negative
        values leave a gap of −overlap·c voxels between neighbours.
    """
    if not overlap < 1:
        raise ValueError(f"overlap must be < 1 (negative: a gap between cubes), got {overlap}")
    if cube_size < 1:
        raise ValueError(f"cube size must be >= 1, got {cube_size}")
    stride_f = cube_size * (1 - overlap)
    stride = int(round(stride_f))
    if stride < 1 or abs(stride - stride_f) > 1e-9:
        raise ValueError(f"cube size {cube_size} with overlap {overlap} gives a stride of {stride_f} "
                         "voxels; it must be a positive integer")
    return stride


def jitter_voxels(cube_size: int, jitter: float) -> int:
    """Largest per-axis shift j = ⌊jitter·c⌋ voxels of a cube from its grid place; jitter >= 0."""
    if not jitter >= 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    return int(math.floor(jitter * cube_size + 1e-9))


def grid_size(crop_size: int, cube_size: int, overlap: float, jitter: int = 0) -> tuple[int, int]:
    """Cubes per axis g and stride s (voxels) of a crop's cube grid.

    Parameters
    ----------
    crop_size
        Crop side S in voxels.
    cube_size
        Cube side c in voxels.
    overlap
        Fraction of a cube shared with its grid neighbour, < 1 (negative: a gap).
    jitter
        Largest per-axis shift j of a cube from its grid place, in voxels; the
        grid keeps a margin of at least j inside the crop.

    Returns
    -------
    g, s
        ``g = (S - c - 2j) // s + 1`` and ``s = c·(1 - overlap)``.

    Raises
    ------
    ValueError
        When c·(1 − overlap) is not a positive integer, j < 0, or c + 2j > S.
    """
    stride = grid_stride(cube_size, overlap)
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0 voxels, got {jitter}")
    if cube_size + 2 * jitter > crop_size:
        raise ValueError(f"cube size {cube_size} plus twice the jitter {jitter} must fit the crop size "
                         f"{crop_size}")
    return (crop_size - cube_size - 2 * jitter) // stride + 1, stride


def grid_margin(crop_size: int, cube_size: int, grid: int, stride: int) -> int:
    """First voxel m of the centred grid: the leftover S − c − (g − 1)·s split, the smaller half first."""
    return (crop_size - cube_size - (grid - 1) * stride) // 2


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


def straight_path(target, plane: str = "axial", opening: str = "up", size: int = 7) -> np.ndarray:
    """3D CPC's straight line: ``size`` cubes on the side opposite the opening, read towards the target.

    The default size 7 reads as many support cubes as the default U (6·1 + 1),
    so the path's shape is the only difference between 3D CPC and TCPC. For
    the axial plane, opening 'up' (−y) and size 3 (the paper's preset), target
    T at (y, x)::

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

    ``ShardConfig`` steps just far enough that the cubes do not overlap: 2 at
    overlap 0.5 (touching), 1 on a grid with gaps (the gaps and jitter of the
    Rubik's-cube and Jigsaw papers). The block has one orientation: ``plane`` and ``opening`` are accepted and
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
    "straight": PathKind(straight_path, _ALL_VARIANTS, 7),
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


def cube_slices(position, stride: int, cube_size: int, origin=0) -> tuple[slice, slice, slice]:
    """Voxel slices of the cube at grid ``position``: start ``origin + position·stride`` per axis.

    ``origin`` is the grid margin plus the cube's jitter: an int or a (3,) int array.
    """
    start = np.asarray(origin, dtype=np.int64) + np.asarray(position, dtype=np.int64) * stride
    return tuple(slice(int(a), int(a) + cube_size) for a in np.broadcast_to(start, (3,)))


def target_share(kind: str, cube_size: int, overlap: float, size: int | None = None, jitter: int = 0,
                 plane: str | None = None, opening: str = "up") -> float:
    """Share of the target cube's voxels that also lie in a support cube of the path.

    A predictor that sees those voxels in its support can copy them instead of
    learning the tissue context, so the proxy task should have a share of 0.
    Exact: voxels are counted, and with jitter the share is averaged over every
    draw (each cube, the target included, moves by an independent uniform
    integer in [−jitter, jitter] voxels per axis).

    Parameters
    ----------
    kind, size, plane, opening
        The path (see ``path_positions``); ``plane`` None = the kind's first variant.
    cube_size
        Cube side c in voxels.
    overlap
        Grid overlap (< 1; negative: a gap of −overlap·c voxels); stride c·(1 − overlap).
    jitter
        Largest per-axis shift of each cube, in voxels (>= 0).

    Returns
    -------
    float in [0, 1]: expected share of target voxels covered by the union of
    the support cubes. It is 0 exactly when the stride along the path is at
    least c + 2·jitter (a gap of at least twice the jitter).
    """
    stride = grid_stride(cube_size, overlap)
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0 voxels, got {jitter}")
    if plane is None:
        plane, opening = PATHS[kind].variants[0] if kind in PATHS else ("axial", opening)
    pos = path_positions(kind, (0, 0, 0), plane, opening, size)
    return _share((pos[:-1] - pos[-1]) * stride, cube_size, int(jitter))


def _share(offsets: np.ndarray, c: int, j: int) -> float:
    """Expected covered share of a target cube at 0 by cubes starting at ``offsets`` (K, 3) voxels.

    Per axis, voxel u of the target (shifted by jt) lies in support k (shifted
    by js) iff js ∈ [u + jt − d − c + 1, u + jt − d]; axes and cubes draw
    independently, so P(covered) = 1 − Π_k (1 − Π_axes p_k,a(u_a, jt_a)).
    """
    n = 2 * j + 1
    w = np.arange(c)[:, None] + np.arange(-j, j + 1)[None, :]  # (c, n): u + jt
    free = None  # (c, n, c, n, c, n): probability that no support cube covers the voxel
    for d in offsets:
        p = [(np.clip(np.minimum(j, w - da) - np.maximum(-j, w - da - c + 1) + 1, 0, None) / n) for da in d]
        if not all(a.any() for a in p):
            continue  # this cube never reaches the target
        cover = np.einsum("ab,cd,ef->abcdef", *p)
        free = 1 - cover if free is None else free * (1 - cover)
    return 0.0 if free is None else float(1 - free.mean())
