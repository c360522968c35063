"""Tiny volume stores in the store layout of docs/design.md, built from seeded phantoms (for shard, labelled and inspect tests)."""
from __future__ import annotations

import numpy as np

from tcpc_data.phantom import make_phantom
from tcpc_data.store.volumes import commit_arrays


def normalise(hu: np.ndarray) -> np.ndarray:
    """HU clipped to [-1024, 3071] and mapped to [-1, 1], like ingest."""
    return ((np.clip(hu, -1024, 3071) + 1024) / 4095 * 2 - 1).astype(np.float32)


def phantom_store(url, n_cases: int = 2, shape=(32, 64, 64), border_candidate: bool = True) -> dict:
    """Write ``n_cases`` phantom cases (image, supervoxels, candidates); returns case -> Phantom."""
    out = {}
    for i in range(n_cases):
        ph = make_phantom(shape=shape, n_lesions=3, seed=i)
        img = normalise(ph.hu)
        cands = [les.centre_zyx for les in ph.lesions] + ([(1, 2, shape[2] - 2)] if border_candidate else [])
        # Supervoxels: 8x8x8 blocks inside the body, 0 outside.
        zz, yy, xx = np.indices(shape)
        sv = (1 + zz // 8 * 10000 + yy // 8 * 100 + xx // 8).astype(np.int32)
        sv[ph.hu < -1500] = 0
        case = f"ph-{i:02d}"
        commit_arrays(url, case,
                      {"image": img, "supervoxels": sv, "candidates": np.asarray(cands, np.int32),
                       "candidate_scores": np.linspace(1, 0.5, len(cands)).astype(np.float32)},
                      {"image": {"spacing_zyx": list(ph.spacing_zyx), "origin_zyx": [0, 0, 0],
                                 "intensity_range": [-1024, 3071], "digest": f"img-{i}"},
                       "supervoxels": {"digest": f"sv-{i}"},
                       "candidates": {"crop_size": 32, "source": "slic", "digest": f"cand-{i}"},
                       "candidate_scores": {"digest": f"cand-{i}"}},
                      {"source": f"phantom seed {i}"})
        out[case] = ph
    return out
