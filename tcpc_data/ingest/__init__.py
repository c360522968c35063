"""Ingest: CT sources (DICOM series, NIfTI, MetaImage, NRRD, NumPy) -> normalised volumes in a Zarr store.

Modules, in the order data flows through them: ``discover`` (find cases),
``dicom`` and ``readers`` (read one case), ``resample`` (regular grid),
``normalise`` (HU window, [-1, 1]), ``stage`` (the stage over many cases).
Calling the package runs the stage: ``tcpc_data.ingest(sources, out, config)``
is :func:`tcpc_data.ingest.stage.ingest`.
"""
from tcpc_data._stage_package import make_callable

make_callable(__name__)
