"""tcpc_data: the preprocessing engine (readers, normalisation, SLIC, candidates, U-path shards).

Public functions are imported lazily so ``import tcpc_data`` stays cheap (Numba
and Dask load only when a stage runs). The stage functions live in their packages:
``from tcpc_data.ingest import ingest``, ``from tcpc_data.supervoxels import supervoxels``.
"""
from __future__ import annotations

import importlib

from tcpc_data._numba_cache import ensure_cache_dir

__version__ = "0.1.0"

ensure_cache_dir()  # before any kernel module imports Numba

# public name -> module that defines it
_API = {
    "IngestConfig": "tcpc_data.ingest.stage",
    "slic": "tcpc_data.supervoxels.slic",
    "SupervoxelConfig": "tcpc_data.supervoxels.stage",
    "gaussian": "tcpc_data.supervoxels.smoothing",
    "body_mask": "tcpc_data.supervoxels.bodymask",
    "supervoxel_table": "tcpc_data.supervoxels.candidates",
    "score_table": "tcpc_data.supervoxels.candidates",
    "top_candidates": "tcpc_data.supervoxels.candidates",
    "write_shards": "tcpc_data.shards.pretrain",
    "ShardConfig": "tcpc_data.shards.pretrain",
    "write_labelled_shards": "tcpc_data.shards.labelled",
    "write_npz_shards": "tcpc_data.shards.labelled",
    "LabelledConfig": "tcpc_data.shards.labelled",
    "PATHS": "tcpc_data.shards.cubepaths",
    "path_positions": "tcpc_data.shards.cubepaths",
    "crop": "tcpc_data.crops",
    "preprocess": "tcpc_data.pipeline",
    "inspect_path": "tcpc_data.tools.overview",
    "make_phantom": "tcpc_data.phantom",
    "write_archive": "tcpc_data.phantom",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tcpc_data' has no attribute {name!r}")
