"""Inspect any tcpc output: a text summary and a PNG montage of a volume store, one case, or a shard directory.

- store: cases, shapes, spacing, candidates, digests;
- case (``STORE/<case>``): every array's shape, dtype, value range and
  attributes, and the best candidates; the montage shows an axial and a
  coronal slice through the best candidate with supervoxel boundaries and
  candidate crop boxes;
- a split directory (``train``, ``val``, ``test`` shard sets): each one;
- shard directory (``manifest.json``): config, digest, per-shard counts and
  one sample's members; the montage lays a pretraining sample's cubes out at
  their grid positions with the path order drawn (target in red), or shows a
  labelled volume's three central slices.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tcpc_data.digest import to_json
from tcpc_data.shards.manifest import MANIFEST, SPLITS, describe, find_manifest
from tcpc_data.shards.tario import read_npy, tar_samples
from tcpc_data.store.volumes import open_store
from tcpc_data.urls import filesystem, is_local, join

_MAX_LINES = 40  # cases or candidates listed before "... and N more"


def _kind(path: str) -> str:
    fs, root = filesystem(path)
    if not fs.exists(root):
        raise FileNotFoundError(f"nothing to inspect at {path}")
    if fs.exists(join(root, MANIFEST)) or (fs.isdir(root) and fs.glob(join(root, "*.tar"))):
        return "shards"
    if fs.isdir(root) and any(fs.exists(join(root, s, MANIFEST)) for s in SPLITS):
        return "splits"
    if is_local(path) and not fs.exists(join(root, "zarr.json")):
        raise ValueError(f"{path} is neither a volume store, a case of one, nor a shard directory "
                         "(no zarr.json or manifest.json)")
    import zarr
    node = zarr.open_group(str(path), mode="r", zarr_format=3)
    return "case" if "image" in node else "store"


def inspect_path(path: str | os.PathLike, *, png: str | os.PathLike | None = None,
                 sample: int = 0) -> str:
    """Summarise a volume store, a case group or a shard directory; optionally render a montage.

    Parameters
    ----------
    path
        Store root, ``STORE/<case>``, or a shard directory.
    png
        Write a montage here: for a store, of its first case; for shards, of
        sample number ``sample`` (in shard order).
    sample
        Which sample of a shard directory to show.

    Returns
    -------
    str
        The text summary (several lines).
    """
    path = str(path).rstrip("/")
    kind = _kind(path)
    if kind == "splits":  # <out>/train, /val, /test of a labelled .npz
        fs, root = filesystem(path)
        texts = [_shards_text(join(path, s), 0)[0] for s in SPLITS if fs.exists(join(root, s, MANIFEST))]
        if png is not None:
            inspect_path(join(path, "train"), png=png, sample=sample)
        return "\n".join(texts)
    if kind == "shards":
        text, record = _shards_text(path, sample)
        if png is not None:
            _shard_montage(record, png)
        return text
    if kind == "store":
        text, first = _store_text(path)
        if png is not None:
            if first is None:
                raise ValueError(f"{path} has no case to draw")
            _case_montage(open_store(path, "r")[first], first, png)
        return text
    import zarr
    grp = zarr.open_group(path, mode="r", zarr_format=3)
    name = path.rstrip("/").rsplit("/", 1)[-1]
    text = _case_text(grp, name)
    if png is not None:
        _case_montage(grp, name, png)
    return text


def _fmt_attrs(attrs) -> str:
    return to_json({k: v for k, v in dict(attrs).items() if k != "table"})


def _store_text(url: str) -> tuple[str, str | None]:
    root = open_store(url, "r")
    cases = sorted(name for name, _ in root.groups())
    lines = [f"volume store {url}: {len(cases)} case(s)"]
    for cid in cases[:_MAX_LINES]:
        grp = root[cid]
        parts = [cid]
        if "image" in grp:
            im = grp["image"]
            sp = im.attrs.get("spacing_zyx")
            parts.append(f"image {tuple(im.shape)} {im.dtype} spacing {sp} mm "
                         f"digest {str(im.attrs.get('digest', 'INCOMPLETE'))[:12]}")
        for name in ("mask", "supervoxels", "candidates"):
            if name in grp:
                parts.append(f"{name} {tuple(grp[name].shape)}"
                             + ("" if grp[name].attrs.get("digest") else " INCOMPLETE"))
        lines.append("  " + " · ".join(parts))
    if len(cases) > _MAX_LINES:
        lines.append(f"  ... and {len(cases) - _MAX_LINES} more")
    return "\n".join(lines), (cases[0] if cases else None)


def _case_text(grp, name: str) -> str:
    from tcpc_data.ingest.normalise import hu_rounding  # here: its module loads Numba, which inspect rarely needs

    lines = [f"case {name}" + (f" attrs {_fmt_attrs(grp.attrs)}" if dict(grp.attrs) else "")]
    for aname, arr in sorted(grp.arrays(), key=lambda kv: kv[0]):
        data = np.asarray(arr[...])
        rng = f"[{data.min():.4g}, {data.max():.4g}]" if data.size else "[]"
        extra = f", {len(np.unique(data)) - (1 if (data == 0).any() else 0)} labels" if aname == "supervoxels" else ""
        if aname == "image" and "intensity_range" in arr.attrs and arr.dtype in (np.float16, np.float32):
            extra = f" (HU to within {hu_rounding(arr.attrs['intensity_range'], arr.dtype):.2g})"
        lines.append(f"  {aname}: {tuple(arr.shape)} {arr.dtype} range {rng}{extra}")
        lines.append(f"    attrs {_fmt_attrs(arr.attrs)}")
    if "candidates" in grp:
        cands = np.asarray(grp["candidates"][...])
        scores = np.asarray(grp["candidate_scores"][...]) if "candidate_scores" in grp else None
        lines.append("  candidates (z, y, x), best first:")
        for i, c in enumerate(cands[:10]):
            s = f" score {scores[i]:.4g}" if scores is not None and i < len(scores) else ""
            lines.append(f"    {i}: {tuple(int(v) for v in c)}{s}")
        if len(cands) > 10:
            lines.append(f"    ... and {len(cands) - 10} more")
    return "\n".join(lines)


def _decode(members: dict[str, bytes]) -> dict:
    out = {}
    for ext, data in members.items():
        if ext.endswith("npy"):
            out[ext] = read_npy(data)
        elif ext == "json":
            out[ext] = json.loads(data)
        elif ext == "cls":
            out[ext] = int(data)
        else:
            out[ext] = data
    return out


def _nth_sample(d: str, shards: list[str], n: int) -> tuple[str, dict]:
    seen = 0
    for name in shards:
        for key, members in tar_samples(join(d, name)):
            if seen == n:
                return key, _decode(members)
            seen += 1
    raise ValueError(f"{d} has {seen} samples; sample {n} does not exist")


def _shards_text(d: str, sample: int) -> tuple[str, dict]:
    fs, root = filesystem(d)
    m = find_manifest(d)
    if m is None:
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(join(root, "*.tar")))
        lines = [f"shard directory {d}: {len(names)} tar file(s), NO manifest.json (incomplete run?)"]
    else:
        names = [s["name"] for s in m["shards"]]
        lines = [f"shard directory {d}: {m['kind']} set, format {m['format']} v{m['format_version']}",
                 f"  {describe(m)}; failed cases: {m['failed_cases'] or 'none'}",
                 f"  digest {m['digest']}", f"  config {to_json(m['config'])}",
                 f"  members {to_json(m['members'])}"]
        for k in ("source", "labels", "split", "intensity_map", "classes"):
            if k in m:
                lines.append(f"  {k}: {m[k]}")
        for s in m["shards"][:_MAX_LINES]:
            lines.append(f"  {s['name']}: {s['samples']} samples")
        if len(m["shards"]) > _MAX_LINES:
            lines.append(f"  ... and {len(m['shards']) - _MAX_LINES} more shards")
        missing = [n for n in names if not fs.exists(join(root, n))]
        if missing:
            lines.append(f"  MISSING shard files: {missing}")
            names = [n for n in names if n not in missing]
    if not names:
        raise ValueError(f"{d} holds no shard files")
    key, rec = _nth_sample(d, names, sample)
    lines.append(f"  sample {sample}: key {key}")
    for ext, v in sorted(rec.items()):
        if isinstance(v, np.ndarray):
            lines.append(f"    {ext}: {v.shape} {v.dtype} range [{v.min():.4g}, {v.max():.4g}]")
        else:
            lines.append(f"    {ext}: {to_json(v) if isinstance(v, dict) else v}")
    rec["__key__"] = key
    return "\n".join(lines), rec


# ---- montages -------------------------------------------------------------------------------

def _figure(ncols: int, nrows: int = 1, size: float = 4.0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    return plt, fig, axes


def _window(data: np.ndarray) -> dict:
    """Display window: the 1st-99th percentile of the data (lung and soft tissue both visible)."""
    finite = data[np.isfinite(data)]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (-1.0, 1.0)
    return {"vmin": float(lo), "vmax": float(hi) if hi > lo else float(lo) + 1e-3}


def _save(plt, fig, png) -> None:
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _case_montage(grp, name: str, png) -> None:
    """Axial and coronal slices through the best candidate: supervoxel boundaries and crop boxes."""
    from matplotlib.patches import Rectangle
    from skimage.segmentation import find_boundaries

    image = np.asarray(grp["image"][...], dtype=np.float32)
    sv = np.asarray(grp["supervoxels"][...]) if "supervoxels" in grp else None
    cands = np.asarray(grp["candidates"][...]) if "candidates" in grp else np.zeros((0, 3), int)
    size = int(grp["candidates"].attrs.get("crop_size", 64)) if "candidates" in grp else 64
    centre = cands[0] if len(cands) else np.array(image.shape) // 2
    spacing = grp["image"].attrs.get("spacing_zyx", [1.0, 1.0, 1.0])
    plt, fig, axes = _figure(2, size=5.0)
    # (axis cut, rows axis, cols axis, title); aspect keeps mm square
    views = [(0, 1, 2, f"axial z={centre[0]}"), (1, 0, 2, f"coronal y={centre[1]}")]
    for ax, (cut, ra, ca, title) in zip(axes[0], views):
        idx = [slice(None)] * 3
        idx[cut] = int(np.clip(centre[cut], 0, image.shape[cut] - 1))
        sl = image[tuple(idx)]
        ax.imshow(sl, cmap="gray", interpolation="nearest", aspect=spacing[ra] / spacing[ca], **_window(sl))
        if sv is not None:
            b = find_boundaries(sv[tuple(idx)], mode="inner")
            overlay = np.zeros(b.shape + (4,), np.float32)
            overlay[b] = (0.1, 0.9, 1.0, 0.4)
            ax.imshow(overlay, interpolation="nearest", aspect=spacing[ra] / spacing[ca])
        for rank, c in enumerate(cands[:_MAX_LINES]):
            if abs(int(c[cut]) - idx[cut]) > size // 2:
                continue  # this crop does not meet the slice
            lo = c - size // 2
            colour = "red" if rank == 0 else "yellow"
            ax.add_patch(Rectangle((lo[ca] - 0.5, lo[ra] - 0.5), size, size, fill=False,
                                   edgecolor=colour, linewidth=1.2))
            ax.text(lo[ca], lo[ra] - 1, str(rank), color=colour, fontsize=8, va="bottom", clip_on=True)
        ax.set_xlim(-0.5, sl.shape[1] - 0.5)  # boxes past the border must not widen the view
        ax.set_ylim(sl.shape[0] - 0.5, -0.5)
        ax.set_title(f"{name}: {title}", fontsize=9)
        ax.set_axis_off()
    fig.suptitle("supervoxel boundaries (cyan), candidate crops (best red, rank labels)", fontsize=9)
    _save(plt, fig, png)


def _shard_montage(rec: dict, png) -> None:
    if "cubes.npy" in rec:
        _path_montage(rec, png)
        return
    if "volume.npy" not in rec:
        raise ValueError(f"sample {rec['__key__']} has neither cubes.npy nor volume.npy")
    vol = rec["volume.npy"].astype(np.float32)
    plt, fig, axes = _figure(3, size=3.5)
    mid = np.array(vol.shape) // 2
    for ax, (cut, title) in zip(axes[0], [(0, "axial"), (1, "coronal"), (2, "sagittal")]):
        idx = [slice(None)] * 3
        idx[cut] = mid[cut]
        ax.imshow(vol[tuple(idx)], cmap="gray", interpolation="nearest", **_window(vol))
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"{rec['__key__']}: class {rec.get('cls')}", fontsize=10)
    _save(plt, fig, png)


def _path_montage(rec: dict, png) -> None:
    """Cubes at their grid positions in the path's plane (one panel per layer), read order drawn."""
    from tcpc_data.shards.cubepaths import PLANES

    cubes, path = rec["cubes.npy"].astype(np.float32), rec["path.npy"].astype(int)
    meta = rec.get("json", {})
    plane = meta.get("plane", "axial")
    ra, ca = PLANES.get(plane, (1, 2))
    normal = 3 - ra - ca
    layers = sorted(set(path[:, normal].tolist()))
    rows = path[:, ra] - path[:, ra].min()
    cols = path[:, ca] - path[:, ca].min()
    nr, nc = rows.max() + 1, cols.max() + 1
    c = cubes.shape[1]
    gap = max(1, c // 8)
    cell = c + gap
    plt, fig, axes = _figure(len(layers), size=1.2 * max(nr, nc) + 1.5)
    for ax, layer in zip(axes[0], layers):
        canvas = np.full((nr * cell + gap, nc * cell + gap), np.nan, np.float32)
        for n, cube in enumerate(cubes):
            if path[n, normal] != layer:
                continue
            # the cube's central slice in the path's plane
            idx = [slice(None)] * 3
            idx[normal] = c // 2
            r0, c0 = gap + rows[n] * cell, gap + cols[n] * cell
            canvas[r0:r0 + c, c0:c0 + c] = cube[tuple(idx)]
        ax.imshow(canvas, cmap="gray", interpolation="nearest", **_window(cubes))
        centres = [(gap + cols[n] * cell + c / 2 - 0.5, gap + rows[n] * cell + c / 2 - 0.5)
                   for n in range(len(path))]
        for n in range(len(path)):
            if path[n, normal] != layer:
                continue
            x, y = centres[n]
            target = n == len(path) - 1
            ax.add_patch(_square(x, y, c, "red" if target else "lime"))
            ax.text(x, y, "T" if target else str(n + 1), color="red" if target else "lime",
                    fontsize=12, ha="center", va="center", fontweight="bold")
        for n in range(len(path) - 2):  # arrows along the support, in reading order
            if path[n, normal] == layer and path[n + 1, normal] == layer:
                (x0, y0), (x1, y1) = centres[n], centres[n + 1]
                ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                            arrowprops=dict(arrowstyle="->", color="orange", lw=1.5, shrinkA=8, shrinkB=8))
        axis_names = "zyx"
        ax.set_title(f"{axis_names[normal]} = {layer}; rows {axis_names[ra]}, cols {axis_names[ca]}",
                     fontsize=8)
        ax.set_axis_off()
    fig.suptitle(f"{rec['__key__']}: {meta.get('kind', '?')} path, plane {plane}, opening "
                 f"{meta.get('opening', '?')}, target {path[-1].tolist()}", fontsize=9)
    _save(plt, fig, png)


def _square(x: float, y: float, c: int, colour: str):
    from matplotlib.patches import Rectangle
    return Rectangle((x - c / 2, y - c / 2), c, c, fill=False, edgecolor=colour, linewidth=1.5)
