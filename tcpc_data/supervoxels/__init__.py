"""Supervoxels and lesion candidates: body mask, 3D SLIC, a per-supervoxel table, ranked crop centres.

Modules: ``smoothing`` (Gaussian), ``slic`` (3D SLIC), ``bodymask``,
``candidates`` (table, score, top-K), ``stage`` (the stage over a store). The
stage's function and config, :func:`tcpc_data.supervoxels.stage.supervoxels` and
``SupervoxelConfig``, are also this package's names (``from tcpc_data.supervoxels
import supervoxels``), imported on first use.
"""
from __future__ import annotations

import importlib

__all__ = ["SupervoxelConfig", "supervoxels"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.stage"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
