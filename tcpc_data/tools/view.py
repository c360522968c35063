"""A case of a volume store in napari: image, label maps, candidate boxes and nodule centres as layers.

:func:`case_layers` builds napari's layer data tuples ``(data, kwargs, layer_type)``
without importing napari, so what the viewer shows is testable anywhere;
:func:`open_viewer` adds them to a ``napari.Viewer`` (the optional ``napari``
extra). Every layer lies in world millimetres: ``scale`` = spacing and
``translate`` = origin (the case's OME-Zarr metadata, :mod:`tcpc_data.store.ngff`),
or, for an image whose ``direction`` is not the identity, an ``affine`` with
the full geometry (:func:`tcpc_data.volume.index_to_world`).

Layers, bottom to top: ``image`` (windowed in HU), ``supervoxels`` and
``mask`` (label maps, when complete), ``candidates`` (the crop box of each
ranked candidate, drawn on every slice it spans, best first) and ``centres``
(points of a centre table: nodule centres, LUNA16 annotations...).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import field

import numpy as np

from tcpc_data.store.volumes import array_digest, list_cases, open_store
from tcpc_data.volume import stored_geometry, world_to_index

LABEL_LAYERS = ("supervoxels", "mask")


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """What ``tcpc view`` shows."""

    window: tuple[float, float] = field(default=(-1000.0, 400.0), metadata={
        "help": "Display window lo,hi in HU (lung: -1000,400; soft tissue: -160,240).", "metavar": "LO,HI"})
    boxes: int = field(default=8, metadata={
        "help": "Candidate crop boxes drawn, best first (0: none); each is a rectangle on every slice it spans."})
    label_opacity: float = field(default=0.6, metadata={"help": "Opacity of the label map layers."})

    def __post_init__(self):
        lo, hi = (float(v) for v in self.window)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"window must be two finite HU values lo < hi, got {self.window}")
        object.__setattr__(self, "window", (lo, hi))
        if isinstance(self.boxes, bool) or int(self.boxes) != self.boxes or self.boxes < 0:
            raise ValueError(f"boxes must be a whole number >= 0, got {self.boxes!r}")
        if not 0.0 <= float(self.label_opacity) <= 1.0:
            raise ValueError(f"label_opacity must lie in [0, 1], got {self.label_opacity!r}")


def placement(attrs) -> dict:
    """napari transform keywords that put a stored image's voxels at their world position (mm, z/y/x).

    ``scale`` and ``translate`` when the image's axes are the world's (as in
    the OME-Zarr metadata); otherwise one (4, 4) ``affine`` holding spacing,
    direction and origin: ``world = affine @ (z, y, x, 1)``.
    """
    origin, spacing, direction = stored_geometry(attrs, "image")
    if np.allclose(direction, np.eye(3)):
        return {"scale": tuple(float(s) for s in spacing), "translate": tuple(float(o) for o in origin)}
    affine = np.eye(4)
    # world_zyx = origin + (index * spacing) @ direction  (docs/design.md, World coordinates)
    affine[:3, :3] = (np.diag(spacing) @ direction).T
    affine[:3, 3] = origin
    return {"affine": affine}


def _window(attrs, window_hu) -> tuple[float, float]:
    """The HU window in stored values (``value = 2 (hu - lo) / (hi - lo) - 1``)."""
    lo, hi = attrs.get("intensity_range") or (-1.0, 1.0)
    vals = [2.0 * (w - lo) / (hi - lo) - 1.0 for w in window_hu]
    return (max(-1.0, min(vals[0], 1.0 - 1e-3)), min(1.0, max(vals[1], vals[0] + 1e-3)))


def _box_rectangles(cands: np.ndarray, size: int, shape) -> tuple[list[np.ndarray], list[int]]:
    """Each candidate's crop box (``tcpc_data.crops.crop_box``) as one (4, 3) rectangle per slice it spans
    inside the volume, in voxel z/y/x; and the rank of the candidate of each rectangle."""
    rects, ranks = [], []
    for rank, c in enumerate(np.asarray(cands, np.int64)):
        lo = c - size // 2
        # edges on voxel borders: the box covers voxels lo .. lo + size - 1
        y0, x0, y1, x1 = lo[1] - 0.5, lo[2] - 0.5, lo[1] + size - 0.5, lo[2] + size - 0.5
        for z in range(max(0, int(lo[0])), min(int(shape[0]), int(lo[0]) + size)):
            rects.append(np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], np.float64))
            ranks.append(rank)
    return rects, ranks


def case_layers(store, case: str | None = None, config: ViewConfig = ViewConfig(),
                centres_csv: str | os.PathLike | None = None) -> tuple[str, list[tuple]]:
    """napari layer data tuples of one case of a volume store.

    Parameters
    ----------
    store
        Volume store path or URL.
    case
        Case id; None takes the first complete case.
    config
        :class:`ViewConfig`.
    centres_csv
        A centre table (``tcpc_data.centres``: voxels, world mm, nodule table or
        LUNA16); its rows of this case become the ``centres`` points.

    Returns
    -------
    case, layers
        The case shown and ``[(data, kwargs, layer_type), ...]``: ``image``
        (Z, Y, X) zarr array, label maps (Z, Y, X) zarr arrays, ``candidates``
        a list of (4, 3) rectangles in voxels, ``centres`` (N, 3) fractional
        voxels. Every kwargs carries the same world placement.

    Raises
    ------
    ValueError
        The store has no complete case, or not this one; a bad centre table.
    """
    if not isinstance(config, ViewConfig):
        raise TypeError(f"config must be a ViewConfig, got {type(config).__name__}")
    cases = list_cases(store)
    if case is None:
        if not cases:
            raise ValueError(f"{store} holds no complete case (an image with a digest): run tcpc ingest first")
        case = cases[0]
    elif case not in cases:
        shown = ", ".join(cases[:5]) + (" ..." if len(cases) > 5 else "")
        raise ValueError(f"{store} has no complete case {case!r} (cases: {shown or 'none'})")
    group = open_store(store, mode="r")[case]
    image = group["image"]
    attrs = dict(image.attrs)
    where = placement(attrs)
    layers = [(image, {"name": "image", "colormap": "gray", "contrast_limits": _window(attrs, config.window),
                       "metadata": {"case": case, "window_hu": list(config.window)}, **where}, "image")]
    for name in LABEL_LAYERS:
        if array_digest(group, name) and group[name].shape == image.shape:
            layers.append((group[name], {"name": name, "opacity": config.label_opacity, **where}, "labels"))
    if config.boxes and array_digest(group, "candidates"):
        size = int(group["candidates"].attrs.get("crop_size", 64))
        cands = np.asarray(group["candidates"][: config.boxes])
        rects, ranks = _box_rectangles(cands, size, image.shape)
        if rects:
            layers.append((rects, {"name": "candidates", "shape_type": "rectangle", "edge_width": 1.5,
                                   "edge_color": "yellow", "face_color": "transparent",
                                   "features": {"rank": np.asarray(ranks)},
                                   "metadata": {"centres": cands.tolist(), "crop_size": size}, **where},
                           "shapes"))
    if centres_csv is not None:
        points = _centres(store, case, centres_csv, attrs)
        layers.append((points, {"name": "centres", "size": 12.0, "symbol": "ring", "face_color": "red",
                                "border_color": "red", "out_of_slice_display": True, **where}, "points"))
    return case, layers


def _centres(store, case: str, path, attrs) -> np.ndarray:
    """(N, 3) fractional voxel positions of the rows of ``path`` that name ``case``."""
    from tcpc_data.centres import match_cases, read_centres

    rows = match_cases(read_centres(path), store).get(case, [])
    geometry = stored_geometry(attrs, f"case {case}")
    out = [np.asarray(r.zyx, np.float64) if r.unit == "vox" else world_to_index(r.zyx, *geometry)
           for r in rows]
    return np.asarray(out, np.float64).reshape(-1, 3)


def open_viewer(store, case: str | None = None, config: ViewConfig = ViewConfig(),
                centres_csv: str | os.PathLike | None = None, *, show: bool = True):
    """A ``napari.Viewer`` showing :func:`case_layers`, in 2-D on the best candidate's slice.

    Raises
    ------
    ModuleNotFoundError
        napari is not installed (``pip install 'tcpc[napari]'``).
    """
    try:
        import napari
        from napari.layers import Layer
    except ImportError as exc:
        raise ModuleNotFoundError(f"tcpc view needs napari and a Qt binding: pip install 'tcpc[napari]' "
                                  f"({exc})") from None
    case, layers = case_layers(store, case, config, centres_csv)
    viewer = napari.Viewer(title=f"tcpc {case}", show=show)
    for data, kwargs, kind in layers:
        viewer.add_layer(Layer.create(data, kwargs, kind))
    if "supervoxels" in viewer.layers:  # they tile the body: outlines keep the image readable
        viewer.layers["supervoxels"].contour = 1
    image = viewer.layers["image"]
    world = image.data_to_world(_focus(layers, image.data.shape))
    viewer.dims.set_point(0, float(world[0]))  # the slider is in world mm: the focus's slice
    viewer.reset_view()
    return viewer


def _focus(layers, shape) -> np.ndarray:
    """Voxel to open on: the first centre, else the best candidate, else the middle of the volume."""
    for data, kwargs, kind in layers:
        if kwargs["name"] == "centres" and len(data):
            return np.clip(np.asarray(data[0]), 0, np.asarray(shape) - 1)
    for data, kwargs, kind in layers:
        if kwargs["name"] == "candidates":
            return np.asarray(kwargs["metadata"]["centres"][0], np.float64)
    return (np.asarray(shape) - 1) / 2.0
