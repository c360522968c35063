"""Supervoxels and lesion candidates: body mask, 3D SLIC, a per-supervoxel table, ranked crop centres.

Modules: ``smoothing`` (Gaussian), ``slic`` (3D SLIC), ``bodymask``,
``candidates`` (table, score, top-K), ``segmetrics`` (EV/UE/BR), ``stage`` (the
stage over a store). Calling the package runs the stage:
``tcpc_data.supervoxels(store, config)`` is :func:`tcpc_data.supervoxels.stage.supervoxels`.
"""
from tcpc_data._stage_package import make_callable

make_callable(__name__)
