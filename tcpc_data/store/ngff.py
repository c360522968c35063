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

:func:`before_commit` and :func:`after_commit` run around every commit
(``tcpc_data.store.volumes.commit_arrays``). On an existing case the metadata and the
label copies are written before the arrays' completion markers, so a kill
leaves them ahead of the arrays, never behind: the rerun that redoes the
arrays writes them again. A new case gets its ``ome`` attribute inside the
atomic commit and its label copies just after; every later commit of the case
also restores what a kill left missing. Only complete arrays (with a
``digest``) get a copy, which records that digest. A label name is listed in
``labels``'s metadata only after its copy is written, and removed from the list
before it is replaced, so an NGFF reader never opens a half-written label
image. A new ``image`` drops the label images of the old one (a changed grid
makes them wrong); the stages that write the labels write them again.

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


def before_commit(root: zarr.Group, case_id: str, arrays: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Mapping]) -> dict:
    """NGFF metadata ahead of a commit of ``arrays`` to case ``case_id``; returns case attributes for it.

    An existing case gets its metadata and label copies now, before the
    arrays' completion markers: a kill in between leaves them ahead of the
    arrays, and the rerun that redoes the arrays writes them again. A new
    case gets its ``ome`` attribute inside the commit (returned here), so it
    appears with the case; its label copies follow (:func:`after_commit`).

    Parameters
    ----------
    root
        The store's root group, writable.
    case_id
        The case.
    arrays, attrs
        What ``tcpc_data.store.volumes.commit_arrays`` is about to commit: name -> data and
        name -> attributes (``image``'s hold ``spacing_zyx`` and ``origin_zyx``).
    """
    if case_id not in root:
        ome = _image_ome(case_id, attrs.get(IMAGE, {})) if IMAGE in arrays else None
        return {"ome": ome} if ome else {}
    case = root[case_id]
    if IMAGE in arrays:
        _drop_labels(case, LABEL_ARRAYS)  # a new grid makes them wrong; their stages write them again
        geometry = attrs.get(IMAGE, {})
    elif IMAGE in case:
        geometry = case[IMAGE].attrs
    else:
        return {}
    complete = {n: arrays[n] for n in LABEL_ARRAYS if n in arrays and attrs.get(n, {}).get("digest")}
    _annotate(case, case_id, geometry, complete, attrs, set_image=IMAGE in arrays)
    return {}


def after_commit(case: zarr.Group, arrays: Mapping[str, np.ndarray]) -> None:
    """Complete a case's NGFF metadata after a commit of ``arrays``: a new case's label copies, and
    what a kill after an earlier commit left missing (the image metadata, the copy of a complete
    label map of the image's shape).

    Parameters
    ----------
    case
        The case group, writable.
    arrays
        What was just committed: name -> data.
    """
    try:
        _complete(case, arrays)
    except KeyError:
        # Another process is swapping this case's arrays in (two ingests of one store): its own
        # after_commit, or the case's next commit if it is killed, completes the metadata.
        return


def _complete(case: zarr.Group, arrays: Mapping[str, np.ndarray]) -> None:
    if IMAGE not in case:
        return
    image = case[IMAGE]
    todo, attrs = {}, {}
    for name in LABEL_ARRAYS:
        if name not in case or case[name].shape != image.shape:
            continue
        digest = case[name].attrs.get("digest")
        if digest is None or _copy_digest(case, name) == digest:
            continue  # incomplete (absent to readers), or its copy is current
        if name in arrays:
            todo[name] = arrays[name]  # a new case: before_commit could not write it
        elif IMAGE not in arrays:  # (a new image's label maps are redone by their stages)
            todo[name] = case[name][...]  # a kill after its commit left no copy: repair it now
        attrs[name] = {"digest": digest}
    _annotate(case, case.basename, image.attrs, todo, attrs, set_image=True)


def _image_ome(case_id: str, geometry) -> dict | None:
    """The case's ``ome`` attribute, or None for geometry NGFF cannot hold (the stages report it)."""
    try:
        return image_attrs(case_id, geometry.get("spacing_zyx"), geometry.get("origin_zyx"))
    except (TypeError, ValueError):
        return None


def _copy_digest(case: zarr.Group, name: str) -> str | None:
    """The digest recorded by the listed label copy of ``name``, or None without one."""
    if "labels" not in case or name not in case["labels"].attrs.get("ome", {}).get("labels", []):
        return None
    try:
        return case["labels"][name][_LEVEL].attrs.get("digest")
    except KeyError:
        return None


def _annotate(case: zarr.Group, case_id: str, geometry, labels: Mapping[str, np.ndarray],
              attrs: Mapping[str, Mapping], *, set_image: bool) -> None:
    """Write the image metadata (``set_image``) and the label copies ``labels`` on ``geometry``."""
    ome = _image_ome(case_id, geometry)
    if ome is None:  # no NGFF image; the commit itself must not fail for it
        _drop_labels(case, LABEL_ARRAYS)
        if "ome" in case.attrs:
            del case.attrs["ome"]
        return
    if set_image and case.attrs.get("ome") != ome:
        case.attrs["ome"] = ome
    spacing, origin = geometry["spacing_zyx"], geometry["origin_zyx"]
    for name, data in labels.items():
        data = np.asarray(data)
        if data.ndim == 3 and np.issubdtype(data.dtype, np.integer):  # else no label image, never an error
            _write_label(case, case_id, name, data, spacing, origin, attrs.get(name, {}).get("digest"))


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
    from tcpc_data.store.volumes import _COMPRESSORS, _chunks_for

    if data.size and data.min() >= 0:  # the smallest unsigned type: LIDC's SLIC labels take 2.8 MB, not 3.2
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
