"""The paper's Table 1 protocol on a labelled MedMNIST-layout set: pretrain, fine-tune, tabulate.

Rows: training from scratch and four self-supervised pretrainings on all
training images without labels — 3D CPC (straight paths), Rubik's cube and 3D
Jigsaw (2×2×2 blocks), TCPC (U paths). Columns: test ACC and AUC after
fine-tuning on a seeded, stratified label fraction, mean ± std over seeds.
Every piece is a directory under ``out``, and a rerun skips what is finished:

```
out/labelled/{train,val,test}     labelled shards (tcpc_data.shards.labelled)
out/shards/{u,straight,block}     pretraining shards from the training images
out/pretrain/<method>/            one pretraining run per method (seed of the config)
out/cells/<method>-f<fraction>-s<seed>/   one fine-tuning run per table cell
out/cells.jsonl, out/results.md, out/auc_vs_fraction.png, out/experiment.json
```
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
import tomllib
from pathlib import Path

from tcpc_data.shards.labelled import pretrain_config_for, write_npz_shards
from tcpc_train.finetuning import FinetuneConfig, finetune
from tcpc_train.pretraining import PretrainConfig, pretrain
from tcpc_train.runtime import RuntimeConfig
from tcpc_train.tasks import TASKS
from tcpc_train.apps.published import MEDMNIST_V2_ADRENAL3D
from tcpc_train.apps.report import aggregate, markdown_table, plot_auc_vs_fraction

# method -> row label: training from scratch, and one row per pretraining task (tcpc_train.tasks).
LABELS = {"scratch": "train from scratch", **{name: task.label for name, task in TASKS.items()}}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment (saved as ``experiment.json`` beside its results).

    npz : MedMNIST-layout file (``{train,val,test}_{images,labels}``)
    methods : rows: ``scratch`` or a task of ``tcpc_train.tasks.TASKS``
    fractions : label fractions in (0, 1]
    seeds : fine-tuning seeds (label subset, head init, data order)
    epochs : fine-tuning epochs per fraction (same length as ``fractions``):
        small fractions need more epochs for the same number of steps
    arch, width : encoder, shared by every row
    pretrain_steps, pretrain_batch, pretrain_lr, pretrain_seed : one pretraining per method
    targets_per_crop : pretraining samples cut from each training image
    finetune_batch, finetune_lr : Adam fine-tuning
    workers : loader processes (0: in the training process)
    device : auto, cpu, cuda
    """

    npz: str
    methods: tuple[str, ...] = ("scratch", "cpc", "rubik", "jigsaw", "tcpc")
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: tuple[int, ...] = (40, 12, 3)
    arch: str = "resnet18"
    width: float = 0.125
    pretrain_steps: int = 300
    pretrain_batch: int = 16
    pretrain_lr: float = 1e-3
    pretrain_seed: int = 0
    targets_per_crop: int = 2
    finetune_batch: int = 16
    finetune_lr: float = 1e-3
    workers: int = 0
    device: str = "auto"

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in LABELS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {', '.join(LABELS)}")
        if len(self.epochs) != len(self.fractions):
            raise ValueError(f"epochs has {len(self.epochs)} entries but fractions has {len(self.fractions)}; "
                             "give one epoch count per label fraction")
        if not all(0 < f <= 1 for f in self.fractions):
            raise ValueError(f"fractions must lie in (0, 1], got {list(self.fractions)}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if not Path(self.npz).is_file():
            raise FileNotFoundError(f"labelled set not found: {self.npz}")


def load_config(path: str | Path) -> ExperimentConfig:
    """Read an experiment TOML file; a relative ``npz`` is relative to the file's folder."""
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
    if "npz" not in raw:
        raise ValueError(f"{path}: set npz = the labelled .npz file")
    raw["npz"] = str((path.parent / raw["npz"]).resolve())
    raw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    cfg = ExperimentConfig(**raw)
    cfg.validate()
    return cfg


def _cell_dir(out: Path, method: str, fraction: float, seed: int) -> Path:
    return out / "cells" / f"{method}-f{fraction:g}-s{seed}"


def _saved_config_is(run: Path, cfg) -> bool:
    """Whether ``run/config.json`` holds ``cfg`` (compared as the JSON the runs write)."""
    return json.loads((run / "config.json").read_text()) == json.loads(json.dumps(dataclasses.asdict(cfg)))


def _write_results(out: Path, config: ExperimentConfig, cells: list[dict]) -> tuple[dict, str]:
    """Write ``cells.jsonl`` and ``results.md`` for the cells finished so far; returns (stats, table)."""
    total = len(config.seeds) * len(config.fractions) * len(config.methods)
    tmp = out / ".cells.jsonl.tmp"
    tmp.write_text("".join(json.dumps(c) + "\n" for c in cells))
    tmp.replace(out / "cells.jsonl")
    stats = aggregate(cells)
    table = markdown_table(stats, [LABELS[m] for m in config.methods], list(config.fractions),
                           MEDMNIST_V2_ADRENAL3D, "MedMNIST v2, Yang et al. 2023, AdrenalMNIST3D test split")
    header = (f"Test ACC / AUC (mean ± std over seeds {list(config.seeds)}) on {Path(config.npz).name}; "
              f"{config.arch} width {config.width:g}, pretraining {config.pretrain_steps} steps, "
              f"fine-tuning epochs {list(config.epochs)} for fractions {list(config.fractions)}.\n\n")
    if len(cells) < total:
        header += f"Partial: {len(cells)} of {total} cells finished (the run goes on or was stopped).\n\n"
    (out / "results.md").write_text(header + table)
    return stats, table


def _pretrain_done(run: Path, cfg: PretrainConfig) -> Path | None:
    """The checkpoint of a finished pretraining run with this config, else None."""
    summary = run / "summary.json"
    if summary.exists() and (run / "config.json").exists() and _saved_config_is(run, cfg):
        s = json.loads(summary.read_text())
        if s.get("steps") == cfg.steps:
            return Path(s["checkpoint"])
    return None


def _cell_done(cell: Path, cfg: FinetuneConfig) -> dict | None:
    """The summary of a finished cell with this config; None when it must (re)run.

    A cell left by another config is removed, so it starts afresh instead of
    resuming someone else's checkpoint; one of this config resumes.
    """
    if not (cell / "config.json").exists():
        return None
    if not _saved_config_is(cell, cfg):
        shutil.rmtree(cell)
        return None
    summary = cell / "summary.json"
    return json.loads(summary.read_text()) if summary.exists() else None


def run_experiment(config: ExperimentConfig, out: str | Path, *, progress: bool = False, log=print) -> dict:
    """Run (or finish) every pretraining and table cell of ``config``; write the report.

    Parameters
    ----------
    config : ExperimentConfig
    out : path
        Experiment directory; finished pieces found there are skipped.
    progress : bool
        Progress bars of the stages.
    log : callable
        Receives one line per finished piece (``print`` by default).

    Returns
    -------
    dict with ``cells`` (list of records), ``skipped`` (pieces found finished),
    ``table`` (Markdown), ``plot`` (path), ``seconds``.
    """
    config.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    t0 = time.perf_counter()
    skipped = 0

    labelled = write_npz_shards(config.npz, out / "labelled", task="finetune", progress=progress)
    side = int(labelled["train"][1]["config"]["crop_size"])  # the volumes' side S
    checkpoints: dict[str, str | None] = {"scratch": None}
    for method in config.methods:
        if method not in TASKS:
            continue
        task, path_kind = method, TASKS[method].path_kind
        shards = out / "shards" / path_kind
        write_npz_shards(config.npz, shards, task="pretrain", progress=progress,
                         config=pretrain_config_for(side, path=path_kind, targets_per_crop=config.targets_per_crop,
                                                    name=path_kind))
        pcfg = PretrainConfig(task=task, arch=config.arch, width=config.width, steps=config.pretrain_steps,
                              batch_size=config.pretrain_batch, lr=config.pretrain_lr,
                              runtime=RuntimeConfig(seed=config.pretrain_seed, workers=config.workers,
                                                    device=config.device),
                              checkpoint_every=max(1, config.pretrain_steps // 4))
        run = out / "pretrain" / method
        ck = _pretrain_done(run, pcfg)
        if ck is None:
            s = pretrain(shards, run, pcfg, resume=True, progress=progress)
            ck = Path(s["checkpoint"])
            log(f"pretrained {LABELS[method]}: loss {s['final_loss']:.4f} after {s['steps']} steps "
                f"(chance {s.get('chance_loss')})")
        else:
            skipped += 1
        checkpoints[method] = str(ck)

    cells = []
    # Seed-major order: a run stopped early still has every row for its first seeds.
    for seed in config.seeds:
        for fraction, epochs in zip(config.fractions, config.epochs):
            for method in config.methods:
                fcfg = FinetuneConfig(arch=config.arch, width=config.width, epochs=epochs,
                                      batch_size=config.finetune_batch, lr=config.finetune_lr,
                                      label_fraction=fraction, init=checkpoints[method],
                                      runtime=RuntimeConfig(seed=seed, workers=config.workers, device=config.device,
                                                            shuffle_buffer=512))
                cell = _cell_dir(out, method, fraction, seed)
                s = _cell_done(cell, fcfg)
                if s is None:
                    s = finetune(out / "labelled", cell, fcfg, progress=progress)
                    log(f"{LABELS[method]:>18} {fraction:>5g} seed {seed}: ACC {s['metrics']['acc']:.3f} "
                        f"AUC {s['metrics']['auc']} ({s['n_train']} labels)")
                else:
                    skipped += 1
                cells.append({"method": LABELS[method], "fraction": fraction, "seed": seed,
                              "acc": s["metrics"]["acc"], "auc": s["metrics"]["auc"], "n_train": s["n_train"]})
                # Rewritten after every cell: a run stopped early keeps its table so far.
                stats, table = _write_results(out, config, cells)
    rows = [LABELS[m] for m in config.methods]
    plot = plot_auc_vs_fraction(stats, rows, list(config.fractions), out / "auc_vs_fraction.png",
                                title=f"{Path(config.npz).stem}: test AUC against label fraction",
                                reference=MEDMNIST_V2_ADRENAL3D)
    return {"cells": cells, "skipped": skipped, "table": table, "plot": str(plot),
            "seconds": time.perf_counter() - t0}

