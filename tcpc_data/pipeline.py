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
from pathlib import Path

from tcpc_data.ingest.stage import IngestConfig, ingest
from tcpc_data.shards.labelled import LabelledConfig, write_labelled_shards
from tcpc_data.shards.manifest import Manifest, describe
from tcpc_data.runner import RunReport, progress_display
from tcpc_data.shards.pretrain import ShardConfig, write_shards
from tcpc_data.store import list_cases
from tcpc_data.supervoxels.stage import SupervoxelConfig, supervoxels
from tcpc_data.urls import is_local, join, local_path


@dataclasses.dataclass
class PreprocessReport:
    """Per-stage reports, the shard manifest(s), and where everything went."""

    out: str
    stages: dict[str, RunReport]
    manifests: dict[str, Manifest]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.stages.values()) and "shards" in self.manifests

    def summary(self) -> str:
        lines = [r.summary() for r in self.stages.values()]
        for name, m in self.manifests.items():
            lines.append(f"{join(self.out, name)}: {describe(m)}")
        if "shards" not in self.manifests:
            lines.append("no shards written: no case came through ingest and supervoxels")
        return "\n".join(lines)


def preprocess(sources, out, *, ingest_config=None, supervoxel_config=None,
               shard_config: ShardConfig = ShardConfig(), candidates_csv=None, labels_csv=None,
               labelled_config: LabelledConfig | None = None, workers: int | None = None,
               scheduler: str | None = None, progress: bool = False) -> PreprocessReport:
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
    workers, scheduler, progress
        As in ``tcpc_data.runner.run_cases``, for every stage.

    Returns
    -------
    PreprocessReport
    """
    shard_config.validate()  # fail on a bad shard config before hours of ingest
    ingest_config = IngestConfig() if ingest_config is None else ingest_config
    supervoxel_config = SupervoxelConfig() if supervoxel_config is None else supervoxel_config
    if labels_csv is not None and not Path(labels_csv).is_file():
        raise FileNotFoundError(f"labels CSV not found: {labels_csv}")
    out = str(out).rstrip("/")
    if is_local(out):
        local_path(out).mkdir(parents=True, exist_ok=True)
    store = join(out, "volumes.zarr")
    # one live display for the whole command, a line per stage
    display = progress_display() if progress else None
    run = dict(workers=workers, scheduler=scheduler, progress=display or False)
    with display or contextlib.nullcontext():
        return _run_stages(sources, out, store, run, ingest_config, supervoxel_config, shard_config,
                           candidates_csv, labels_csv, labelled_config)


def _run_stages(sources, out, store, run, ingest_config, supervoxel_config, shard_config, candidates_csv,
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
            store, join(out, "shards"), shard_config, failures_path=join(out, "failures-shards.jsonl"), **run)
    if labels_csv is not None:
        lc = labelled_config or LabelledConfig(crop_size=shard_config.crop_size,
                                               background=shard_config.background,
                                               shard_size=shard_config.shard_size)
        stages["labelled"], manifests["labelled"] = write_labelled_shards(
            store, labels_csv, join(out, "labelled"), lc, failures_path=join(out, "failures-labelled.jsonl"),
            **run)
    return PreprocessReport(out, stages, manifests)


def _complete_cases(store: str, require: tuple[str, ...]) -> list[str]:
    """Complete cases of ``store``; none when no case ever reached it (the store was not created)."""
    try:
        return list_cases(store, require=require)
    except FileNotFoundError:
        return []
