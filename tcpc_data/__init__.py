"""tcpc_data: the preprocessing engine (readers, normalisation, SLIC, candidates, U-path shards).

Public functions are imported lazily so ``import tcpc_data`` stays cheap (Numba
and Dask load only when a stage runs).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "ingest": "tcpc_data.ingestion",
    "IngestConfig": "tcpc_data.ingestion",
    "slic": "tcpc_data.slic3d",
    "supervoxels": "tcpc_data.supervoxel_stage",
    "SupervoxelConfig": "tcpc_data.supervoxel_stage",
    "gaussian": "tcpc_data.smoothing",
    "body_mask": "tcpc_data.bodymask",
    "supervoxel_table": "tcpc_data.candidates",
    "score_table": "tcpc_data.candidates",
    "top_candidates": "tcpc_data.candidates",
    "write_shards": "tcpc_data.shards",
    "ShardConfig": "tcpc_data.shards",
    "write_labelled_shards": "tcpc_data.labelled",
    "write_npz_shards": "tcpc_data.labelled",
    "LabelledConfig": "tcpc_data.labelled",
    "PATHS": "tcpc_data.paths",
    "path_positions": "tcpc_data.paths",
    "crop": "tcpc_data.crops",
    "preprocess": "tcpc_data.preprocessing",
    "inspect_path": "tcpc_data.inspect",
    "make_phantom": "tcpc_data.phantom",
    "write_archive": "tcpc_data.phantom",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tcpc_data' has no attribute {name!r}")
