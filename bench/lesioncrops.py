"""How often a crop contains a lesion: SLIC candidate crops against random and centre crops.

TCPC's claim is that crops centred on SLIC lesion candidates show the network
lesions more often than crops placed without task knowledge. This module
measures it where lesion centres are known (phantoms, annotated CT):

- a crop of side S centred on voxel c (``tcpc_data.crops``: box
  ``[c - S//2, c - S//2 + S)``) *contains* a lesion when the lesion's centre
  voxel lies in its box;
- ``slic``: the K candidate centres of a case (the supervoxels stage's, best first);
- ``random``: K centres drawn uniformly over the volume's voxels (seeded);
- ``random in body`` (:func:`random_centres_in`): K centres drawn uniformly
  over a mask's voxels, e.g. the body mask (supervoxel label > 0), so a crop
  never sits in air or padding: random placement without task knowledge, but
  inside the patient;
- ``centre``: the crop at the volume centre (the same box K times), the
  usual "centre crop" of a whole-volume pipeline.

The share of each is the fraction of its K crops that contain a lesion. For
random crops the expected share is known exactly (:func:`random_share_exact`):
the fraction of voxels whose crop box would hold a lesion centre.
"""
from __future__ import annotations

import numpy as np

from tcpc_data.crops import crop_box


def contains_lesion(centres_zyx, lesions_zyx, crop_size: int) -> np.ndarray:
    """(K,) bool: whether the crop of side ``crop_size`` at each centre holds some lesion centre.

    Parameters
    ----------
    centres_zyx : (K, 3) int array
        Crop centres, voxels.
    lesions_zyx : (L, 3) array
        Lesion centres, voxels (rounded to the nearest voxel).
    crop_size : int
        Crop side S in voxels.
    """
    c = np.asarray(centres_zyx, dtype=np.int64).reshape(-1, 3)
    les = np.rint(np.asarray(lesions_zyx, dtype=np.float64)).astype(np.int64).reshape(-1, 3)
    if int(crop_size) < 1:
        raise ValueError(f"crop size must be >= 1, got {crop_size}")
    if len(c) == 0 or len(les) == 0:
        return np.zeros(len(c), dtype=bool)
    start = crop_box(c, int(crop_size))[0]  # (K, 3): crop_box broadcasts over centres
    rel = les[None, :, :] - start[:, None, :]  # (K, L, 3)
    return np.any(np.all((rel >= 0) & (rel < int(crop_size)), axis=2), axis=1)


def random_centres(shape, k: int, seed: int) -> np.ndarray:
    """(k, 3) int64 centres drawn uniformly over the voxels of a volume of ``shape`` (seeded)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, int(n), size=int(k)) for n in shape], axis=1)


def random_centres_in(mask, k: int, seed: int) -> np.ndarray:
    """(k, 3) int64 centres drawn uniformly (with replacement) over the True voxels of a (Z, Y, X) ``mask``."""
    idx = np.flatnonzero(np.asarray(mask, dtype=bool))
    if len(idx) == 0:
        raise ValueError("the mask has no voxel to place a crop centre on")
    pick = np.random.default_rng(seed).choice(idx, size=int(k), replace=True)
    return np.stack(np.unravel_index(pick, np.shape(mask)), axis=1).astype(np.int64)


def centre_crops(shape, k: int) -> np.ndarray:
    """(k, 3) int64: the volume's centre voxel, k times."""
    return np.tile(np.asarray(shape, dtype=np.int64) // 2, (int(k), 1))


def random_share_exact(shape, lesions_zyx, crop_size: int) -> float:
    """Expected share of uniformly placed crops that contain a lesion: the fraction of voxels whose
    crop box holds some lesion centre."""
    hit = np.zeros(tuple(int(n) for n in shape), dtype=bool)
    s = int(crop_size)
    for les in np.rint(np.asarray(lesions_zyx, dtype=np.float64)).astype(np.int64).reshape(-1, 3):
        # centres c with c - s//2 <= les < c - s//2 + s, i.e. les + s//2 - s < c <= les + s//2
        lo = np.maximum(les + s // 2 - s + 1, 0)
        hi = np.minimum(les + s // 2 + 1, hit.shape)
        if np.all(hi > lo):
            hit[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return float(hit.mean())


def lesion_shares(candidates_zyx, lesions_zyx, shape, crop_size: int, seed: int = 0) -> dict:
    """Share of crops holding a lesion for the K SLIC candidates, K random and K centre crops.

    Returns
    -------
    dict
        ``k``, ``slic``, ``random``, ``centre`` (shares in [0, 1]; None when
        K = 0) and ``random_expected`` (:func:`random_share_exact`).
    """
    cands = np.asarray(candidates_zyx, dtype=np.int64).reshape(-1, 3)
    k = len(cands)

    def share(centres):
        return float(contains_lesion(centres, lesions_zyx, crop_size).mean()) if k else None

    return {"k": k, "slic": share(cands), "random": share(random_centres(shape, k, seed)),
            "centre": share(centre_crops(shape, k)),
            "random_expected": random_share_exact(shape, lesions_zyx, crop_size)}
