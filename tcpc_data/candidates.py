"""Lesion candidates: the per-supervoxel table, a lesion-likeness score, top-K crop centres with NMS, CSV centres.

Lesion-likeness of supervoxel s (all terms in [0, 1], multiplied):

- density ``clip((mean_s + 700) / 600, 0, 1)``: 0 for lung and air (<= -700 HU),
  1 for solid tissue (>= -100 HU); ground glass (~ -450 HU) scores about 0.4;
- contrast ``0.25 + 0.75 * clip((mean_s - mean_nbr) / 500, 0, 1)``, where
  ``mean_nbr`` is the contact-area weighted mean HU of the face-adjacent
  supervoxels: a lesion is denser than what surrounds it;
- context ``0.25 + 0.75 * f``, ``f`` the fraction of s's contact area shared
  with air-like neighbours (mean < -400 HU): surrounded by lung. In head CT
  (no lungs) every supervoxel gets the same 0.25 and the other terms rank them;
- size ``min(1, (D / 3 mm)^3, (40 mm / D)^3)`` with D the equivalent sphere
  diameter: lesions worth a crop are 3-40 mm; big slabs of mediastinum or
  liver are not;
- compactness ``0.5 + 0.5 * min(1, voxels / (0.52 * bbox voxels))``: a sphere
  fills 52 % of its box; elongated vessels and walls fill less.

Crop centres are the rounded centroids of the best supervoxels, greedily
kept when no better centre lies within half a crop on every axis (non-maximum
suppression: no kept centre sits inside a better one's central half), so the
top K crops spread over distinct places.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numba
import numpy as np

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


@numba.njit(cache=True)
def _contacts(labels):
    """Face contacts between different labels > 0: (M, 2) int64 pairs (a < b), one per touching face."""
    Z, Y, X = labels.shape
    n = 0
    for pass_ in range(2):
        if pass_ == 1:
            out = np.empty((n, 2), dtype=np.int64)
            n = 0
        for z in range(Z):
            for y in range(Y):
                for x in range(X):
                    a = labels[z, y, x]
                    if a <= 0:
                        continue
                    for d in range(3):
                        if d == 0:
                            if x + 1 >= X:
                                continue
                            b = labels[z, y, x + 1]
                        elif d == 1:
                            if y + 1 >= Y:
                                continue
                            b = labels[z, y + 1, x]
                        else:
                            if z + 1 >= Z:
                                continue
                            b = labels[z + 1, y, x]
                        if b > 0 and b != a:
                            if pass_ == 1:
                                out[n, 0] = min(a, b)
                                out[n, 1] = max(a, b)
                            n += 1
    return out


def score_table(table: np.ndarray, labels: np.ndarray, spacing_zyx) -> np.ndarray:
    """Fill the ``score`` column of ``table`` with the lesion-likeness (module docstring); returns it.

    ``labels`` is the volume the table was made from; ``spacing_zyx`` in mm.
    """
    table = np.array(table, dtype=np.float32, copy=True)
    if len(table) == 0:
        return table
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    lab_ids = table[:, 0].astype(np.int64)
    index = np.full(int(lab_ids.max()) + 1, -1, dtype=np.int64)
    index[lab_ids] = np.arange(len(lab_ids))
    mean = table[:, 5].astype(np.float64)
    pairs = _contacts(np.ascontiguousarray(labels, dtype=np.int32))
    nbr_sum = np.zeros(len(table))
    nbr_area = np.zeros(len(table))
    air_area = np.zeros(len(table))
    if len(pairs):
        key = pairs[:, 0] * (int(lab_ids.max()) + 1) + pairs[:, 1]
        uniq, area = np.unique(key, return_counts=True)
        ia = index[uniq // (int(lab_ids.max()) + 1)]
        ib = index[uniq % (int(lab_ids.max()) + 1)]
        for i, j in ((ia, ib), (ib, ia)):
            np.add.at(nbr_sum, i, area * mean[j])
            np.add.at(nbr_area, i, area)
            np.add.at(air_area, i, area * (mean[j] < -400.0))
    has_nbr = nbr_area > 0
    mean_nbr = np.where(has_nbr, nbr_sum / np.maximum(nbr_area, 1), mean)
    air_frac = np.where(has_nbr, air_area / np.maximum(nbr_area, 1), 0.0)
    voxels = table[:, 1].astype(np.float64)
    diameter = (6.0 * voxels * float(np.prod(sp)) / math.pi) ** (1.0 / 3.0)
    bbox = np.prod(table[:, 9:12].astype(np.float64) - table[:, 6:9], axis=1)

    density = np.clip((mean + 700.0) / 600.0, 0.0, 1.0)
    contrast = 0.25 + 0.75 * np.clip((mean - mean_nbr) / 500.0, 0.0, 1.0)
    context = 0.25 + 0.75 * air_frac
    size = np.minimum(1.0, np.minimum((diameter / 3.0) ** 3, (40.0 / diameter) ** 3))
    compact = 0.5 + 0.5 * np.minimum(1.0, voxels / (0.52 * bbox))
    table[:, TABLE_COLUMNS.index("score")] = density * contrast * context * size * compact
    return table


def top_candidates(centres_zyx: np.ndarray, scores: np.ndarray, *, k: int, crop_size: int, shape) -> tuple[np.ndarray, np.ndarray]:
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


def read_candidates_csv(path: str | Path) -> dict[str, list[tuple[str, tuple[float, float, float]]]]:
    """Centres per case from a CSV with columns case,z,y,x (voxels) or case,z_mm,y_mm,x_mm (world).

    Returns case -> list of ("vox" | "mm", (z, y, x)). Extra columns are ignored.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"candidates CSV not found: {p}")
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or ())
        if {"case", "z", "y", "x"} <= cols:
            unit, keys = "vox", ("z", "y", "x")
        elif {"case", "z_mm", "y_mm", "x_mm"} <= cols:
            unit, keys = "mm", ("z_mm", "y_mm", "x_mm")
        else:
            raise ValueError(f"{p}: needs columns case,z,y,x (voxels) or case,z_mm,y_mm,x_mm, "
                             f"got {sorted(cols)}")
        out: dict[str, list] = {}
        for line, row in enumerate(reader, start=2):
            try:
                zyx = tuple(float(row[k]) for k in keys)
            except (TypeError, ValueError):
                raise ValueError(f"{p} line {line}: {keys} must be numbers, got "
                                 f"{[row.get(k) for k in keys]}") from None
            if not all(math.isfinite(v) for v in zyx):
                raise ValueError(f"{p} line {line}: coordinates must be finite, got {zyx}")
            out.setdefault(row["case"], []).append((unit, zyx))
    return out


def csv_centres(rows, *, case: str, shape, spacing_zyx, origin_zyx) -> np.ndarray:
    """(K, 3) int32 voxel centres of one case's CSV rows (from :func:`read_candidates_csv`), in file order.

    World coordinates map to voxels as ``(mm - origin) / spacing``; a centre
    outside the volume raises ValueError naming the case.
    """
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    org = np.asarray(origin_zyx, dtype=np.float64)
    out = []
    for unit, zyx in rows:
        v = np.asarray(zyx, dtype=np.float64)
        if unit == "mm":
            v = (v - org) / sp
        r = np.rint(v)
        if np.any(r < 0) or np.any(r >= np.asarray(shape)):
            raise ValueError(f"case {case}: candidate {zyx} ({unit}) lies outside the volume "
                             f"of shape {tuple(shape)}")
        out.append(r)
    return np.asarray(out, dtype=np.int32).reshape(-1, 3)
