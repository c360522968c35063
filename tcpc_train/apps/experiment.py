"""The paper's Table 1 protocol on a labelled set: pretrain, fine-tune, tabulate with intervals.

Rows: a majority-class guess; training from scratch; four self-supervised
pretrainings on the training images without labels — 3D CPC (straight paths),
Rubik's cube and 3D Jigsaw (2×2×2 blocks), TCPC (U paths); an external
initialisation and the cascade external → TCPC → fine-tune. No video weights
(the paper's UCF101 model) can be had offline, so the external init is a
documented stand-in: a network trained supervised on another labelled set
(``external_init``), and every table says so.

Seeds are paired: fine-tuning seed ``seeds[i]`` of every row starts from
pretraining seed ``pretrain_seeds[i % len(pretrain_seeds)]`` of its method,
so two rows differ only in their initialisation. Each cell selects its checkpoint on a
validation subset whose size scales with its label budget
(``max(val_min, round(val_per_label · n_train))``, stratified, seeded), never
on the test split, and is scored on the whole test split; the report gives
ACC, balanced ACC and AUC with 95 % intervals by bootstrap over test patients
and seeds, and a paired test of TCPC against each other row
(:mod:`tcpc_train.evaluation.stats`).

Every piece is a directory under ``out``, and a rerun skips what is finished:

```
out/data/volumes.zarr, splits.csv  a nodule folder ingested (with SLIC candidates of its training VOIs)
                                  and its table with the experiment's splits (see nodule_labelled)
out/labelled/{train,val,test}     labelled shards (from an .npz or a nodule folder; a shard set is used in place)
out/views/v<n>-s<seed>/           train and test linked, val a subset of n samples
out/shards/<path kind>[-c<cube>-o<overlap>]/   pretraining shards from the training images
out/pretrain/<row>-p<seed>/       one pretraining (or supervised stand-in) run per row and seed
out/cells/<row>-f<fraction>-s<seed>/   one fine-tuning run per cell, with predictions.npz
out/grid/c<cube>-o<overlap>-s<seed>/   TCPC cube size x overlap cells (when configured)
out/cells.jsonl, out/results.md, out/fig4_left.png, out/experiment.json
out/grid.jsonl, out/grid.md, out/fig4_right.png   the grid's cells, its table (intervals, paired tests), the heat map
out/report.html                   the experiment on one self-contained page (every run has its own too)
out/external.jsonl                one line per cell scored on an --external folder
out/external-eval/                that folder's labelled test set (and, for a nodule folder, its store)
```
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import itertools
import json
import shutil
import time
import tomllib
from dataclasses import field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tcpc_data.centres import check_patient_splits, read_centres
from tcpc_data.digest import digest, file_sha256
from tcpc_data.ingest.stage import IngestConfig, ingest
from tcpc_data.outputs import claim_dir, has_files
from tcpc_data.pipeline import write_shard_sets
from tcpc_data.shards.labelled import claim_splits, pretrain_config_for, training_cases, write_npz_shards
from tcpc_data.shards.manifest import new_manifest, read_manifest, write_manifest
from tcpc_data.shards.pretrain import ShardConfig
from tcpc_data.shards.tario import write_tar
from tcpc_data.supervoxels.stage import SupervoxelConfig, supervoxels
from tcpc_train.loops.checkpoint import load_checkpoint
from tcpc_train.loops.finetuning import FINETUNE_RUNTIME, FinetuneConfig, finetune, read_labels, stratified_fraction
from tcpc_train.report.html import experiment_report
from tcpc_train.input.loader import (ShardSet, ShardStream, decode_labelled_sample, labelled_splits, make_loader,
                               open_shards, raw_samples, split_or_set)
from tcpc_train.evaluation.metrics import classification_metrics
from tcpc_train.models.encoders import Classifier, build_encoder
from tcpc_train.loops.pretraining import Arch, PretrainConfig, pretrain
from tcpc_train.loops.runtime import RuntimeConfig, autocast, claim_run, resolve_device
from tcpc_train.tasks.registry import TASKS
from tcpc_train.apps.published import MEDMNIST_V2_ADRENAL3D
from tcpc_train.apps.tables import (grid_stats, markdown_table, plot_fig4_left, plot_grid, table_stats)

# row -> (pretraining task, path kind of its shards); None: no self-supervised pretraining. One row
# per task of the registry (tcpc_train.tasks.registry), plus the rows without one and the cascade.
METHODS = {"majority": None, "scratch": None, **{name: (name, t.path_kind) for name, t in TASKS.items()},
           "external": None, "cascade": ("tcpc", TASKS["tcpc"].path_kind)}
LABELS = {"majority": "majority class", "scratch": "train from scratch",
          **{name: t.label for name, t in TASKS.items()}, "external": "external init*",
          "cascade": "external + TCPC*"}
_NEEDS_EXTERNAL = ("external", "cascade")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment (saved as ``experiment.json`` beside its results)."""

    data: str = field(metadata={"help": "Labelled data: a MedMNIST-layout .npz, a labelled shard set "
                                        "(train/, val/, test/), or a folder of images/*.nii.gz + nodules.csv."})
    rows: tuple[str, ...] = field(default=("majority", "scratch", "cpc", "rubik", "jigsaw", "tcpc"),
                                  metadata={"help": f"Table rows, from: {', '.join(METHODS)}."})
    fractions: tuple[float, ...] = field(default=(0.01, 0.1, 1.0),
                                         metadata={"help": "Label fractions of the training split, in (0, 1]."})
    seeds: tuple[int, ...] = field(default=(0, 1, 2, 3, 4), metadata={
        "help": "Fine-tuning seeds (label subset, head init, data order, validation subset)."})
    pretrain_seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={
        "help": "Pretraining seeds; fine-tuning seed i starts from pretraining seed i mod their count."})
    epochs: tuple[int, ...] = field(default=(40, 12, 3), metadata={
        "help": "Fine-tuning epochs per label fraction (same length as fractions)."})
    val_per_label: float = field(default=1.0, metadata={
        "help": "Validation samples per training label for checkpoint selection (samples / label)."})
    val_min: int = field(default=20, metadata={"help": "Floor of the validation subset, in samples."})
    external_init: str | None = field(default=None, metadata={
        "help": "Labelled data (.npz or labelled shard set) a supervised stand-in for external weights is trained on."})
    external_epochs: int = field(default=10, metadata={"help": "Epochs of the supervised stand-in, on all its labels."})
    grid_cube_sizes: tuple[int, ...] = field(default=(), metadata={
        "help": "TCPC cube sides for the Fig. 4 right heat map, in voxels; empty: no grid."})
    grid_overlaps: tuple[float, ...] = field(default=(), metadata={
        "help": "TCPC cube overlaps for the heat map, as fractions of the cube side in [0, 1)."})
    grid_fraction: float = field(default=0.1, metadata={"help": "Label fraction of the heat map's cells."})
    arch: Arch = field(default="resnet18", metadata={"help": "Encoder, shared by every row."})
    width: float = field(default=0.125, metadata={"help": "Encoder channel multiplier."})
    pretrain_steps: int = field(default=300, metadata={"help": "Optimiser steps of each pretraining."})
    pretrain_batch: int = field(default=16, metadata={"help": "Pretraining samples per step."})
    pretrain_lr: float = field(default=1e-3, metadata={"help": "Pretraining peak learning rate."})
    targets_per_crop: int = field(default=2, metadata={"help": "Pretraining samples cut from each training image."})
    finetune_batch: int = field(default=16, metadata={"help": "Fine-tuning samples per step."})
    finetune_lr: float = field(default=1e-3, metadata={"help": "Fine-tuning Adam learning rate."})
    n_boot: int = field(default=1000, metadata={"help": "Bootstrap replicates of the intervals and paired tests."})
    workers: int = field(default=0, metadata={
        "help": "Loader processes (0: in the training process); the data stages use at least one."})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda."})
    # Nodule folders (images/*.nii.gz + nodules.csv). The LIDC VOIs are ~30 mm across but a median
    # 7.5 mm along z: 1 mm voxels, 32-voxel crops (padded along z) and 8-voxel cubes in the axial
    # plane keep a path inside the nodule's slab.
    nodule_spacing_mm: float = field(default=1.0, metadata={
        "help": "Isotropic voxel size the nodule VOIs are resampled to, in mm."})
    nodule_clip_hu: tuple[float, float] = field(default=(-1000.0, 400.0), metadata={
        "help": "HU window mapped onto [-1, 1] for every VOI alike (lung to soft tissue), lo,hi in HU."})
    nodule_crop: int = field(default=32, metadata={
        "help": "Side of the labelled and pretraining crops around a nodule or candidate, in voxels."})
    nodule_cube: int = field(default=8, metadata={"help": "Pretraining cube side on nodule crops, in voxels."})
    nodule_plane: str = field(default="axial", metadata={
        "help": "Plane of the pretraining paths on nodule crops (axial: within the thin slab)."})
    nodule_target_radius: int = field(default=0, metadata={
        "help": "Targets lie within this many grid steps of the crop centre, in cubes (0: the centre cube, "
                "the only layer a thin VOI fills)."})
    nodule_segments: int = field(default=16, metadata={"help": "SLIC supervoxels per VOI (about 1 mL each)."})
    nodule_sigma_mm: float = field(default=1.0, metadata={"help": "Smoothing before SLIC on a VOI, in mm."})
    nodule_top_k: int = field(default=4, metadata={"help": "Pretraining candidates (crop centres) per VOI."})
    nodule_selection_share: float = field(default=0.15, metadata={
        "help": "Share of the training patients set apart (whole patients) for checkpoint selection, in (0, 1)."})
    nodule_split_seed: int = field(default=0, metadata={"help": "Seed of the patients set apart for selection."})

    def validate(self) -> None:
        unknown = [m for m in self.rows if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown rows {unknown}; choose from {', '.join(METHODS)}")
        if len(self.epochs) != len(self.fractions):
            raise ValueError(f"epochs has {len(self.epochs)} entries but fractions has {len(self.fractions)}; "
                             "give one epoch count per label fraction")
        if not all(0 < f <= 1 for f in self.fractions) or not 0 < self.grid_fraction <= 1:
            raise ValueError(f"fractions must lie in (0, 1], got {list(self.fractions)} and {self.grid_fraction}")
        if not self.seeds or not self.pretrain_seeds:
            raise ValueError("seeds and pretrain_seeds must each name at least one seed")
        if self.val_per_label <= 0 or self.val_min < 2:
            raise ValueError(f"val_per_label must be > 0 and val_min >= 2, got {self.val_per_label}, {self.val_min}")
        if bool(self.grid_cube_sizes) != bool(self.grid_overlaps):
            raise ValueError("set both grid_cube_sizes and grid_overlaps for the heat map, or neither")
        if self.grid_cube_sizes and self.grid_fraction not in self.fractions:
            raise ValueError(f"grid_fraction {self.grid_fraction} must be one of fractions {list(self.fractions)} "
                             "(its cells take that fraction's epochs)")
        if any(m in self.rows for m in _NEEDS_EXTERNAL) and not self.external_init:
            raise ValueError("rows external and cascade need external_init (labelled data for the stand-in)")
        _data_kind(self.data)
        if self.external_init:
            _data_kind(self.external_init)
        if not 0 < self.nodule_selection_share < 1:
            raise ValueError(f"nodule_selection_share must lie in (0, 1), got {self.nodule_selection_share}")
        if _data_kind(self.data) == "nodules":  # every pretraining geometry must fit the crops before hours of work
            for kind in {METHODS[m][1] for m in self.rows if METHODS[m]}:
                ShardConfig(**_nodule_shard_fields(self, kind, {})).validate()
            for cube, overlap in itertools.product(self.grid_cube_sizes, self.grid_overlaps):
                ShardConfig(**_nodule_shard_fields(self, "u", {"cube_size": cube, "overlap": overlap})).validate()
        if _data_kind(self.data) == "shards" and any(METHODS[m] for m in self.rows):
            raise ValueError(f"{self.data}: the pretraining rows cut their shards from an .npz set or a nodule "
                             "folder; run the fine-tuning rows (majority, scratch, external) on a shard set")


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which cells of a config one run does (``tcpc experiment --rows/--fractions/--seeds``); empty: all."""

    rows: tuple[str, ...] = field(default=(), metadata={"help": "Only these rows of the config (comma list)."})
    fractions: tuple[float, ...] = field(default=(), metadata={"help": "Only these label fractions (comma list)."})
    seeds: tuple[int, ...] = field(default=(), metadata={"help": "Only these fine-tuning seeds (comma list)."})
    external: str | None = field(default=None, metadata={
        "help": "Score every cell's selected checkpoint on this folder; writes external.jsonl."})


def _data_kind(path: str) -> str:
    """'npz', 'shards' (a labelled set or one split) or 'nodules' (images/*.nii.gz + nodules.csv)."""
    p = Path(path)
    if p.suffix == ".npz" and p.is_file():
        return "npz"
    if (p / "manifest.json").is_file() or (p / "test" / "manifest.json").is_file():
        return "shards"
    if (p / "images").is_dir() and (p / "nodules.csv").is_file():
        return "nodules"
    raise FileNotFoundError(f"{path}: not a .npz file, a labelled shard set or a folder of images/ + nodules.csv")


# Nodule folders (images/*.nii.gz + nodules.csv) go through the tool's normal path, the functions
# behind `tcpc ingest`, `tcpc supervoxels` and `tcpc shards`; the volume store is shared by the
# labelled sets and every pretraining shard set of one experiment.
_HELD_OUT = ("test", "val")  # the first of these a table has is its held-out (test) split


def _nodule_store(config: ExperimentConfig, folder: Path, store: Path, progress: bool) -> Path:
    """Ingest the VOIs of ``folder`` into ``store`` (resampled, fixed HU window); a rerun skips done cases."""
    cfg = IngestConfig(clip=config.nodule_clip_hu, spacing_zyx=(config.nodule_spacing_mm,) * 3, fixed_window=True)
    rep = ingest(folder, store, cfg, workers=max(1, config.workers), progress=progress,
                 failures_path=store.parent / "failures-ingest.jsonl")
    if not rep.done and not rep.skipped:
        first = f"; first: {rep.failures[0]['case']}: {rep.failures[0]['error']}" if rep.failures else ""
        raise ValueError(f"{folder}: no VOI ingested from images/ ({len(rep.failures)} failed{first})")
    return store


def _split_table(src: Path, dst: Path, config: ExperimentConfig, *, external: bool) -> dict[str, list[str]]:
    """Write ``src``'s rows to ``dst`` with the experiment's splits; returns split -> sorted patients.

    The held-out split of the table (``test``, else ``val``) becomes ``test``;
    unless a ``val`` split is left (a table with train / val / test), a seeded share
    ``nodule_selection_share`` of the ``train`` patients (whole patients)
    becomes ``val``, the checkpoint-selection pool. ``external``: every row is
    ``test``. A patient without ``patient_id`` is its own row's ``name``.
    """
    check_patient_splits(read_centres(src, need_label=True, what="nodule table"), src.name)
    with open(src, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = list(reader.fieldnames or ()), list(reader)
    patient = {id(r): r.get("patient_id") or r.get("name") or r.get("seriesuid") for r in rows}
    if external:
        split = {id(r): "test" for r in rows}
    else:
        given = {r.get("split") for r in rows}
        if "train" not in given or not given & set(_HELD_OUT):
            raise ValueError(f"{src}: the split column must name train and val (or test) patients, got "
                             f"{sorted(map(str, given))}; the held-out split is the test set")
        held = next(h for h in _HELD_OUT if h in given)
        split = {id(r): {held: "test"}.get(r.get("split"), r.get("split")) for r in rows}
        if "val" not in split.values():
            train = sorted({patient[id(r)] for r in rows if split[id(r)] == "train"})
            if len(train) < 2:
                raise ValueError(f"{src}: {len(train)} training patient(s); checkpoint selection sets whole "
                                 "training patients apart, so at least 2 are needed")
            n = min(len(train) - 1, max(1, round(config.nodule_selection_share * len(train))))
            chosen = set(np.random.default_rng(config.nodule_split_seed).choice(train, n, replace=False).tolist())
            split = {k: "val" if v == "train" and patient[k] in chosen else v for k, v in split.items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields + ([] if "split" in fields else ["split"]))
        w.writeheader()
        w.writerows({**r, "split": split[id(r)]} for r in rows)
    tmp.replace(dst)
    patients: dict[str, set] = collections.defaultdict(set)
    for r in rows:
        patients[split[id(r)]].add(patient[id(r)])
    return {k: sorted(v) for k, v in sorted(patients.items())}


def nodule_labelled(folder: Path, out: Path, config: ExperimentConfig, store: Path, *,
                     external: bool = False, trained: frozenset = frozenset(), progress: bool = False,
                     log=print) -> Path:
    """The labelled shard set (``out/{train,val,test}``) of a folder of ``images/*.nii.gz`` + ``nodules.csv``.

    The folder is ingested into ``store`` (``nodule_spacing_mm`` voxels, the
    ``nodule_clip_hu`` window mapped onto [-1, 1]), then one crop of side
    ``nodule_crop`` is cut around each row's world centre (padding recorded in
    each sample), one shard set per split, exactly as ``tcpc ingest`` and
    ``tcpc shards --labels`` do.

    Splits, by patient: the table's held-out split (``val`` in the LIDC
    table, which has only train / val) is the **test** set and nothing else
    reads it. Checkpoint selection needs labelled samples that are neither
    test nor training labels: a seeded share ``nodule_selection_share`` of the
    *training* patients is set apart as ``val``, and each cell draws its
    label-scaled validation subset from them (:func:`validation_view`). A
    fixed, patient-level pool is chosen over drawing per cell from the
    training patients a cell leaves unlabelled because at 100 % of the labels
    no such patient is left, and a nodule of a labelled patient would leak
    into selection. The split table is kept as ``<store>/../splits.csv``.

    ``external``: every row of the folder is scored, ``out/test`` only (an
    independent set of patients); a patient in ``trained`` (the training and
    selection patients of the experiment it validates) is refused.

    Returns
    -------
    Path
        ``out``; rows whose case fails (e.g. a centre outside its VOI) are
        logged, the rest are written.
    """
    claim_splits(str(out), (folder,))  # before its store is made in it (the external sets keep it there)
    table = store.parent / "splits.csv"  # a bad table fails before the VOIs are read
    patients = _split_table(folder / "nodules.csv", table, config, external=external)
    if external:
        shared = sorted(set(patients["test"]) & trained)
        if shared:
            raise ValueError(f"{folder}: {len(shared)} patient(s) of this external set are training or selection "
                             f"patients of the experiment (e.g. {shared[0]}); external validation needs others")
    _nodule_store(config, folder, store, progress)
    results = write_shard_sets(str(store), out, labels_csv=table, labelled_fields={"crop_size": config.nodule_crop},
                               workers=max(1, config.workers), progress=progress,
                               failures_path=out / "failures-labelled.jsonl")
    for where, (rep, _) in results.items():
        for f in rep.failures:
            log(f"{where}: left out {f['case']}: {f['error']}")
    return out


def nodule_patients(table: Path, splits: tuple[str, ...]) -> frozenset[str]:
    """Patients of ``splits`` in a split table written by :func:`_split_table`."""
    with open(table, newline="") as f:
        return frozenset(r.get("patient_id") or r.get("name") for r in csv.DictReader(f) if r["split"] in splits)


def nodule_pretrain_shards(folder: Path, out: Path, path_kind: str, geometry: dict, config: ExperimentConfig,
                            store: Path, progress: bool = False) -> Path:
    """Pretraining shards of ``path_kind`` from SLIC candidates inside the training VOIs, written to ``out``.

    Only the table's ``train`` patients are read (those carved out for
    checkpoint selection included: their images are seen without labels;
    test patients never), as ``tcpc shards --labels nodules.csv --task
    pretrain --split train`` does. SLIC runs on those VOIs alone with the
    body threshold at the bottom of the HU scale (a VOI lies inside the lung:
    all of it is tissue). Crops of ``nodule_crop`` pad the thin VOIs along z
    with the background; paths lie in ``nodule_plane`` with the target at the
    crop's centre cube (``nodule_target_radius`` 0), so every cube of a U or
    line lies in the candidate's slab, not in padding above or below it.
    ``geometry`` (cube_size, overlap) overrides the config's cube.
    """
    _nodule_store(config, folder, store, progress)
    table = folder / "nodules.csv"
    cases = training_cases(table, str(store), "train")
    sv = SupervoxelConfig(n_segments=config.nodule_segments, sigma=config.nodule_sigma_mm, top_k=config.nodule_top_k,
                          crop_size=config.nodule_crop, body_threshold_hu=-1024.0)
    supervoxels(str(store), sv, cases=cases, workers=max(1, config.workers), progress=progress,
                failures_path=store.parent / "failures-supervoxels.jsonl")
    write_shard_sets(str(store), out, shard_fields=_nodule_shard_fields(config, path_kind, geometry),
                     labels_csv=table, task="pretrain", split="train", workers=max(1, config.workers),
                     progress=progress)
    return out


def _nodule_shard_fields(config: ExperimentConfig, path_kind: str, geometry: dict) -> dict:
    """The ``ShardConfig`` fields of a nodule pretraining set (``geometry``: cube_size, overlap)."""
    return {"crop_size": config.nodule_crop, "cube_size": config.nodule_cube, "plane": config.nodule_plane,
            "target_radius": config.nodule_target_radius, "path": path_kind, "name": path_kind,
            "targets_per_crop": config.targets_per_crop, **geometry}


def _labelled_dir(src: str, out: Path, progress: bool, config: ExperimentConfig, log=print) -> Path:
    """A labelled shard directory for ``src``: shards written from an .npz or a nodule folder (its
    store in ``out/data``, :func:`nodule_labelled`), a shard set as it is."""
    kind = _data_kind(src)
    if kind == "npz":
        write_npz_shards(src, out, task="finetune", progress=progress)
        return out
    if kind == "nodules":
        return nodule_labelled(Path(src), out, config, out / "data" / "volumes.zarr", progress=progress, log=log)
    return Path(src)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read an experiment TOML file; relative ``data`` and ``external_init`` are relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment config not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}; known: {', '.join(sorted(fields))}")
    if "data" not in raw:
        raise ValueError(f"{path}: set data = the labelled .npz file, shard set or nodule folder")
    for key in ("data", "external_init"):
        if raw.get(key):
            raw[key] = str((path.parent / raw[key]).resolve())
    raw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    cfg = ExperimentConfig(**raw)
    cfg.validate()
    return cfg


def select(config: ExperimentConfig, selection: Selection) -> ExperimentConfig:
    """The config cut to the selected rows, fractions (with their epochs) and seeds.

    Seeds keep their pretraining partner of the full config (paired by position there).
    """
    for name in ("rows", "fractions", "seeds"):
        extra = [v for v in getattr(selection, name) if v not in getattr(config, name)]
        if extra:
            raise ValueError(f"--{name} {extra} not in the config's {name} {list(getattr(config, name))}")
    keep = [i for i, f in enumerate(config.fractions) if not selection.fractions or f in selection.fractions]
    pairs = {s: _pretrain_seed(config, s) for s in config.seeds}
    seeds = tuple(s for s in config.seeds if not selection.seeds or s in selection.seeds)
    return dataclasses.replace(
        config, rows=tuple(r for r in config.rows if not selection.rows or r in selection.rows),
        fractions=tuple(config.fractions[i] for i in keep), epochs=tuple(config.epochs[i] for i in keep),
        seeds=seeds, pretrain_seeds=tuple(pairs[s] for s in seeds))


def _pretrain_seed(config: ExperimentConfig, seed: int) -> int:
    return config.pretrain_seeds[config.seeds.index(seed) % len(config.pretrain_seeds)]


def _saved_config_is(run: Path, cfg) -> bool:
    """Whether ``run/config.json`` holds ``cfg`` (compared as the JSON the runs write)."""
    return json.loads((run / "config.json").read_text()) == json.loads(json.dumps(dataclasses.asdict(cfg)))


def _pretrain_done(run: Path, cfg: PretrainConfig) -> Path | None:
    """The checkpoint of a finished pretraining run with this config, else None."""
    summary = run / "summary.json"
    if summary.exists() and (run / "config.json").exists() and _saved_config_is(run, cfg):
        s = json.loads(summary.read_text())
        if s.get("steps") == cfg.steps:
            return Path(s["checkpoint"])
    return None


def _cell_done(cell: Path, cfg: FinetuneConfig, val_keys: list[str]) -> dict | None:
    """The summary of a finished cell with this config and validation subset; None when it must (re)run.

    A cell left by another config or validation subset is removed, so it
    starts afresh instead of resuming someone else's checkpoint; one of this
    config resumes.
    """
    if not (cell / "config.json").exists():
        return None
    view = cell / "val_keys.json"
    if not _saved_config_is(cell, cfg) or not view.exists() or json.loads(view.read_text()) != val_keys:
        shutil.rmtree(cell)
        return None
    summary = cell / "summary.json"
    return json.loads(summary.read_text()) if summary.exists() else None


def validation_size(n_train: int, n_val: int, val_per_label: float, val_min: int) -> int:
    """Validation samples for a cell with ``n_train`` labels: ``max(val_min, round(val_per_label · n_train))``,
    at most the ``n_val`` there are."""
    return min(n_val, max(val_min, int(round(val_per_label * n_train))))


def _write_subset(src: ShardSet, keys: frozenset, out: Path, per_shard: int = 256) -> None:
    """Write the samples of ``src`` whose key is in ``keys`` as a shard set (tars + manifest)."""
    out.mkdir(parents=True, exist_ok=True)
    samples = [(r["__key__"], {k: v for k, v in r.items() if not k.startswith("__")})
               for r in itertools.chain.from_iterable(map(raw_samples, src.urls)) if r["__key__"] in keys]
    entries = []
    for i in range(0, len(samples), per_shard):
        name = f"val-{i // per_shard:06d}.tar"
        write_tar(out / name, samples[i:i + per_shard])
        entries.append({"name": name, "samples": len(samples[i:i + per_shard]), "sha256": file_sha256(out / name)})
    source = read_manifest(src.root)
    cases = collections.Counter(json.loads(m["json"])["case"] for _, m in samples)
    config = {**src.config, "subset_of": src.digest, "keys": sorted(keys)}
    write_manifest(out, new_manifest(kind=source["kind"], name="val", stage="validation subset", config=config,
                                     digest=digest(config), shard_size=per_shard, members=source["members"],
                                     shards=entries, cases=dict(sorted(cases.items())),
                                     case_digests={c: source["case_digests"].get(c, "") for c in sorted(cases)}))


def validation_view(labelled: Path, out: Path, n_train: int, seed: int,
                    config: ExperimentConfig) -> tuple[Path, list[str]]:
    """A labelled directory whose ``val`` is a seeded, stratified subset sized for ``n_train`` labels.

    ``train`` and ``test`` link to the full splits; the subset is drawn from
    ``val`` only, so checkpoint selection never sees a test sample. Returns
    (directory, sorted validation keys); the full set itself when the subset
    would be all of ``val``.
    """
    splits = labelled_splits(labelled)
    if "val" not in splits:
        raise FileNotFoundError(f"{labelled}/val not found: checkpoint selection needs a validation split")
    labels = read_labels(splits["val"])
    n = validation_size(n_train, len(labels), config.val_per_label, config.val_min)
    if n >= len(labels):
        return labelled, sorted(labels)
    keys = stratified_fraction(labels, n / len(labels), seed)
    view = out / "views" / f"v{n}-s{seed}"
    if not (view / "val" / "manifest.json").exists() or open_shards(view / "val").config.get("keys") != sorted(keys):
        shutil.rmtree(view, ignore_errors=True)
        view.mkdir(parents=True)
        for split in ("train", "test"):
            (view / split).symlink_to(Path(splits[split].root).resolve(), target_is_directory=True)
        _write_subset(splits["val"], keys, view / "val")
    return view, sorted(keys)


class _KeyedVolume:
    """Raw labelled sample -> {volume (1, S, S, S), label, key: (sample key, patient)}.

    The patient is the sample's ``patient_id``, ``patient`` or ``case`` (the
    first its json has with a value: labelled crops from a table without a
    patient column record ``patient: null``), else its key: the unit of the
    bootstrap."""

    def __call__(self, raw: dict, epoch: int) -> dict:
        s = decode_labelled_sample(raw)
        meta = json.loads(raw["json"]) if "json" in raw else {}
        group = next((str(meta[k]) for k in ("patient_id", "patient", "case") if meta.get(k) is not None), s["key"])
        return {"volume": s["volume"][None], "label": np.int64(s["label"]), "key": (s["key"], group)}


@torch.no_grad()
def predict_split(checkpoint: str | Path | None, data: ShardSet, batch_size: int, device: str,
                  constant: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-sample predictions of a classifier checkpoint on one split, with keys and patients.

    ``constant`` (K,) log-probabilities instead of a checkpoint: every sample
    gets them (the majority-class row).

    Returns
    -------
    dict of (N,) arrays ``key``, ``group`` (str), ``labels`` (int) and ``scores`` (N, K) log-probabilities.
    """
    dev = resolve_device(device)
    model = None
    if checkpoint is not None:
        ck = load_checkpoint(checkpoint, map_location=dev)
        model = Classifier(build_encoder(ck["config"]["arch"], ck["config"]["width"]), int(ck["n_classes"]))
        model.load_state_dict(ck["model"])
        model.to(dev).eval()
    stream = ShardStream(data, _KeyedVolume(), batch_size, shuffle_buffer=1, epoch=0, rank=0, world=1)
    keys, groups, labels, scores = [], [], [], []
    for batch in make_loader(stream, 0):
        if model is None:
            scores.append(np.tile(constant, (len(batch["label"]), 1)))
        else:
            with autocast(dev, True):
                logits = model(batch["volume"].to(dev))
            scores.append(F.log_softmax(logits.double(), 1).cpu().numpy())
        keys += [k for k, _ in batch["key"]]
        groups += [g for _, g in batch["key"]]
        labels.append(batch["label"].numpy())
    return {"key": np.array(keys), "group": np.array(groups), "labels": np.concatenate(labels),
            "scores": np.concatenate(scores)}


def _majority_prior(labelled: Path, fraction: float, seed: int) -> tuple[np.ndarray, int]:
    """Log class frequencies of a cell's labelled subset (argmax: its majority class) and its size."""
    train = read_labels(labelled_splits(labelled)["train"])
    keys = stratified_fraction(train, fraction, seed)
    counts = np.bincount([train[k] for k in keys], minlength=max(train.values()) + 1).astype(float)
    with np.errstate(divide="ignore"):
        return np.log(counts / counts.sum()), len(keys)


def _run_cell(labelled: Path, out: Path, cell: Path, fraction: float, seed: int, fcfg: FinetuneConfig | None,
              config: ExperimentConfig, progress: bool) -> tuple[dict, bool]:
    """Fine-tune (``fcfg``; None: the majority-class guess) one cell and save its test predictions.

    Returns (record, whether the cell was found finished).
    """
    splits = labelled_splits(labelled)
    if fcfg is None:
        prior, n_train = _majority_prior(labelled, fraction, seed)
        pred = predict_split(None, splits["test"], config.finetune_batch, "cpu", constant=prior)
        cell.mkdir(parents=True, exist_ok=True)
        np.savez(cell / "predictions.npz", **pred)
        m = classification_metrics(pred["labels"], pred["scores"])
        return {"acc": m["acc"], "balanced_acc": m["balanced_acc"], "auc": m["auc"], "n_train": n_train,
                "n_val": 0, "checkpoint": None}, False
    n_train = len(stratified_fraction(read_labels(splits["train"]), fraction, seed))
    view, val_keys = validation_view(labelled, out, n_train, seed, config)
    s = _cell_done(cell, fcfg, val_keys)
    found = s is not None and (cell / "predictions.npz").exists()
    if s is None:
        claim_run(cell, "finetune-run", (view,), "label_fraction")  # before the view it selects on is saved
        (cell / "val_keys.json").write_text(json.dumps(val_keys))
        s = finetune(view, cell, fcfg, progress=progress)
    if not (cell / "predictions.npz").exists():
        pred = predict_split(s["checkpoint"], splits["test"], config.finetune_batch, config.device)
        np.savez(cell / "predictions.npz", **pred)
    m = s["metrics"]
    return {"acc": m["acc"], "balanced_acc": m["balanced_acc"], "auc": m["auc"], "n_train": s["n_train"],
            "n_val": len(val_keys), "checkpoint": s["checkpoint"]}, found


class _Inits:
    """Encoder initialisations of every (row, pretraining seed), made on first use and kept on disk."""

    def __init__(self, config: ExperimentConfig, out: Path, side: int | None, progress: bool, log):
        self.config, self.out, self.side, self.progress, self.log = config, out, side, progress, log
        self.skipped = 0
        self._done: dict[tuple, str | None] = {}

    def shards(self, path_kind: str, **geometry) -> Path:
        """Pretraining shards of the training images for one path kind (and cube geometry)."""
        name = path_kind + "".join(f"-{k[0]}{round(v * 100) if isinstance(v, float) else v}"
                                   for k, v in sorted(geometry.items()))
        shards = self.out / "shards" / name
        if _data_kind(self.config.data) != "npz":  # validate() let only .npz or a nodule folder through
            return nodule_pretrain_shards(Path(self.config.data), shards, path_kind, geometry, self.config,
                                           self.out / "data" / "volumes.zarr", self.progress)
        cfg = pretrain_config_for(self.side, path=path_kind, targets_per_crop=self.config.targets_per_crop,
                                  name=path_kind, **geometry)
        write_npz_shards(self.config.data, shards, task="pretrain", progress=self.progress, config=cfg)
        return shards

    def _pretrain(self, name: str, task: str, shards: Path, seed: int, init: str | None = None) -> str:
        c = self.config
        pcfg = PretrainConfig(task=task, arch=c.arch, width=c.width, steps=c.pretrain_steps,
                              batch_size=c.pretrain_batch, lr=c.pretrain_lr,
                              runtime=RuntimeConfig(seed=seed, workers=c.workers, device=c.device),
                              checkpoint_every=max(1, c.pretrain_steps // 4), init=init)
        run = self.out / "pretrain" / name
        ck = _pretrain_done(run, pcfg)
        if ck is not None:
            self.skipped += 1
            return str(ck)
        s = pretrain(shards, run, pcfg, resume=True, progress=self.progress)
        self.log(f"pretrained {name}: loss {s['final_loss']:.4f} after {s['steps']} steps "
                 f"(chance {s.get('chance_loss')})")
        return str(s["checkpoint"])

    def _external(self, seed: int) -> str:
        """The supervised stand-in for external weights: all labels of ``external_init``, best on its val."""
        c = self.config
        labelled = _labelled_dir(c.external_init, self.out / "external-data", self.progress, c, self.log)
        fcfg = FinetuneConfig(arch=c.arch, width=c.width, epochs=c.external_epochs, batch_size=c.finetune_batch,
                              lr=c.finetune_lr, label_fraction=1.0,
                              runtime=dataclasses.replace(FINETUNE_RUNTIME, seed=seed, workers=c.workers, device=c.device))
        run = self.out / "pretrain" / f"external-p{seed}"
        s = _cell_done(run, fcfg, []) if (run / "val_keys.json").exists() else None
        if s is not None:
            self.skipped += 1
            return s["checkpoint"]
        claim_run(run, "finetune-run", (labelled,), "label_fraction")
        (run / "val_keys.json").write_text("[]")  # the stand-in selects on all of its own val split
        s = finetune(labelled, run, fcfg, progress=self.progress)
        self.log(f"external stand-in (seed {seed}) on {Path(c.external_init).name}: test ACC "
                 f"{s['metrics']['acc']:.3f} AUC {s['metrics']['auc']}")
        return s["checkpoint"]

    def __call__(self, row: str, seed: int) -> str | None:
        key = (row, seed)
        if key not in self._done:
            if row in ("majority", "scratch"):
                ck = None
            elif row == "external":
                ck = self._external(seed)
            elif row == "cascade":
                ck = self._pretrain(f"cascade-p{seed}", "tcpc", self.shards("u"), seed, self("external", seed))
            else:
                task, path_kind = METHODS[row]
                ck = self._pretrain(f"{row}-p{seed}", task, self.shards(path_kind), seed)
            self._done[key] = ck
        return self._done[key]

    def default_geometry(self) -> tuple[int, float]:
        """(cube side, overlap) of the TCPC row's pretraining shards."""
        if _data_kind(self.config.data) != "npz":
            cfg = ShardConfig(**_nodule_shard_fields(self.config, "u", {}))
        else:
            cfg = pretrain_config_for(self.side, path="u")
        return cfg.cube_size, cfg.overlap

    def grid(self, cube: int, overlap: float, seed: int) -> str:
        """TCPC pretrained with one cube side and overlap (Fig. 4 right)."""
        shards = self.shards("u", cube_size=cube, overlap=overlap)
        return self._pretrain(f"grid-c{cube}-o{round(overlap * 100)}-p{seed}", "tcpc", shards, seed)


def _geometry_name(cube: int, overlap: float) -> str:
    return f"cube {cube}, overlap {overlap:g}"


def _grid_table(cells: list[dict], out: Path, default: tuple[int, float], config: ExperimentConfig) -> str:
    """The heat map's cells as a table with intervals, each geometry tested (paired over seeds)
    against the TCPC row's own geometry, so a colour difference can be read against the noise."""
    against = _geometry_name(*default)
    named = [{**c, "method": _geometry_name(c["cube"], c["overlap"]), "fraction": config.grid_fraction}
             for c in cells]
    names = list(dict.fromkeys(c["method"] for c in named))
    if against not in names:  # the default geometry is not on the grid: intervals only
        against = names[0]
    stats = table_stats(named, out, against=against, n_boot=config.n_boot)
    note = " (the TCPC row's geometry)" if against == _geometry_name(*default) else ""
    return (f"TCPC at {config.grid_fraction * 100:g} % of the labels over cube side x overlap (Fig. 4 right); "
            f"mean [95 % interval by bootstrap over test patients and seeds], paired test against "
            f"{against}{note}.\n\n" + markdown_table(stats, names, [config.grid_fraction], against=against))


def _finetune_config(config: ExperimentConfig, fraction: float, epochs: int, seed: int,
                     init: str | None) -> FinetuneConfig:
    return FinetuneConfig(arch=config.arch, width=config.width, epochs=epochs, batch_size=config.finetune_batch,
                          lr=config.finetune_lr, label_fraction=fraction, init=init,
                          runtime=dataclasses.replace(FINETUNE_RUNTIME, seed=seed, workers=config.workers,
                                                      device=config.device))


def _stand_in_note(config: ExperimentConfig) -> str:
    if not any(r in config.rows for r in _NEEDS_EXTERNAL):
        return ""
    return (f"\n\\* External init is a stand-in: no video weights (the paper's UCF101 model) are available offline, "
            f"so it is the encoder of a network trained supervised for {config.external_epochs} epochs on "
            f"{Path(config.external_init).name} (all its labels); the cascade pretrains TCPC from it, "
            "then fine-tunes.\n")


def _write_cells(out: Path, cells: list[dict]) -> None:
    tmp = out / ".cells.jsonl.tmp"
    tmp.write_text("".join(json.dumps(c) + "\n" for c in cells))
    tmp.replace(out / "cells.jsonl")


# Replicates of a partial table: its intervals are provisional, and a full bootstrap after
# every group of cells would cost minutes per hour of training.
_PARTIAL_BOOT = 200


def _write_results(out: Path, config: ExperimentConfig, cells: list[dict], total: int) -> tuple[dict, str]:
    """Write ``results.md`` for the cells finished so far; returns (stats, table)."""
    rows = [LABELS[m] for m in config.rows]
    n_boot = config.n_boot if len(cells) == total else min(config.n_boot, _PARTIAL_BOOT)
    stats = table_stats(cells, out, n_boot=n_boot)
    reference = MEDMNIST_V2_ADRENAL3D if "adrenal" in Path(config.data).name.lower() else None
    table = markdown_table(stats, rows, list(config.fractions), reference,
                           "MedMNIST v2, Yang et al. 2023, AdrenalMNIST3D test split", against=LABELS["tcpc"])
    header = (f"Test ACC, balanced ACC and AUC on {Path(config.data).name}: mean over fine-tuning seeds "
              f"{list(config.seeds)} (pretraining seeds {sorted(set(config.pretrain_seeds))}, paired), with 95 % "
              f"intervals by bootstrap over test patients and seeds ({n_boot} replicates); "
              f"{config.arch} width {config.width:g}, pretraining {config.pretrain_steps} steps, "
              f"fine-tuning epochs {list(config.epochs)} for fractions {list(config.fractions)}, checkpoint "
              f"selection on max({config.val_min}, {config.val_per_label:g} x labels) validation samples.\n\n")
    if len(cells) < total:
        header += f"Partial: {len(cells)} of {total} cells finished (the run goes on or was stopped).\n\n"
    (out / "results.md").write_text(header + table + _stand_in_note(config))
    return stats, table


def _score_external(folder: str, out: Path, labelled: Path, cells: list[dict], config: ExperimentConfig,
                    log) -> Path:
    """Score every cell's selected checkpoint on ``folder``; one JSON line per cell in ``out/external.jsonl``."""
    if _data_kind(folder) == "nodules":
        ext = out / "external-eval"
        trained = nodule_patients(out / "data" / "splits.csv", ("train", "val")) \
            if _data_kind(config.data) == "nodules" else frozenset()
        src = nodule_labelled(Path(folder), ext, config, ext / "data" / "volumes.zarr", external=True,
                               trained=trained, log=log)
    else:
        src = _labelled_dir(folder, out / "external-eval", False, config, log)
    data = open_shards(split_or_set(src, "test"))
    lines = []
    for c in cells:
        if c["checkpoint"] is None:  # majority: the training subset's class frequencies
            prior, _ = _majority_prior(labelled, c["fraction"], c["seed"])
            pred = predict_split(None, data, config.finetune_batch, "cpu", constant=prior)
        else:
            pred = predict_split(c["checkpoint"], data, config.finetune_batch, config.device)
        m = classification_metrics(pred["labels"], pred["scores"])
        lines.append({"row": c["row"], "fraction": c["fraction"], "seed": c["seed"], "acc": m["acc"],
                      "balanced_acc": m["balanced_acc"], "auc": m["auc"], "n": m["n"], "data": str(data.root)})
    path = out / "external.jsonl"
    tmp = out / ".external.jsonl.tmp"
    tmp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    tmp.replace(path)
    log(f"scored {len(lines)} cells on {data.root} ({data.total} samples): {path}")
    return path


def run_experiment(config: ExperimentConfig, out: str | Path, selection: Selection = Selection(), *,
                   progress: bool = False, log=print) -> dict:
    """Run (or finish) the selected pretrainings and table cells of ``config``; write the report.

    Parameters
    ----------
    config : ExperimentConfig
    out : path
        Experiment directory; finished pieces found there are skipped.
    selection : Selection
        A subset of the cells (rows, fractions, seeds) and an optional
        external folder to score them on. The table covers the selected cells;
        a run without selection afterwards finds them finished.
    progress : bool
        Progress bars of the stages.
    log : callable
        Receives one line per finished piece (``print`` by default).

    Returns
    -------
    dict with ``cells`` (list of records), ``skipped`` (pieces found finished),
    ``table`` (Markdown), ``plots`` (paths), ``external`` (path or None), ``report``
    (the experiment's HTML page, :func:`tcpc_train.report.html.experiment_report`), ``seconds``.
    """
    config.validate()
    run = select(config, selection)
    out = Path(out)
    claim_dir(out, "experiment", inputs=(config.data, config.external_init, selection.external),
              what="experiment directory", legacy=has_files("experiment.json"))
    (out / "experiment.json").write_text(json.dumps({**dataclasses.asdict(config),
                                                     "selection": dataclasses.asdict(selection)}, indent=1))
    t0 = time.perf_counter()
    if _data_kind(config.data) == "nodules":
        labelled = nodule_labelled(Path(config.data), out / "labelled", config, out / "data" / "volumes.zarr",
                                    progress=progress, log=log)
    else:
        labelled = _labelled_dir(config.data, out / "labelled", progress, config, log)
    if any(r in run.rows for r in _NEEDS_EXTERNAL):  # an unusable stand-in set fails now, not hours in
        _labelled_dir(config.external_init, out / "external-data", progress, config, log)
    # the volumes' side S (pretraining shards are only cut from .npz sets, whose manifest records it)
    side = open_shards(Path(labelled) / "train").config.get("crop_size")
    inits = _Inits(config, out, side, progress, log)
    total = len(run.seeds) * len(run.fractions) * len(run.rows)
    cells, skipped = [], 0
    # Seed-major order: a run stopped early still has every row for its first seeds.
    for seed, pseed in zip(run.seeds, run.pretrain_seeds):
        for fraction, epochs in zip(run.fractions, run.epochs):
            for row in run.rows:
                fcfg = None if row == "majority" else _finetune_config(config, fraction, epochs, seed,
                                                                        inits(row, pseed))
                cell = out / "cells" / f"{row}-f{fraction:g}-s{seed}"
                rec, found = _run_cell(labelled, out, cell, fraction, seed, fcfg, config, progress)
                skipped += found
                if not found and fcfg is not None:
                    log(f"{LABELS[row]:>18} {fraction:>5g} seed {seed}: ACC {rec['acc']:.3f} "
                        f"AUC {rec['auc']} ({rec['n_train']} labels, {rec['n_val']} for selection)")
                cells.append({"row": row, "method": LABELS[row], "fraction": fraction, "seed": seed,
                              "pretrain_seed": pseed, **rec, "predictions": str(cell.relative_to(out))})
                _write_cells(out, cells)
            # after every (seed, fraction): a run stopped early keeps its table so far
            stats, table = _write_results(out, run, cells, total)
    plots = [plot_fig4_left(stats, [LABELS[m] for m in run.rows], list(run.fractions), out / "fig4_left.png",
                            title=Path(config.data).stem)]
    if config.grid_cube_sizes and "tcpc" in run.rows:
        plots.append(_run_grid(config, run, out, labelled, inits, progress, log))
    external = _score_external(selection.external, out, labelled, cells, config, log) \
        if selection.external else None
    return {"cells": cells, "skipped": skipped + inits.skipped, "table": table, "plots": [str(p) for p in plots],
            "external": None if external is None else str(external), "report": str(experiment_report(out)),
            "seconds": time.perf_counter() - t0}


def _run_grid(config: ExperimentConfig, run: ExperimentConfig, out: Path, labelled: Path, inits: _Inits,
              progress: bool, log) -> Path:
    """TCPC over cube size x overlap at ``grid_fraction`` (Fig. 4 right): one cell per (cube, overlap, seed)."""
    epochs = config.epochs[config.fractions.index(config.grid_fraction)]
    cells = []
    for cube, overlap in itertools.product(config.grid_cube_sizes, config.grid_overlaps):
        for seed, pseed in zip(run.seeds, run.pretrain_seeds):
            fcfg = _finetune_config(config, config.grid_fraction, epochs, seed, inits.grid(cube, overlap, pseed))
            cell = out / "grid" / f"c{cube}-o{round(overlap * 100)}-s{seed}"
            rec, _ = _run_cell(labelled, out, cell, config.grid_fraction, seed, fcfg, config, progress)
            cells.append({"cube": cube, "overlap": overlap, "seed": seed, **rec,
                          "predictions": str(cell.relative_to(out))})
    (out / "grid.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
    log(f"grid: {len(cells)} TCPC cells over cube sizes {list(config.grid_cube_sizes)} x overlaps "
        f"{list(config.grid_overlaps)}")
    (out / "grid.md").write_text(_grid_table(cells, out, inits.default_geometry(), config))
    return plot_grid(grid_stats(cells), list(config.grid_cube_sizes), list(config.grid_overlaps),
                     out / "fig4_right.png", title=f"TCPC at {config.grid_fraction * 100:g} % of the labels")
