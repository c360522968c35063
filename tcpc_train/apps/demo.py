"""`tcpc demo`: the whole pipeline on a generated phantom archive, in minutes on a CPU.

Phantom chest CTs with benign and malignant lesions (``tcpc_data.phantom``)
→ preprocess (ingest, SLIC supervoxels, candidates, U-path shards) →
TCPC pretraining on the candidate crops, without labels → fine-tuning on
labelled lesion crops from TCPC and from scratch → test ACC/AUC table and one
picture of the pipeline's outputs (``pipeline.png``). Cases are split by
patient into train/val/test so no lesion crop leaks across splits, and
supervoxels, candidates and pretraining shards come from the training
patients only: the pretraining never sees a test patient, even without labels.

The printed numbers must be the ones the README shows on any machine, so the
demo runs on the CPU with a fixed thread count, torch's deterministic
algorithms and every seed fixed; and because a 24-lesion test split moves
with any seed, it fine-tunes each initialisation with several seeds and
prints the mean with a 95 % interval by bootstrap over test patients and
seeds (:mod:`tcpc_train.evaluation.stats`).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import time
from dataclasses import field
from pathlib import Path

import numpy as np
import torch

from tcpc_data.ingest.stage import ingest
from tcpc_data.outputs import claim_dir, has_files
from tcpc_data.phantom import write_archive
from tcpc_data.pipeline import PreprocessReport
from tcpc_data.shards.labelled import LabelledConfig, write_labelled_shards
from tcpc_data.shards.pretrain import ShardConfig, write_shards
from tcpc_data.store.volumes import list_cases
from tcpc_data.supervoxels.stage import SupervoxelConfig, supervoxels
from tcpc_train.loops.finetuning import FINETUNE_RUNTIME, FinetuneConfig, finetune
from tcpc_train.input.loader import labelled_splits
from tcpc_train.loops.pretraining import PretrainConfig, pretrain
from tcpc_train.loops.runtime import RuntimeConfig
from tcpc_train.evaluation.stats import bootstrap_ci
from tcpc_train.apps.experiment import predict_split
from tcpc_train.apps.tables import load_predictions


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo (saved as ``demo.json``); the defaults run in a few minutes on 2 cores."""

    cases: int = field(default=24, metadata={"help": "Phantom CTs to generate."})
    lesions_per_case: int = field(default=6, metadata={"help": "Lesions per phantom."})
    shape: tuple[int, int, int] = field(default=(48, 96, 96), metadata={
        "help": "Phantom size in voxels.", "metavar": "Z,Y,X"})
    seed: int = field(default=0, metadata={"help": "Seed of the phantoms, the draws and the training."})
    split: tuple[float, float] = field(default=(0.6, 0.15), metadata={
        "help": "Fractions of cases for train and val; the rest is test.", "metavar": "TRAIN,VAL"})
    crop_size: int = field(default=32, metadata={"help": "Crop side S in voxels (S=32, c=8: a 7^3 cube grid)."})
    cube_size: int = field(default=8, metadata={"help": "Cube side c in voxels."})
    # Small volumes, small lesions: less smoothing than the paper's sigma 10 mm for real chest CT.
    n_segments: int = field(default=300, metadata={"help": "SLIC supervoxels per phantom."})
    sigma: float = field(default=1.0, metadata={"help": "SLIC smoothing in mm."})
    top_k: int = field(default=16, metadata={"help": "Candidate crops per case for pretraining."})
    width: float = field(default=0.125, metadata={"help": "Channel multiplier of the encoder."})
    pretrain_steps: int = field(default=150, metadata={"help": "TCPC pretraining steps."})
    finetune_epochs: int = field(default=12, metadata={"help": "Fine-tuning epochs."})
    batch_size: int = field(default=16, metadata={"help": "Samples per step."})
    finetune_seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={
        "help": "Fine-tuning seeds per initialisation; the table gives their mean and a 95 % interval."})
    threads: int = field(default=2, metadata={
        "help": "CPU threads of torch (fixed: float sums depend on the thread count)."})

    def validate(self) -> None:
        if self.cases < 3:
            raise ValueError(f"cases must be >= 3 (one per split at least), got {self.cases}")
        if self.lesions_per_case < 1:
            raise ValueError(f"lesions_per_case must be >= 1, got {self.lesions_per_case}")
        if not (0 < self.split[0] and 0 < self.split[1] and sum(self.split) < 1):
            raise ValueError(f"split fractions must be > 0 and leave some cases for test, got {self.split}")
        if not self.finetune_seeds:
            raise ValueError("finetune_seeds must name at least one seed")
        for name in ("pretrain_steps", "finetune_epochs", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _split_cases(cases: list[str], split: tuple[float, float]) -> dict[str, list[str]]:
    """Cases in order, cut into train/val/test; each split gets at least one case."""
    n = len(cases)
    n_train = max(1, min(n - 2, round(split[0] * n)))
    n_val = max(1, min(n - n_train - 1, round(split[1] * n)))
    return {"train": cases[:n_train], "val": cases[n_train:n_train + n_val], "test": cases[n_train + n_val:]}


def _write_split_csvs(labels_csv: Path, out: Path, split: tuple[float, float]
                      ) -> tuple[dict[str, Path], dict[str, list[str]]]:
    """Lesion CSVs per split, cut by patient; returns (split -> CSV path, split -> cases)."""
    with open(labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    parts = _split_cases(sorted({r["case"] for r in rows}), split)
    paths = {}
    for name, cases in parts.items():
        paths[name] = out / f"lesions-{name}.csv"
        with open(paths[name], "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(r for r in rows if r["case"] in cases)
    return paths, parts


@contextlib.contextmanager
def _deterministic(threads: int):
    """Torch's deterministic algorithms and a fixed thread count for the block; restored after."""
    was = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was[0])
        torch.set_num_threads(was[1])


def _preprocess_training_patients(archive: Path, pre: Path, train_cases: list[str], config: DemoConfig,
                                  progress: bool) -> PreprocessReport:
    """Ingest every case (labelled crops need them all); supervoxels, candidates and U-path
    shards only for the training patients, so pretraining never sees a val or test patient."""
    store = pre / "volumes.zarr"
    run = dict(workers=1, progress=progress)
    stages = {"ingest": ingest([str(archive)], store, failures_path=pre / "failures-ingest.jsonl", **run),
              "supervoxels": supervoxels(store, SupervoxelConfig(n_segments=config.n_segments, sigma=config.sigma,
                                                                 top_k=config.top_k, crop_size=config.crop_size),
                                         cases=train_cases, failures_path=pre / "failures-supervoxels.jsonl",
                                         **run)}
    stages["shards"], manifest = write_shards(
        store, pre / "shards", ShardConfig(crop_size=config.crop_size, cube_size=config.cube_size,
                                           targets_per_crop=4, seed=config.seed),
        cases=train_cases, failures_path=pre / "failures-shards.jsonl", **run)
    return PreprocessReport(pre, stages, {"shards": manifest})


def run_demo(out: str | Path, config: DemoConfig = DemoConfig(), *, progress: bool = False, log=print) -> dict:
    """Run the demo into ``out``; returns the results and where the picture is.

    Parameters
    ----------
    out : path
        Output directory (created): ``archive/``, ``pre/`` (store, shards of the
        training patients), ``labelled/{train,val,test}``, ``runs/tcpc``,
        ``runs/finetune-<method>-s<seed>``, ``results.json``, ``pipeline.png``.
    config : DemoConfig
    progress : bool
        Progress bars of the stages.
    log : callable
        Receives one line per finished stage.

    Returns
    -------
    dict: ``rows`` (method → mean acc, balanced_acc, auc over the seeds, their
    95 % intervals ``*_ci``, ``per_seed`` metrics, n_train, n_test, run),
    ``pretrain_cases``, ``picture``, ``seconds``, ``out``.
    """
    config.validate()
    out = Path(out)
    claim_dir(out, "demo", what="demo folder", legacy=has_files("demo.json"))
    (out / "demo.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    t0 = time.perf_counter()
    with _deterministic(config.threads):
        result = _run(out, config, progress, log)
    result["seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(result, indent=1))
    return result


def _run(out: Path, config: DemoConfig, progress: bool, log) -> dict:
    labels_csv = write_archive(out / "archive", n_cases=config.cases, seed=config.seed,
                               n_lesions=config.lesions_per_case, classes=(0, 1), shape=config.shape)
    log(f"archive: {config.cases} phantom CTs with {config.cases * config.lesions_per_case} lesions "
        f"in {out / 'archive'}")
    csvs, parts = _write_split_csvs(labels_csv, out, config.split)
    rep = _preprocess_training_patients(out / "archive", out / "pre", parts["train"], config, progress)
    if not rep.ok:
        raise RuntimeError(f"preprocessing failed:\n{rep.summary()}")
    log(rep.summary())
    store = out / "pre" / "volumes.zarr"
    for split, csv_path in csvs.items():
        write_labelled_shards(store, csv_path, out / "labelled" / split,
                              LabelledConfig(crop_size=config.crop_size), workers=1)

    # CPU whatever the machine has: the same numbers everywhere (the demo is sized for a CPU)
    pcfg = PretrainConfig(task="tcpc", width=config.width, steps=config.pretrain_steps,
                          batch_size=config.batch_size, runtime=RuntimeConfig(workers=0, seed=config.seed, device="cpu"),
                          warmup=min(50, config.pretrain_steps // 5),
                          checkpoint_every=config.pretrain_steps)
    pre = pretrain(out / "pre" / "shards", out / "runs" / "tcpc", pcfg, progress=progress)
    log(f"TCPC pretraining on {len(parts['train'])} training patients: InfoNCE {pre['final_loss']:.3f} after "
        f"{pre['steps']} steps (chance {pre['chance_loss']:.3f})")

    test = labelled_splits(out / "labelled")["test"]
    rows = {}
    for method, init in (("scratch", None), ("TCPC", pre["checkpoint"])):
        runs, per_seed = [], []
        for seed in config.finetune_seeds:
            fcfg = FinetuneConfig(width=config.width, epochs=config.finetune_epochs, batch_size=config.batch_size,
                                  init=init, runtime=dataclasses.replace(FINETUNE_RUNTIME, workers=0, seed=seed, device="cpu"))
            s = finetune(out / "labelled", out / "runs" / f"finetune-{method.lower()}-s{seed}", fcfg,
                         progress=progress)
            np.savez(Path(s["out"]) / "predictions.npz", **predict_split(s["checkpoint"], test, config.batch_size,
                                                                           "cpu"))
            runs.append(load_predictions(Path(s["out"]) / "predictions.npz"))
            per_seed.append({"seed": seed, **{m: s["metrics"][m] for m in ("acc", "balanced_acc", "auc")}})
        ci = bootstrap_ci([p for p, _, _ in runs], runs[0][2], n_boot=2000, seed=config.seed)
        rows[method] = {**{m: ci[m][0] for m in ci}, **{f"{m}_ci": list(ci[m][1:]) for m in ci},
                        "per_seed": per_seed, "n_train": s["n_train"], "n_test": s["metrics"]["n"],
                        "n_test_patients": len(set(runs[0][2])), "run": s["out"]}
        log(f"fine-tuned from {method} (seeds {list(config.finetune_seeds)}): test ACC {_fmt(rows[method], 'acc')} "
            f"AUC {_fmt(rows[method], 'auc')}")
    picture = _pipeline_picture(out, rows)
    return {"rows": rows, "pretrain_cases": parts["train"], "picture": str(picture), "out": str(out)}


def results_table(rows: dict) -> str:
    """The demo's result as a small text table: mean over seeds [95 % interval over patients and seeds]."""
    lines = [f"{'initialisation':<16}{'test ACC':>24}{'test AUC':>24}"]
    lines += [f"{m:<16}{_fmt(r, 'acc'):>24}{_fmt(r, 'auc'):>24}" for m, r in rows.items()]
    first = next(iter(rows.values()))
    lines.append(f"(mean over {len(first['per_seed'])} fine-tuning seeds [95 % interval by bootstrap over "
                 f"{first['n_test_patients']} test patients and the seeds]; {first['n_test']} test lesions)")
    return "\n".join(lines)


def _fmt(row: dict, metric: str) -> str:
    """``mean [low, high]`` with 3 decimals; n/a where undefined (AUC of a one-class test split)."""
    v, (lo, hi) = row[metric], row[f"{metric}_ci"]
    return "n/a" if not np.isfinite(v) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _pipeline_picture(out: Path, rows: dict) -> Path:
    """One PNG: a phantom with supervoxels and candidates, a U-path sample, the pretraining
    loss, and the two fine-tuned models' ROC curves."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tcpc_data.tools.overview import inspect_path

    store = out / "pre" / "volumes.zarr"
    first = list_cases(store)[0]
    inspect_path(store / first, png=out / "case.png")
    inspect_path(out / "pre" / "shards", png=out / "path.png")
    loss = [json.loads(line) for line in (out / "runs" / "tcpc" / "log.jsonl").read_text().splitlines()]
    loss = [(r["step"], r["loss"]) for r in loss if "loss" in r]

    fig = plt.figure(figsize=(15, 9))
    grid = fig.add_gridspec(2, 3)
    panels = [(grid[0, 0:2], out / "case.png", "1. ingest + SLIC supervoxels + ranked candidate crops"),
              (grid[0, 2], out / "path.png", "2. a U-path sample: support cubes 1-7, target T")]
    for m, (spec, method) in enumerate(zip((grid[1, 1], grid[1, 2]), rows)):
        panels.append((spec, Path(rows[method]["run"]) / "roc.png",
                       f"{4 + m}. fine-tuned from {method} (seed {rows[method]['per_seed'][-1]['seed']}): "
                       f"ACC {rows[method]['per_seed'][-1]['acc']:.3f}"))
    for spec, png, title in panels:
        ax = fig.add_subplot(spec)
        ax.imshow(plt.imread(png))
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    ax = fig.add_subplot(grid[1, 0])
    ax.plot(*zip(*loss), lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title("3. TCPC pretraining on candidate crops (no labels)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.suptitle("tcpc demo: phantom chest CT → supervoxels → U-path shards → TCPC → fine-tuning", fontsize=13)
    fig.tight_layout()
    path = out / "pipeline.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
