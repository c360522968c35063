"""Labelled shards for fine-tuning (volume + class), and shards from MedMNIST-layout ``.npz`` files.

Two sources, one sample layout (``DESIGN.md``): ``volume.npy`` (S, S, S)
float16 in [−1, 1], ``cls`` (the integer class as decimal text) and ``json``.

- A volume store plus a CSV ``case,z,y,x,label``: one crop of side S centred
  on each row's voxel (padded with the background value at the border).
- A MedMNIST-layout ``.npz`` (``train_images``, ``train_labels``, ``val_*``,
  ``test_*``; images (N, S, S, S) uint8 0..255 or float 0..1): each image is
  the volume, mapped to [−1, 1]; each official split becomes its own shard
  set in ``<out>/<split>``. With ``task='pretrain'`` the training images
  (labels unused) are cut into path samples instead (``tcpc_data.shards.pretrain``).
"""
from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np

from tcpc_data.crops import crop
from tcpc_data.digest import digest, files_digest
from tcpc_data.runner import RunReport
from tcpc_data.shards.shardset import build_shard_set, encode_json
from tcpc_data.shards.tario import Sample, encode_npy
from tcpc_data.shards.pretrain import ShardConfig, crop_samples, pretrain_members
from tcpc_data.store import list_cases, open_store, sanitize_case_id

SPLITS = ("train", "val", "test")
_CHUNK = 256  # npz images per task: parts stay small and resumable


@dataclasses.dataclass(frozen=True)
class LabelledConfig:
    """How labelled volumes are cut and packed.

    Attributes
    ----------
    crop_size
        Crop side S in voxels around each CSV centre (ignored for ``.npz``,
        whose images are the volumes).
    background
        Value of crop voxels outside the volume.
    shard_size
        Samples per shard file.
    name
        Shard file prefix.
    """

    crop_size: int = 64
    background: float = -1.0
    shard_size: int = 1000
    name: str = "labelled"

    def validate(self) -> None:
        for field in ("crop_size", "shard_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")


def _members(side: int, json_keys: list[str]) -> dict:
    return {"volume.npy": {"shape": [side] * 3, "dtype": "float16"},
            "cls": {"dtype": "int", "encoding": "decimal text"}, "json": {"keys": json_keys}}


def _labelled_sample(key: str, volume: np.ndarray, label: int, meta: dict) -> Sample:
    return key, {"volume.npy": encode_npy(volume.astype(np.float16)), "cls": str(int(label)).encode(),
                 "json": encode_json({**meta, "label": int(label)})}


def read_labels_csv(path: str | os.PathLike) -> dict[str, list[tuple[int, tuple[int, int, int], int]]]:
    """Rows of a ``case,z,y,x,label`` CSV grouped by sanitised case id: [(line, centre, label)].

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Missing columns, or a value that is not an integer (names the line).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"labels CSV not found: {p}")
    out: dict[str, list] = {}
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"case", "z", "y", "x", "label"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{p}: missing column(s) {sorted(missing)}; need case,z,y,x,label")
        for line, row in enumerate(reader, start=2):
            try:
                centre = tuple(int(row[k]) for k in ("z", "y", "x"))
                label = int(row["label"])
            except (TypeError, ValueError):
                raise ValueError(f"{p} line {line}: z, y, x and label must be integers, got {row}") from None
            out.setdefault(sanitize_case_id(row["case"]), []).append((line, centre, label))
    if not out:
        raise ValueError(f"{p} has no rows")
    return out


def _store_case_samples(payload) -> list[Sample]:
    url, case, rows, config, csv_name = payload
    root = open_store(url, mode="r")
    if case not in root or "image" not in root[case]:
        raise ValueError(f"case {case!r} of {csv_name} has no image in the store {url}")
    image = np.asarray(root[case]["image"][...])
    out = []
    for n, (line, centre, label) in enumerate(rows):
        try:
            vol, box = crop(image, centre, config.crop_size, config.background)
        except ValueError as exc:
            raise ValueError(f"case {case!r}, {csv_name} line {line}: {exc}") from None
        meta = {"case": case, "centre": list(centre), "crop_box": box.tolist(), "row": line,
                "background": config.background}
        out.append(_labelled_sample(f"{case}_l{n:05d}", vol, label, meta))
    return out


def write_labelled_shards(store, labels_csv, out_dir, config: LabelledConfig = LabelledConfig(), *,
                          workers: int | None = None, scheduler: str | None = None,
                          progress: bool = False,
                          failures_path: str | os.PathLike | None = None) -> tuple[RunReport, dict]:
    """Crops of side S around labelled centres of a volume store, as fine-tuning shards.

    Parameters
    ----------
    store
        Volume store with ``<case>/image``.
    labels_csv
        CSV with columns case, z, y, x (voxels of ``image``), label (integer).
    out_dir
        Shard directory (path or fsspec URL).
    config
        Crop size, background, packing.
    workers, scheduler, progress, failures_path
        As in ``tcpc_data.runner.run_cases``; a case missing from the store
        or a centre outside its volume fails that case only.

    Returns
    -------
    report, manifest
    """
    config.validate()
    rows = read_labels_csv(labels_csv)
    root = open_store(store, mode="r")
    complete = set(list_cases(store))
    inputs = {c: digest(root[c]["image"].attrs["digest"] if c in complete else "absent", r,
                        dataclasses.replace(config, shard_size=1, name="x")) for c, r in rows.items()}
    payloads = {c: (str(store), c, r, config, Path(labels_csv).name) for c, r in rows.items()}
    members = _members(config.crop_size, ["case", "label", "centre", "crop_box", "row", "background"])
    classes = sorted({lab for r in rows.values() for _, _, lab in r})
    return build_shard_set("labelled", out_dir, name=config.name, shard_size=config.shard_size,
                           config=config, inputs=inputs, payloads=payloads,
                           make_samples=_store_case_samples, members=members,
                           extra={"kind": "finetune", "source": str(store),
                                  "labels": str(labels_csv), "classes": classes},
                           workers=workers, scheduler=scheduler, progress=progress,
                           failures_path=failures_path)


def to_unit_range(images: np.ndarray, source: str) -> tuple[np.ndarray, str]:
    """Map MedMNIST images to [−1, 1] float32; returns them and how (recorded in the manifest).

    uint8 0..255 → x / 127.5 − 1; float in [0, 1] → 2x − 1. Anything else is
    a ValueError naming ``source``.
    """
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 127.5 - 1.0, "uint8 0..255 -> x / 127.5 - 1"
    if np.issubdtype(images.dtype, np.floating):
        lo, hi = float(images.min()), float(images.max())
        if lo >= 0.0 and hi <= 1.0:
            return images.astype(np.float32) * 2.0 - 1.0, "float 0..1 -> 2 x - 1"
        raise ValueError(f"{source}: float images must lie in [0, 1], found [{lo}, {hi}]")
    raise ValueError(f"{source}: images must be uint8 0..255 or float 0..1, got dtype {images.dtype}")


def load_npz_split(path: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, S, S, S) and labels (N,) int64 of one split of a MedMNIST-layout ``.npz``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"npz file not found: {p}")
    with np.load(p, allow_pickle=False) as data:
        keys = (f"{split}_images", f"{split}_labels")
        missing = [k for k in keys if k not in data.files]
        if missing:
            raise ValueError(f"{p}: no {missing} (MedMNIST layout needs {split}_images and "
                             f"{split}_labels; found {sorted(data.files)})")
        images, labels = data[keys[0]], data[keys[1]]
    if images.ndim == 5 and images.shape[-1] == 1:
        images = images[..., 0]  # (N, S, S, S, 1) channel-last
    if images.ndim != 4 or len(set(images.shape[1:])) != 1:
        raise ValueError(f"{p}: {split}_images must be (N, S, S, S), got {images.shape}")
    labels = np.asarray(labels).reshape(len(labels), -1)
    if labels.shape != (len(images), 1):
        raise ValueError(f"{p}: {split}_labels must be (N,) or (N, 1) with N = {len(images)}, "
                         f"got {labels.shape}")
    return images, labels[:, 0].astype(np.int64)


def _npz_finetune_samples(payload) -> list[Sample]:
    split, start, images, labels = payload
    return [_labelled_sample(f"{split}_{start + i:06d}", img, lab,
                             {"case": f"{split}_{start + i:06d}", "index": start + i, "split": split})
            for i, (img, lab) in enumerate(zip(images, labels))]


def _npz_pretrain_samples(payload) -> list[Sample]:
    split, start, images, config = payload
    out = []
    for i, img in enumerate(images):
        case = f"{split}_{start + i:06d}"
        out += crop_samples(img, config, case, 0, {"index": start + i, "split": split,
                                                  "centre": [img.shape[0] // 2] * 3,
                                                  "crop_box": [[0] * 3, list(img.shape)]})
    return out


def write_npz_shards(npz, out_dir, *, task: str = "finetune", config=None, workers: int | None = 1,
                     progress: bool = False, failures_path: str | os.PathLike | None = None
                     ) -> dict[str, tuple[RunReport, dict]]:
    """Shards from a MedMNIST-layout ``.npz``: labelled split sets, or pretraining path samples.

    Parameters
    ----------
    npz
        File with ``{train,val,test}_images`` (N, S, S, S) and ``*_labels``.
    out_dir
        ``task='finetune'``: one shard set per split in ``<out>/<split>``;
        ``task='pretrain'``: one set in ``<out>`` from the training images.
    task
        'finetune' (``LabelledConfig``; S is the image side) or 'pretrain'
        (``ShardConfig`` whose crop_size must equal S, e.g. 28 with cube 8).
    config
        ``LabelledConfig`` or ``ShardConfig``; None takes the defaults (for
        pretraining, with crop_size = S).
    workers, progress, failures_path
        As in ``run_cases``; work is split into chunks of 256 images.

    Returns
    -------
    dict
        Split (or 'pretrain') -> (report, manifest).
    """
    if task not in ("finetune", "pretrain"):
        raise ValueError(f"task must be 'finetune' or 'pretrain', got {task!r}")
    src = files_digest([npz]) if Path(npz).is_file() else None
    if src is None:
        raise FileNotFoundError(f"npz file not found: {npz}")
    out = str(out_dir).rstrip("/")  # a path or an fsspec URL
    if task == "pretrain":
        images, _ = load_npz_split(npz, "train")
        side = images.shape[1]
        config = pretrain_config_for(side) if config is None else config
        if config.crop_size != side:
            raise ValueError(f"{npz}: images are {side}^3 voxels but crop_size is {config.crop_size}; "
                             f"set crop_size={side}")
        config.validate()
        unit, how = to_unit_range(images, str(npz))
        chunks = _chunks("train", len(unit))
        payloads = {c: ("train", a, unit[a:b], config) for c, (a, b) in chunks.items()}
        inputs = {c: digest(src, a, b, config.sample_config()) for c, (a, b) in chunks.items()}
        return {"pretrain": build_shard_set(
            "shards", out, name=config.name, shard_size=config.shard_size, config=config,
            inputs=inputs, payloads=payloads, make_samples=_npz_pretrain_samples,
            members=pretrain_members(config), extra={"kind": "pretrain", "source": str(npz),
                                             "intensity_map": how},
            workers=workers, progress=progress, failures_path=failures_path)}

    loaded = {s: load_npz_split(npz, s) for s in SPLITS}  # all splits checked before writing any
    side = loaded["train"][0].shape[1]
    # The images are the volumes: record their side as the crop size.
    config = dataclasses.replace(LabelledConfig() if config is None else config, crop_size=side)
    config.validate()
    results = {}
    for split, (images, labels) in loaded.items():
        unit, how = to_unit_range(images, str(npz))
        chunks = _chunks(split, len(unit))
        payloads = {c: (split, a, unit[a:b], labels[a:b]) for c, (a, b) in chunks.items()}
        inputs = {c: digest(src, a, b, dataclasses.replace(config, shard_size=1, name="x"))
                  for c, (a, b) in chunks.items()}
        members = _members(images.shape[1], ["case", "label", "index", "split"])
        results[split] = build_shard_set(
            f"labelled {split}", f"{out}/{split}", name=config.name, shard_size=config.shard_size,
            config=config, inputs=inputs, payloads=payloads, make_samples=_npz_finetune_samples,
            members=members, extra={"kind": "finetune", "split": split, "source": str(npz),
                                    "intensity_map": how, "classes": sorted(set(labels.tolist()))},
            workers=workers, progress=progress,
            failures_path=None if failures_path is None else f"{failures_path}.{split}")
    return results


def pretrain_config_for(side: int, **fields) -> ShardConfig:
    """A ``ShardConfig`` for whole images of side ``side``: crop = image; cubes of 16 voxels
    when a grid of 3 fits it at the overlap, else 8 (28 → 8; 64 → 16)."""
    overlap = fields.get("overlap", ShardConfig.overlap)
    cube = next((c for c in (16, 8, 4) if c + 2 * max(1, round(c * (1 - overlap))) <= side), side)
    return ShardConfig(**{"crop_size": side, "cube_size": cube, **fields})


def _chunks(split: str, n: int) -> dict[str, tuple[int, int]]:
    return {f"{split}-{a:06d}": (a, min(a + _CHUNK, n)) for a in range(0, n, _CHUNK)}
