"""OME-Zarr (NGFF 0.5) metadata on the volume store's case groups.

Every case group is an NGFF image: its ``ome`` attribute holds one
``multiscales`` entry whose single dataset is the case's ``image`` array,
with axes z, y, x in millimetres, ``scale`` = the voxel spacing and
``translation`` = the origin (the world position of voxel 0). tcpc's own
arrays keep their names and places, so its readers are unchanged; an NGFF
reader (napari, ome-zarr-py, ngff-zarr, neuroglancer...) ignores the arrays it
does not know.

Label maps become NGFF label images of the case: ``labels/<name>/0`` with
``image-label`` metadata, for ``supervoxels`` and ``mask``. NGFF needs a label
image in a group of its own, and Zarr v3 has no links, so this is a copy of
the array (SLIC labels compress to about a megabyte per LIDC case). tcpc never
reads the copy: ``supervoxels`` and ``mask`` beside ``image`` stay the arrays
its stages use and check.

:func:`annotate_case` runs after every commit (``tcpc_data.store.commit_arrays``).
A label name is listed in ``labels``'s metadata only after its array is
written, and removed from the list before it is replaced, so an NGFF reader
never opens a half-written label image. A new ``image`` drops the label images
of the old one (a changed grid makes them wrong); the stages that write the
labels write them again.

NGFF 0.5 has scale and translation but no rotation: for an image whose
``direction`` is not the identity, the metadata place the voxel grid axis by
axis (spacing and origin right, axes not turned). The image's ``direction``
attribute stays the full geometry (``docs/design.md``, World coordinates).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import zarr

NGFF_VERSION = "0.5"
AXES = tuple({"name": n, "type": "space", "unit": "millimeter"} for n in ("z", "y", "x"))
DIMENSION_NAMES = ("z", "y", "x")
LABEL_ARRAYS = ("supervoxels", "mask")
IMAGE = "image"
_LEVEL = "0"  # the one resolution level of a label image


def multiscales(path: str, spacing_zyx, origin_zyx, name: str) -> list[dict]:
    """The ``multiscales`` list of an image with one dataset at ``path``.

    Parameters
    ----------
    path
        The dataset's array, relative to the group.
    spacing_zyx, origin_zyx
        Voxel size and world position of voxel (0, 0, 0), in mm, z/y/x order.
    name
        The image's name (the case id).
    """
    if spacing_zyx is None or origin_zyx is None:
        raise ValueError(f"{name}: NGFF needs 3 positive spacings and 3 finite origin values, "
                         f"got spacing {spacing_zyx} and origin {origin_zyx}")
    scale = [float(s) for s in spacing_zyx]
    translation = [float(o) + 0.0 for o in origin_zyx]  # + 0.0: no -0.0 in the JSON
    if len(scale) != 3 or len(translation) != 3 or not all(np.isfinite(scale + translation)) \
            or min(scale) <= 0:
        raise ValueError(f"{name}: NGFF needs 3 positive spacings and 3 finite origin values, "
                         f"got spacing {spacing_zyx} and origin {origin_zyx}")
    return [{"name": name, "axes": [dict(a) for a in AXES],
             "datasets": [{"path": path, "coordinateTransformations": [
                 {"type": "scale", "scale": scale}, {"type": "translation", "translation": translation}]}]}]


def image_attrs(case_id: str, spacing_zyx, origin_zyx) -> dict:
    """The ``ome`` attribute of a case group whose ``image`` array has this geometry."""
    return {"version": NGFF_VERSION, "multiscales": multiscales(IMAGE, spacing_zyx, origin_zyx, case_id)}


def label_attrs(case_id: str, name: str, spacing_zyx, origin_zyx) -> dict:
    """The ``ome`` attribute of the label image ``labels/<name>`` of a case."""
    return {"version": NGFF_VERSION,
            "image-label": {"source": {"image": "../../"}},
            "multiscales": multiscales(_LEVEL, spacing_zyx, origin_zyx, f"{case_id} {name}")}


def annotate_case(case: zarr.Group, arrays: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Mapping] | None = None) -> None:
    """Bring a case group's NGFF metadata up to date after ``arrays`` were committed to it.

    Parameters
    ----------
    case
        The case group, opened writable.
    arrays
        The arrays just committed (name -> data): ``image`` rewrites the image
        metadata and drops the old label images; ``supervoxels`` and ``mask``
        are copied to label images.
    attrs
        Their attributes; a label image's array records its source's ``digest``.
    """
    attrs = attrs or {}
    if IMAGE in arrays:
        _drop_labels(case, LABEL_ARRAYS)
    if IMAGE not in case:
        return  # no geometry yet: the image's commit annotates the case
    geometry = case[IMAGE].attrs
    spacing, origin = geometry.get("spacing_zyx"), geometry.get("origin_zyx")
    case_id = case.basename
    try:
        ome = image_attrs(case_id, spacing, origin)
    except (TypeError, ValueError):
        # geometry NGFF cannot hold (the stages and tcpc verify report it): the case is no NGFF
        # image, and the commit itself must not fail for it
        _drop_labels(case, LABEL_ARRAYS)
        if "ome" in case.attrs:
            del case.attrs["ome"]
        return
    if IMAGE in arrays:
        case.attrs["ome"] = ome
    for name in LABEL_ARRAYS:
        if name in arrays:
            _write_label(case, case_id, name, np.asarray(arrays[name]), spacing, origin,
                         attrs.get(name, {}).get("digest"))


def _labels_group(case: zarr.Group) -> zarr.Group:
    try:
        return case["labels"]
    except KeyError:
        group = case.create_group("labels")
        group.attrs["ome"] = {"version": NGFF_VERSION, "labels": []}
        return group


def _set_listed(labels: zarr.Group, name: str, listed: bool) -> None:
    ome = dict(labels.attrs.get("ome", {"version": NGFF_VERSION}))
    names = [n for n in ome.get("labels", []) if n != name] + ([name] if listed else [])
    labels.attrs["ome"] = {**ome, "version": NGFF_VERSION, "labels": sorted(names)}


def _drop_labels(case: zarr.Group, names) -> None:
    if "labels" not in case:
        return
    labels = case["labels"]
    for name in names:
        if name in labels:
            _set_listed(labels, name, False)  # unlist first: a crash leaves it absent, not stale
            del labels[name]


def _write_label(case: zarr.Group, case_id: str, name: str, data: np.ndarray, spacing, origin,
                 digest: str | None) -> None:
    from tcpc_data.store import _COMPRESSORS, _chunks_for

    if data.ndim != 3:
        raise ValueError(f"{case_id}: label map {name!r} must be 3-D (z, y, x), got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"{case_id}: label map {name!r} must hold integers, got {data.dtype}")
    if data.size and data.min() >= 0:  # the smallest unsigned type: SLIC labels fit 16 bits, writing in half the time
        top = int(data.max())
        data = data.astype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32, copy=False)
    labels = _labels_group(case)
    _drop_labels(case, (name,))
    group = labels.create_group(name)
    chunks = _chunks_for(data.shape)
    shards = tuple(-(-s // c) * c for s, c in zip(data.shape, chunks))  # one file, like the store's arrays
    arr = group.create_array(_LEVEL, shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards,
                             compressors=_COMPRESSORS, dimension_names=DIMENSION_NAMES)
    arr[...] = data
    if digest is not None:
        arr.attrs["digest"] = digest
    group.attrs["ome"] = label_attrs(case_id, name, spacing, origin)
    _set_listed(labels, name, True)  # last: the label image is complete
