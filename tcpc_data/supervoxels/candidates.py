"""Lesion candidates: the per-supervoxel table, a lesion-likeness score, top-K crop centres with NMS, CSV centres.

Lesion-likeness is a voxel map, computed on a grid of about 2 mm for speed:

- blob response ``B = max over (s1, s2) in (2, 5), (3, 8), (6, 16) mm of
  G(s1) - G(s2)`` of the HU clipped to [-1000, 200] (G = Gaussian smoothing;
  bone clipped so it does not dominate): a difference of Gaussians is large
  at the centre of a dense blob of 4-35 mm against a darker surround, small
  along vessels (tubes), walls (planes) and inside large uniform organs;
- lung context ``c = G(20 mm)`` of the air-like mask (-1000 < HU < -400):
  near 1 for points surrounded by lung, about 0.5 at the pleura, 0 in the
  head or abdomen;
- ``score = clip(B / 500 HU, 0, 1) * (0.2 + 0.8 c)``: dense, compact and
  contrasting, preferably inside the lungs; in a head CT (no lung) the blob
  response alone ranks the supervoxels. It fades linearly to 0 over the
  outer 10 mm of the volume, where reflected borders fake blobs and a crop
  would be half empty.

Each supervoxel proposes one crop centre: its voxel of highest score (the
blob's centre rather than the supervoxel's centroid, which a mixed
supervoxel would put in the surrounding lung), with that score. Centres are
kept best first when no better centre lies within half a crop on every axis
(non-maximum suppression), so the top K crops spread over distinct places.
"""
from __future__ import annotations

from pathlib import Path

import numba
import numpy as np

from tcpc_data.centres import match_cases, read_centres
from tcpc_data.volume import world_to_voxel

TABLE_COLUMNS = ("label", "voxels", "cz", "cy", "cx", "mean", "z0", "y0", "x0", "z1", "y1", "x1", "score")


def supervoxel_table(labels: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """Per-supervoxel statistics, one row per label > 0 present, sorted by label.

    Parameters
    ----------
    labels : (Z, Y, X) int array
        Supervoxel labels, 0 = outside the body.
    hu : (Z, Y, X) array
        Intensities (Hounsfield units) of the same grid.

    Returns
    -------
    (N, 13) float32 array
        Columns ``TABLE_COLUMNS``: label, voxel count, centroid (voxels), mean HU,
        half-open bounding box (voxels); ``score`` is 0 until :func:`score_table` fills it.
    """
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    hu = np.ascontiguousarray(hu, dtype=np.float32)
    if labels.shape != hu.shape or labels.ndim != 3:
        raise ValueError(f"labels {labels.shape} and hu {hu.shape} must be the same 3D shape")
    if labels.min(initial=0) < 0:
        raise ValueError("labels must be >= 0 (0 = outside the body)")
    stats = _label_stats(labels, hu, int(labels.max(initial=0)))
    present = np.flatnonzero(stats[:, 0] > 0)
    present = present[present > 0]
    s = stats[present]
    n = s[:, 0]
    table = np.zeros((len(present), len(TABLE_COLUMNS)), dtype=np.float64)
    table[:, 0] = present
    table[:, 1] = n
    table[:, 2:5] = s[:, 1:4] / n[:, None]
    table[:, 5] = s[:, 4] / n
    table[:, 6:9] = s[:, 5:8]
    table[:, 9:12] = s[:, 8:11] + 1
    return table.astype(np.float32)


@numba.njit(cache=True)
def _label_stats(labels, hu, max_label):
    """(max_label + 1, 11): n, Σz, Σy, Σx, ΣHU, min z/y/x, max z/y/x per label."""
    out = np.zeros((max_label + 1, 11), dtype=np.float64)
    out[:, 5:8] = np.inf
    out[:, 8:11] = -np.inf
    Z, Y, X = labels.shape
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                r = out[labels[z, y, x]]
                r[0] += 1
                r[1] += z
                r[2] += y
                r[3] += x
                r[4] += hu[z, y, x]
                r[5] = min(r[5], z)
                r[6] = min(r[6], y)
                r[7] = min(r[7], x)
                r[8] = max(r[8], z)
                r[9] = max(r[9], y)
                r[10] = max(r[10], x)
    return out


SCORE_GRID_MM = 2.0
_BLOB_SCALES_MM = ((2.0, 5.0), (3.0, 8.0), (6.0, 16.0))
_CONTEXT_MM = 20.0
_BORDER_MM = 10.0


def lesion_score_map(hu: np.ndarray, spacing_zyx) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The lesion-likeness map (module docstring) on a subsampled grid.

    Parameters
    ----------
    hu : (Z, Y, X) array
        Hounsfield units.
    spacing_zyx : 3 floats
        Voxel size in mm.

    Returns
    -------
    score : (z, y, x) float32 array in [0, 1]
        On the grid ``hu[::f0, ::f1, ::f2]``.
    factors : (f0, f1, f2)
        Subsampling per axis (cells of about ``SCORE_GRID_MM`` mm).
    """
    from tcpc_data.supervoxels.smoothing import gaussian

    sp = np.asarray(spacing_zyx, dtype=np.float64)
    f = tuple(max(1, int(round(SCORE_GRID_MM / s))) for s in sp)
    small = np.clip(np.asarray(hu, dtype=np.float32)[::f[0], ::f[1], ::f[2]], -1000.0, 200.0)
    cell = sp * np.asarray(f)
    blob = np.full(small.shape, -np.inf, dtype=np.float32)
    for s1, s2 in _BLOB_SCALES_MM:
        dog = gaussian(small, s1 / cell)
        dog -= gaussian(small, s2 / cell)
        np.maximum(blob, dog, out=blob)
    air = ((small > -1000.0) & (small < -400.0)).astype(np.float32)  # padding clips to -1000
    context = gaussian(air, _CONTEXT_MM / cell)
    score = np.clip(blob / 500.0, 0.0, 1.0) * (0.2 + 0.8 * np.clip(context, 0.0, 1.0))
    # Fade to 0 over the outer _BORDER_MM of the volume: the reflected borders of
    # the smoothing make false blobs there, and a crop centred there is half empty.
    for axis in range(3):
        n = score.shape[axis]
        dist = np.minimum(np.arange(n), np.arange(n)[::-1]) * cell[axis]
        ramp = np.clip(dist / _BORDER_MM, 0.0, 1.0).astype(np.float32)
        score *= ramp.reshape([-1 if a == axis else 1 for a in range(3)])
    return score.astype(np.float32), f


@numba.njit(cache=True)
def _best_voxels(labels, score, f0, f1, f2, max_label):
    """Per label: the highest score and the first voxel (raster order) that has it."""
    best = np.full(max_label + 1, -1.0, dtype=np.float32)
    where = np.zeros((max_label + 1, 3), dtype=np.int64)
    Z, Y, X = labels.shape
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                lab = labels[z, y, x]
                v = score[z // f0, y // f1, x // f2]
                if lab > 0 and v > best[lab]:
                    best[lab] = v
                    where[lab, 0] = z
                    where[lab, 1] = y
                    where[lab, 2] = x
    return best, where


def score_table(table: np.ndarray, labels: np.ndarray, hu: np.ndarray,
                spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    """Fill the ``score`` column of ``table`` and find each supervoxel's crop centre.

    Parameters
    ----------
    table : (N, 13) array
        From :func:`supervoxel_table`.
    labels : (Z, Y, X) int array
        The labels the table was made from.
    hu, spacing_zyx
        As in :func:`lesion_score_map`.

    Returns
    -------
    table : (N, 13) float32
        A copy with the ``score`` column filled.
    centres : (N, 3) int64
        Voxel (z, y, x) of highest lesion-likeness inside each supervoxel.
    """
    table = np.array(table, dtype=np.float32, copy=True)
    if len(table) == 0:
        return table, np.zeros((0, 3), dtype=np.int64)
    score, f = lesion_score_map(hu, spacing_zyx)
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    best, where = _best_voxels(lab, score, f[0], f[1], f[2], int(lab.max()))
    ids = table[:, 0].astype(np.int64)
    table[:, TABLE_COLUMNS.index("score")] = np.maximum(best[ids], 0.0)
    return table, where[ids]


def top_candidates(centres_zyx: np.ndarray, scores: np.ndarray, *, k: int, crop_size: int,
                   shape) -> tuple[np.ndarray, np.ndarray]:
    """Best-first crop centres with non-maximum suppression.

    Parameters
    ----------
    centres_zyx : (N, 3) float array
        Candidate centres in voxels.
    scores : (N,) float array
        Higher is more lesion-like.
    k : int
        At most this many centres are returned.
    crop_size : int
        Crop side in voxels; a centre is dropped when an already kept one lies
        less than ``crop_size / 2`` voxels away on every axis.
    shape : 3 ints
        Volume shape; centres are clipped into it.

    Returns
    -------
    centres : (K, 3) int32, scores : (K,) float32
    """
    c = np.asarray(centres_zyx, dtype=np.float64).reshape(-1, 3)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(c) != len(s):
        raise ValueError(f"{len(c)} centres but {len(s)} scores")
    c = np.clip(np.rint(c), 0, np.asarray(shape) - 1).astype(np.int64)
    order = np.lexsort((c[:, 2], c[:, 1], c[:, 0], -s))  # ties: by position, deterministic
    half = crop_size / 2.0
    kept: list[int] = []
    for i in order:
        if len(kept) >= k:
            break
        if kept and np.any(np.all(np.abs(c[kept] - c[i]) < half, axis=1)):
            continue
        kept.append(int(i))
    return c[kept].astype(np.int32).reshape(-1, 3), s[kept].astype(np.float32)


def read_candidates_csv(path: str | Path, store=None) -> dict[str, list[tuple[str, tuple[float, float, float]]]]:
    """Centres per case from a centre table: tcpc (case,z,y,x voxels or case,z_mm,y_mm,x_mm),
    a nodule table or LUNA16's annotations.csv / candidates.csv (``tcpc_data.centres``).

    Parameters
    ----------
    path
        The CSV; extra columns are ignored.
    store
        Volume store used to match LUNA16 ``seriesuid`` rows to DICOM cases by
        their ``series_uid`` attribute (``tcpc_data.centres.match_cases``).

    Returns
    -------
    dict
        Case id -> list of ("vox" | "mm", (z, y, x)) in file order; "mm" is LPS world z/y/x.
    """
    rows = read_centres(path, what="candidates CSV")
    return {case: [(r.unit, r.zyx) for r in rs] for case, rs in match_cases(rows, store).items()}


def csv_centres(rows, *, case: str, shape, spacing_zyx, origin_zyx, direction) -> np.ndarray:
    """(K, 3) int32 voxel centres of one case's CSV rows (from :func:`read_candidates_csv`), in file order.

    World points map to the nearest voxel through the image's origin, spacing
    and direction (``tcpc_data.volume.world_to_index``); a centre outside the
    volume raises ValueError naming the case.
    """
    geometry = {"origin_zyx": origin_zyx, "spacing_zyx": spacing_zyx, "direction": direction}
    out = []
    for unit, zyx in rows:
        if unit == "mm":
            out.append(world_to_voxel(zyx, geometry, shape, f"case {case}: candidate"))
            continue
        r = np.rint(np.asarray(zyx, dtype=np.float64))
        if np.any(r < 0) or np.any(r >= np.asarray(shape)):
            raise ValueError(f"case {case}: candidate {zyx} ({unit}) lies outside the volume "
                             f"of shape {tuple(shape)}")
        out.append(r)
    return np.asarray(out, dtype=np.int32).reshape(-1, 3)
