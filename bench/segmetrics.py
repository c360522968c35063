"""Supervoxel quality metrics: explained variation, undersegmentation error, boundary recall.

Used to compare :func:`tcpc_data.supervoxels.slic.slic` with scikit-image in tests and
``bench/slic.py``. Definitions follow Neubert & Protzel, "Superpixel benchmark
and comparison" (2012); ``reference_segmentation`` builds a ground truth for CT
volumes without manual labels from tissue classes in HU.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _paired_voxels(values: np.ndarray, labels, mask, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``values`` and ``labels`` as flat voxel lists (inside ``mask`` when given); shapes must agree."""
    lab = np.asarray(labels)
    if values.shape != lab.shape:
        raise ValueError(f"{name} shape {values.shape} differs from labels shape {lab.shape}")
    if mask is not None:
        return values[mask], lab[mask]
    return values.ravel(), lab.ravel()


def explained_variation(image: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of the image variance explained by per-supervoxel means, in [0, 1].

    ``1 - sum((x - mean_of_its_segment)^2) / sum((x - global_mean)^2)`` over ``mask`` (default all).
    """
    x, lab = _paired_voxels(np.asarray(image, dtype=np.float64), labels, mask, "image")
    _, inv = np.unique(lab, return_inverse=True)
    counts = np.bincount(inv)
    means = np.bincount(inv, weights=x) / counts
    total = np.sum((x - x.mean()) ** 2)
    if total == 0:
        return 1.0
    return float(1.0 - np.sum((x - means[inv]) ** 2) / total)


def undersegmentation_error(reference: np.ndarray, labels: np.ndarray,
                            mask: np.ndarray | None = None) -> float:
    """Corrected undersegmentation error (Neubert & Protzel), in [0, 1]; lower is better.

    For every reference region G and supervoxel S that overlap, the smaller of
    ``|S ∩ G|`` and ``|S \\ G|`` leaks; the sum over pairs is divided by the voxel count.
    """
    ref, lab = _paired_voxels(np.asarray(reference), labels, mask, "reference")
    _, r = np.unique(ref, return_inverse=True)
    _, s = np.unique(lab, return_inverse=True)
    pair = r.astype(np.int64) * (s.max() + 1) + s
    pairs, inter = np.unique(pair, return_counts=True)
    seg_size = np.bincount(s)
    inside = inter
    outside = seg_size[pairs % (s.max() + 1)] - inter
    return float(np.minimum(inside, outside).sum() / len(s))


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Voxels whose label differs from a face neighbour (both sides marked)."""
    b = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        d = labels[tuple(lo)] != labels[tuple(hi)]
        b[tuple(lo)] |= d
        b[tuple(hi)] |= d
    return b


def boundary_recall(reference: np.ndarray, labels: np.ndarray, tolerance: int = 1,
                    mask: np.ndarray | None = None) -> float:
    """Fraction of reference boundary voxels within ``tolerance`` voxels (chessboard) of a supervoxel boundary."""
    ref = np.asarray(reference)
    lab = np.asarray(labels)
    if ref.shape != lab.shape:
        raise ValueError(f"reference shape {ref.shape} differs from labels shape {lab.shape}")
    gt = _boundaries(ref)
    sb = _boundaries(lab)
    if tolerance > 0:
        sb = ndi.binary_dilation(sb, structure=np.ones((3,) * lab.ndim, bool), iterations=tolerance)
    if mask is not None:
        gt &= mask
    n = int(gt.sum())
    return 1.0 if n == 0 else float((gt & sb).sum() / n)


def reference_segmentation(hu: np.ndarray, spacing_zyx=(1.0, 1.0, 1.0),
                           thresholds=(-500.0, 200.0)) -> np.ndarray:
    """A ground truth for CT without manual labels: 6-connected components of HU tissue classes.

    Classes are air/lung (< -500 HU), soft tissue and fat, bone (>= 200 HU),
    taken after a 1 mm Gaussian to suppress noise. Returns int32 labels (Z, Y, X).
    """
    sm = ndi.gaussian_filter(np.asarray(hu, dtype=np.float32), 1.0 / np.asarray(spacing_zyx, float))
    cls = np.digitize(sm, thresholds).astype(np.int32)
    out = np.zeros(cls.shape, dtype=np.int32)
    offset = 0
    for c in range(len(thresholds) + 1):
        comp, n = ndi.label(cls == c)
        out[comp > 0] = comp[comp > 0] + offset
        offset += n
    return out
