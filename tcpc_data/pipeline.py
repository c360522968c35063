"""One-command preprocessing: ingest → supervoxels (+ candidates) → shards, into one output directory.

Layout of ``out``::

    volumes.zarr/            normalised images, supervoxels, candidates
    shards/                  pretraining path samples + manifest.json
    labelled/                labelled crops (only with a labels CSV)
    failures-<stage>.jsonl   one record per failed case and stage

Each stage skips the cases whose digests match, so a rerun after a crash or
with one stage's config changed redoes only what changed. A case that fails
in one stage is absent from the later ones; the report says where.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path

from tcpc_data.ingest.stage import IngestConfig, ingest
from tcpc_data.outputs import claim_dir
from tcpc_data.shards.labelled import (LabelledConfig, labels_have_splits, load_npz_split, pretrain_config_for,
                                       training_cases, write_labelled_shards, write_labelled_splits, write_npz_shards)
from tcpc_data.shards.manifest import Manifest, describe
from tcpc_data.runner import RunReport, progress_display
from tcpc_data.shards.pretrain import ShardConfig, write_shards
from tcpc_data.store.volumes import list_cases
from tcpc_data.supervoxels.stage import SupervoxelConfig, supervoxels
from tcpc_data.urls import is_local, is_remote, join, local_path


@dataclasses.dataclass
class PreprocessReport:
    """Per-stage reports, the shard manifest(s), and where everything went."""

    out: str
    stages: dict[str, RunReport]
    manifests: dict[str, Manifest]
    # wall seconds: "start-up" (process start to the call; None off Linux) and "total" (the call)
    seconds: dict = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.stages.values()) and "shards" in self.manifests

    def summary(self) -> str:
        lines = [r.summary() for r in self.stages.values()]
        for name, m in self.manifests.items():
            lines.append(f"{join(self.out, name)}: {describe(m)}")
        if "shards" not in self.manifests:
            lines.append("no shards written: no case came through ingest and supervoxels")
        lines.append(self.timing())
        return "\n".join(lines)

    def timing(self) -> str:
        """One line: wall seconds of start-up, each stage (the supervoxels stage split into
        its phases, summed over the cases it computed) and the whole run."""
        parts = []
        if self.seconds.get("start-up") is not None:
            parts.append(f"start-up {self.seconds['start-up']:.1f} s")
        for name, rep in self.stages.items():
            part = f"{name} {rep.seconds:.1f} s"
            phases: dict[str, float] = {}
            for res in rep.results.values():
                for k, v in (res.get("seconds", {}) if isinstance(res, dict) else {}).items():
                    phases[k] = phases.get(k, 0.0) + v
            if phases:
                part += " (" + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()) + ")"
            parts.append(part)
        if "total" in self.seconds:
            parts.append(f"total {self.seconds['total']:.1f} s")
        return "time: " + " · ".join(parts)


def preprocess(sources, out, *, ingest_config=None, supervoxel_config=None,
               shard_config: ShardConfig = ShardConfig(), candidates_csv=None, labels_csv=None,
               labelled_config: LabelledConfig | None = None, workers: int | None = None,
               scheduler: str | None = None, memory_limit: str | None = None,
               progress: bool = False) -> PreprocessReport:
    """Run ingest, supervoxels and shards on ``sources``, writing everything under ``out``.

    Parameters
    ----------
    sources
        CT folders, files or fsspec URLs (see ``tcpc_data.ingest.stage.ingest``).
    out
        Output directory (created): a path or an fsspec URL (``s3://bucket/run``), under which
        every output and failures report is written.
    ingest_config, supervoxel_config
        ``IngestConfig`` and ``SupervoxelConfig``; None takes their defaults.
    shard_config
        ``ShardConfig`` of the pretraining shards.
    candidates_csv
        Crop centres from a CSV instead of SLIC's ranking (passed to the
        supervoxels stage).
    labels_csv
        CSV ``case,z,y,x,label``: also write labelled crops to ``out/labelled``.
    labelled_config
        ``LabelledConfig`` of those; None = crop size of ``shard_config``.
    workers, scheduler, memory_limit, progress
        As in ``tcpc_data.runner.run_cases``, for every stage.

    Returns
    -------
    PreprocessReport
    """
    t0, startup = time.perf_counter(), _process_age()
    shard_config.validate()  # fail on a bad shard config before hours of ingest
    ingest_config = IngestConfig() if ingest_config is None else ingest_config
    supervoxel_config = SupervoxelConfig() if supervoxel_config is None else supervoxel_config
    if labels_csv is not None and not Path(labels_csv).is_file():
        raise FileNotFoundError(f"labels CSV not found: {labels_csv}")
    out = str(out).rstrip("/")
    given = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    claim_dir(out, "preprocess", inputs=[*given, candidates_csv, labels_csv], what="preprocess folder",
              legacy=lambda _, names: "volumes.zarr" in names or "shards" in names)  # from before marks
    where = out  # what the workers open: a URL, or an absolute path (they run in directories of their own)
    if is_local(out):
        where = str(local_path(out).resolve())
    store = join(where, "volumes.zarr")
    # one live display for the whole command, a line per stage
    display = progress_display() if progress else None
    run = dict(workers=workers, scheduler=scheduler, memory_limit=memory_limit, progress=display or False)
    with display or contextlib.nullcontext():
        report = _run_stages(sources, out, where, store, run, ingest_config, supervoxel_config, shard_config,
                             candidates_csv, labels_csv, labelled_config)
    report.seconds = {"start-up": startup, "total": time.perf_counter() - t0}
    return report


def _process_age() -> float | None:
    """Seconds since this process started (interpreter, imports, CLI parsing); None without /proc."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _run_stages(sources, out, where, store, run, ingest_config, supervoxel_config, shard_config, candidates_csv,
                labels_csv, labelled_config) -> PreprocessReport:
    stages: dict[str, RunReport] = {}
    manifests: dict[str, Manifest] = {}
    stages["ingest"] = ingest(sources, store, ingest_config, failures_path=join(out, "failures-ingest.jsonl"),
                              **run)
    if not _complete_cases(store, ("image",)):
        return PreprocessReport(out, stages, manifests)
    stages["supervoxels"] = supervoxels(store, supervoxel_config, candidates_csv=candidates_csv,
                                        failures_path=join(out, "failures-supervoxels.jsonl"), **run)
    if _complete_cases(store, ("image", "candidates")):
        stages["shards"], manifests["shards"] = write_shards(
            store, join(where, "shards"), shard_config, failures_path=join(out, "failures-shards.jsonl"), **run)
    if labels_csv is not None:
        lc = labelled_config or LabelledConfig(crop_size=shard_config.crop_size,
                                               background=shard_config.background,
                                               shard_size=shard_config.shard_size)
        stages["labelled"], manifests["labelled"] = write_labelled_shards(
            store, labels_csv, join(where, "labelled"), lc, failures_path=join(out, "failures-labelled.jsonl"),
            **run)
    return PreprocessReport(out, stages, manifests)


def _complete_cases(store: str, require: tuple[str, ...]) -> list[str]:
    """Complete cases of ``store``; none when no case ever reached it (the store was not created)."""
    try:
        return list_cases(store, require=require)
    except FileNotFoundError:
        return []


def write_shard_sets(source, out, *, shard_fields: dict | None = None, labelled_fields: dict | None = None,
                     labels_csv=None, split: str | None = None, task: str | None = None, cases=None,
                     workers: int | None = None,
                     scheduler: str | None = None, memory_limit: str | None = None, progress: bool = False,
                     failures_path=None) -> dict[str, tuple[RunReport, dict]]:
    """Shards from a volume store or a MedMNIST-layout ``.npz``, whichever ``source`` is.

    - ``.npz``, ``task`` 'finetune' (the default): one labelled shard set per
      split in ``out/{train,val,test}``; 'pretrain': path samples of the
      training images in ``out``, whose crop is the image and whose cube side,
      unless given, is the one that tiles it (``pretrain_config_for``).
    - a store with ``labels_csv``: labelled crops in ``out``, or one set per
      split in ``out/<split>`` when the table has a split column and no
      ``split`` is chosen; with ``task`` 'pretrain', path samples of the cases
      of ``split`` (default train) and no labels;
    - a store: path samples around each candidate in ``out``.

    Parameters
    ----------
    source
        Volume store path or URL, or an ``.npz`` file.
    out
        Output directory or fsspec URL.
    shard_fields, labelled_fields
        The ``ShardConfig`` / ``LabelledConfig`` fields that were given; the
        others take their defaults (or, for an ``.npz``, follow its images).
    labels_csv
        Labels table (store only): ``case,z,y,x,label``, world mm, a nodule
        table or LUNA16 ``candidates.csv`` (:mod:`tcpc_data.centres`).
    split
        Only this split's rows of ``labels_csv`` (with ``task`` 'pretrain': its cases).
    task
        'pretrain' or 'finetune'; None: what the inputs say.
    cases
        Case ids of the store to use (pretraining shards); None: all complete cases.
    workers, scheduler, memory_limit, progress
        As in ``tcpc_data.runner.run_cases`` (an ``.npz`` runs in one process
        unless ``workers`` says otherwise: its arrays travel in the payloads).
    failures_path
        JSON-lines report of failed cases; None: ``out/failures-shards.jsonl``
        (``./failures-shards.jsonl`` for a URL).

    Returns
    -------
    dict
        Output location -> (report, manifest), one per shard set written.
    """
    shard_fields, labelled_fields = dict(shard_fields or {}), dict(labelled_fields or {})
    if task not in (None, "pretrain", "finetune"):
        raise ValueError(f"task must be 'pretrain' or 'finetune', got {task!r}")
    out = str(out).rstrip("/")
    if failures_path is None:
        failures_path = "failures-shards.jsonl" if is_remote(out) else join(out, "failures-shards.jsonl")
    run = dict(workers=workers, progress=progress, failures_path=failures_path)
    if str(source).endswith(".npz"):
        if labels_csv is not None or cases is not None or split is not None:
            raise ValueError("a labels CSV and a case list apply to a volume store, not an .npz (so does a split)")
        if scheduler is not None or memory_limit is not None:
            raise ValueError("an .npz is written by local processes (its arrays travel with the tasks): "
                             "drop --scheduler and --memory-limit")
        run["workers"] = workers or 1
        if task == "pretrain":
            side = load_npz_split(source, "train")[0].shape[1]
            config = pretrain_config_for(side, **shard_fields)
            return {out: write_npz_shards(source, out, task="pretrain", config=config, **run)["pretrain"]}
        results = write_npz_shards(source, out, config=LabelledConfig(**labelled_fields), **run)
        return {join(out, split): res for split, res in results.items()}
    run["memory_limit"] = memory_limit
    if labels_csv is not None:
        if task == "pretrain":
            if cases is not None:
                raise ValueError("pretraining shards of a labels table take its --split's cases; drop the case list")
            picked = training_cases(labels_csv, source, split or "train", labelled_fields.get("split_as", ""))
            return {out: write_shards(source, out, ShardConfig(**shard_fields), cases=picked, scheduler=scheduler,
                                      **run)}
        config = LabelledConfig(**labelled_fields)
        if split is None and labels_have_splits(labels_csv):
            return {join(out, s): res for s, res in
                    write_labelled_splits(source, labels_csv, out, config, scheduler=scheduler, **run).items()}
        return {out: write_labelled_shards(source, labels_csv, out, config, split=split, scheduler=scheduler, **run)}
    if split is not None:
        raise ValueError("a split selects rows of a labels table; give one")
    if task == "finetune":
        raise ValueError("fine-tuning shards from a volume store need a labels CSV")
    return {out: write_shards(source, out, ShardConfig(**shard_fields), cases=cases, scheduler=scheduler, **run)}
