"""Ingest: CT sources (DICOM series, NIfTI, MetaImage, NRRD, NumPy) -> normalised volumes in a Zarr store.

Modules, in the order data flows through them: ``discover`` (find cases),
``dicom`` and ``readers`` (read one case), ``resample`` (regular grid),
``normalise`` (HU window, [-1, 1]), ``stage`` (the stage over many cases).
The stage's function and config, :func:`tcpc_data.ingest.stage.ingest` and
``IngestConfig``, are also this package's names (``from tcpc_data.ingest import
ingest``), imported on first use so that importing a reader loads no Dask.
"""
from __future__ import annotations

import importlib

__all__ = ["IngestConfig", "ingest"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.stage"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
