"""Labelled shards for fine-tuning (volume + class), and shards from MedMNIST-layout ``.npz`` files.

Two sources, one sample layout (``docs/design.md``, Shard contract): ``volume.npy`` (S, S, S)
float16 in [−1, 1], ``cls`` (the integer class as decimal text) and ``json``.

- A volume store plus a labels table (``case,z,y,x,label``, centres in world
  mm, a nodule table or LUNA16's ``candidates.csv``; ``tcpc_data.centres``):
  one crop of side S centred on each row's voxel, padded with the background
  value where it passes the volume's border (a thin VOI pads along z; each
  sample's json records the ``padding``). With a ``split`` column, each split
  becomes its own set in ``<out>/<split>`` and no patient may be in two.
- A MedMNIST-layout ``.npz`` (``train_images``, ``train_labels``, ``val_*``,
  ``test_*``; images (N, S, S, S) uint8 0..255 or float 0..1): each image is
  the volume, mapped to [−1, 1]; each official split becomes its own shard
  set in ``<out>/<split>``. With ``task='pretrain'`` the training images
  (labels unused) are cut into path samples instead (``tcpc_data.shards.pretrain``).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import field
from pathlib import Path

import numpy as np

from tcpc_data.centres import (CentreRow, check_patient_splits, match_cases, parse_split_as, read_centres,
                               rename_splits)
from tcpc_data.crops import crop, crop_padding
from tcpc_data.digest import digest, files_digest
from tcpc_data.outputs import claim_dir
from tcpc_data.runner import RunReport
from tcpc_data.shards.manifest import SPLITS
from tcpc_data.shards.shardset import build_shard_set, encode_json
from tcpc_data.shards.tario import Sample, encode_npy
from tcpc_data.shards.pretrain import ShardConfig, crop_samples, pretrain_members, store_location
from tcpc_data.store.volumes import case_digests, open_store
from tcpc_data.volume import index_to_world, stored_geometry, world_to_voxel

_CHUNK = 256  # npz images per task: parts stay small and resumable


@dataclasses.dataclass(frozen=True)
class LabelledConfig:
    """How labelled volumes are cut and packed (saved in the manifest)."""

    crop_size: int = field(default=64, metadata={
        "help": "Crop side S in voxels around each CSV centre (an .npz's images are the volumes)."})
    background: float = field(default=-1.0, metadata={"help": "Value of crop voxels outside the volume."})
    shard_size: int = field(default=1000, metadata={
        "help": "Most samples per shard file (each case's samples fill shards of their own)."})
    name: str = field(default="labelled", metadata={"help": "Shard file prefix: <name>-<case>-<key>-%05d.tar."})
    split_as: str = field(default="", metadata={"help": "Rename the labels CSV's splits before writing, "
                                                 "FROM=TO[,FROM=TO], e.g. 'val=test' (no unit)."})

    def validate(self) -> None:
        for name in ("crop_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        parse_split_as(self.split_as)


def _members(side: int, json_keys: list[str]) -> dict:
    return {"volume.npy": {"shape": [side] * 3, "dtype": "float16"},
            "cls": {"dtype": "int", "encoding": "decimal text"}, "json": {"keys": json_keys}}


def _labelled_sample(key: str, volume: np.ndarray, label: int, meta: dict) -> Sample:
    return key, {"volume.npy": encode_npy(volume.astype(np.float16)), "cls": str(int(label)).encode(),
                 "json": encode_json({**meta, "label": int(label)})}


def read_labels_csv(path: str | os.PathLike, store=None) -> dict[str, list[CentreRow]]:
    """Rows of a labels table grouped by case id (``tcpc_data.centres``: tcpc, nodule or LUNA16 layout).

    Parameters
    ----------
    path
        CSV with a case (``case``/``name``/``seriesuid``), a point (voxels,
        LPS mm z/y/x, or LUNA16 coordX/Y/Z) and a label (``label``,
        ``diagnosis`` or ``class``) column; ``split`` and ``patient_id`` optional.
    store
        Volume store, to match LUNA16 ``seriesuid`` rows to DICOM cases.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Missing columns, a value that is not a number (names the line), no
        rows, or a patient in two splits (names the line).
    """
    rows = read_centres(path, need_label=True, what="labels CSV")
    check_patient_splits(rows, Path(path).name)
    return match_cases(rows, store)


def _store_case_samples(payload) -> list[Sample]:
    url, case, rows, config, csv_name = payload
    root = open_store(url, mode="r")
    if case not in root or "image" not in root[case]:
        lines = ", ".join(str(r.line) for r in rows)
        raise ValueError(f"{csv_name} line {lines}: {rows[0].key!r} names no image in the store {url} "
                         f"(case {case!r})")
    arr = root[case]["image"]
    attrs, shape = dict(arr.attrs), arr.shape
    image = np.asarray(arr[...])
    out = []
    for n, r in enumerate(rows):
        where = f"case {case!r}, {r.where(csv_name)}"
        if r.unit == "mm":
            centre = world_to_voxel(r.zyx, attrs, shape, where)
        else:
            centre = np.rint(r.zyx).astype(np.int64)
            if np.any(centre < 0) or np.any(centre >= np.asarray(shape)):
                raise ValueError(f"{where}: centre {list(r.zyx)} (voxels) lies outside the volume of "
                                 f"shape {list(shape)}")
        vol, box = crop(image, centre, config.crop_size, config.background)
        meta = {"case": case, "centre": centre.tolist(), "crop_box": box.tolist(),
                "padding": crop_padding(box, shape), "row": r.line, "background": config.background,
                "split": r.split, "patient": r.patient}
        # Every sample says where it lies in the patient (LPS mm), whichever unit its row gave
        # (null for a voxel row of a store without geometry attributes).
        meta["world_zyx"] = list(r.zyx) if r.unit == "mm" else _world(centre, attrs, where)
        out.append(_labelled_sample(f"{case}_l{n:05d}", vol, r.label, meta))
    return out


def _world(centre: np.ndarray, attrs, where: str) -> list[float] | None:
    try:
        return index_to_world(centre, *stored_geometry(attrs, where)).tolist()
    except ValueError:
        return None


_JSON_KEYS = ["case", "label", "centre", "crop_box", "padding", "row", "background", "split", "patient",
              "world_zyx"]


def write_labelled_shards(store, labels_csv, out_dir, config: LabelledConfig = LabelledConfig(), *,
                          split: str | None = None, workers: int | None = None,
                          scheduler: str | None = None, progress: bool = False,
                          failures_path: str | os.PathLike | None = None,
                          memory_limit: str | None = None) -> tuple[RunReport, dict]:
    """Crops of side S around labelled centres of a volume store, as one fine-tuning shard set.

    Parameters
    ----------
    store
        Volume store with ``<case>/image``.
    labels_csv
        Labels table (:func:`read_labels_csv`): centres in voxels of ``image``
        or in world mm (mapped through the image's origin, spacing and
        direction), integer labels.
    out_dir
        Shard directory (path or fsspec URL).
    config
        Crop size, background, packing; ``split_as`` renames splits first.
    split
        Only the rows of this split (after renaming); None takes every row.
    workers, scheduler, progress, failures_path, memory_limit
        As in ``tcpc_data.runner.run_cases``; a case missing from the store
        or a centre outside its volume fails that case only, naming the row.

    Returns
    -------
    report, manifest
        Each sample's json records its centre, crop box and ``padding``
        (background voxels before/after the volume on each axis).
    """
    config.validate()
    rows = _selected(labels_csv, store, config, split)
    return _write_rows(store, labels_csv, out_dir, config, rows, split, workers=workers, scheduler=scheduler,
                       progress=progress, failures_path=failures_path, memory_limit=memory_limit)


def write_labelled_splits(store, labels_csv, out_dir, config: LabelledConfig = LabelledConfig(), *,
                          workers: int | None = None, scheduler: str | None = None, progress: bool = False,
                          failures_path: str | os.PathLike | None = None,
                          memory_limit: str | None = None) -> dict[str, tuple[RunReport, dict]]:
    """One labelled shard set per split of a labels table with a ``split`` column, in ``<out>/<split>``.

    Splits are renamed by ``config.split_as`` first (``val=test`` turns the
    nodule table's held-out patients into the ``test`` set that fine-tuning
    reports on; ``train=test,val=test`` scores an external folder as a whole).
    A patient with rows in two splits is refused before anything is written.

    Returns
    -------
    dict
        Split -> (report, manifest), splits in sorted order.
    """
    config.validate()
    rows = _selected(labels_csv, store, config, None)
    splits = sorted({r.split for rs in rows.values() for r in rs if r.split is not None})
    if not splits:
        raise ValueError(f"{labels_csv}: no split column; write one set with write_labelled_shards")
    out = str(out_dir).rstrip("/")
    claim_splits(out, (store, labels_csv))
    results = {}
    for split in splits:
        chosen = {c: [r for r in rs if r.split == split] for c, rs in rows.items()}
        chosen = {c: rs for c, rs in chosen.items() if rs}
        results[split] = _write_rows(
            store, labels_csv, f"{out}/{split}", config, chosen, split, workers=workers, scheduler=scheduler,
            progress=progress, failures_path=None if failures_path is None else f"{failures_path}.{split}",
            memory_limit=memory_limit)
    return results


def _selected(labels_csv, store, config: LabelledConfig, split: str | None) -> dict[str, list[CentreRow]]:
    """Rows by case after renaming splits (then checked by patient), restricted to ``split``."""
    name = Path(labels_csv).name
    rows = read_labels_csv(labels_csv, store)
    if config.split_as:
        rows = {c: rename_splits(rs, config.split_as) for c, rs in rows.items()}
        check_patient_splits([r for rs in rows.values() for r in rs], name)
    if split is not None:
        rows = {c: [r for r in rs if r.split == split] for c, rs in rows.items()}
        rows = {c: rs for c, rs in rows.items() if rs}
        if not rows:
            raise ValueError(f"{labels_csv}: no row of split {split!r}")
    return rows


def _write_rows(store, labels_csv, out_dir, config: LabelledConfig, rows: dict[str, list[CentreRow]],
                split: str | None, **run) -> tuple[RunReport, dict]:
    complete = case_digests(store)  # one concurrent listing, not a read per case
    sample_config = dataclasses.replace(config, shard_size=1, name="x")
    inputs = {c: digest(complete[c]["image"] if c in complete else "absent",
                        [dataclasses.astuple(r) for r in rs], sample_config) for c, rs in rows.items()}
    where = store_location(store)
    payloads = {c: (where, c, rs, config, Path(labels_csv).name) for c, rs in rows.items()}
    classes = sorted({r.label for rs in rows.values() for r in rs})
    extra = {"kind": "finetune", "source": str(store), "labels": str(labels_csv), "classes": classes}
    if split is not None:
        extra["split"] = split
    return build_shard_set("labelled" if split is None else f"labelled {split}", out_dir, name=config.name,
                           shard_size=config.shard_size, config=config, inputs=inputs, payloads=payloads,
                           make_samples=_store_case_samples, members=_members(config.crop_size, _JSON_KEYS),
                           extra=extra, reads=(store, labels_csv), **run)


def labels_have_splits(labels_csv) -> bool:
    """True when the labels table has a ``split`` value on some row (then one set per split is written)."""
    return any(r.split is not None for r in read_centres(labels_csv, need_label=True, what="labels CSV"))


def training_cases(labels_csv, store, split: str = "train", split_as: str = "") -> list[str]:
    """Sorted case ids of a table's rows in ``split`` (after ``split_as`` renaming): the cases a
    pretraining set may use without seeing the held-out patients; labels are not read further."""
    rows = read_centres(labels_csv, what="labels CSV")
    if split_as:
        rows = rename_splits(rows, split_as)
    if not any(r.split is not None for r in rows):
        raise ValueError(f"{labels_csv}: no split column to select split {split!r} from")
    cases = sorted(c for c, rs in match_cases([r for r in rows if r.split == split], store).items())
    if not cases:
        raise ValueError(f"{labels_csv}: no row of split {split!r}")
    return cases


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
        try:
            images, labels = data[keys[0]], data[keys[1]]
        except ValueError as exc:  # object arrays: numpy refuses to unpickle them
            raise ValueError(f"{p}: cannot read {split}_images/{split}_labels: {exc}") from None
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
            reads=(npz,), workers=workers, progress=progress, failures_path=failures_path)}

    loaded = {s: load_npz_split(npz, s) for s in SPLITS}  # all splits checked before writing any
    claim_splits(out, (npz,))
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
            reads=(npz,), workers=workers, progress=progress,
            failures_path=None if failures_path is None else f"{failures_path}.{split}")
    return results


def claim_splits(out: str, reads: tuple) -> None:
    """Claim ``out`` as a folder of split shard sets (:func:`tcpc_data.outputs.claim_dir`); from
    before marks, a folder of nothing but split folders, failures reports and the ``data`` folder
    an experiment keeps its nodule store in is one."""
    claim_dir(out, "shard-splits", inputs=reads, what="folder of split shard sets",
              legacy=lambda _, names: all(n in SPLITS or n == "data" or n.startswith("failures") for n in names))


def pretrain_config_for(side: int, **fields) -> ShardConfig:
    """A ``ShardConfig`` for whole images of side ``side``: crop = image; cubes of 16 voxels
    when a grid of 3 fits it at the overlap, else 8 (28 → 8; 64 → 16)."""
    overlap = fields.get("overlap", ShardConfig.overlap)
    cube = next((c for c in (16, 8, 4) if c + 2 * max(1, round(c * (1 - overlap))) <= side), side)
    return ShardConfig(**{"crop_size": side, "cube_size": cube, **fields})


def _chunks(split: str, n: int) -> dict[str, tuple[int, int]]:
    return {f"{split}-{a:06d}": (a, min(a + _CHUNK, n)) for a in range(0, n, _CHUNK)}
