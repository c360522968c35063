"""`tcpc demo`: the whole pipeline on a generated phantom archive, in minutes on a CPU.

Phantom chest CTs with benign and malignant lesions (``tcpc_data.phantom``)
→ preprocess (ingest, SLIC supervoxels, candidates, U-path shards) →
TCPC pretraining on the candidate crops, without labels → fine-tuning on
labelled lesion crops from TCPC and from scratch → test ACC/AUC table and one
picture of the pipeline's outputs (``pipeline.png``). Cases are split by
patient into train/val/test so no lesion crop leaks across splits.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import field
from pathlib import Path

from tcpc_data.shards.labelled import LabelledConfig, write_labelled_shards
from tcpc_data.phantom import write_archive
from tcpc_data.pipeline import preprocess
from tcpc_data.shards.pretrain import ShardConfig
from tcpc_data.store import list_cases
from tcpc_data.supervoxels.stage import SupervoxelConfig
from tcpc_train.finetuning import FinetuneConfig, finetune
from tcpc_train.pretraining import PretrainConfig, pretrain
from tcpc_train.runtime import RuntimeConfig


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

    def validate(self) -> None:
        if self.cases < 3:
            raise ValueError(f"cases must be >= 3 (one per split at least), got {self.cases}")
        if self.lesions_per_case < 1:
            raise ValueError(f"lesions_per_case must be >= 1, got {self.lesions_per_case}")
        if not (0 < self.split[0] and 0 < self.split[1] and sum(self.split) < 1):
            raise ValueError(f"split fractions must be > 0 and leave some cases for test, got {self.split}")
        for name in ("pretrain_steps", "finetune_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _split_cases(cases: list[str], split: tuple[float, float]) -> dict[str, list[str]]:
    """Cases in order, cut into train/val/test; each split gets at least one case."""
    n = len(cases)
    n_train = max(1, min(n - 2, round(split[0] * n)))
    n_val = max(1, min(n - n_train - 1, round(split[1] * n)))
    return {"train": cases[:n_train], "val": cases[n_train:n_train + n_val], "test": cases[n_train + n_val:]}


def _write_split_csvs(labels_csv: Path, out: Path, split: tuple[float, float]) -> dict[str, Path]:
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
    return paths


def run_demo(out: str | Path, config: DemoConfig = DemoConfig(), *, progress: bool = False, log=print) -> dict:
    """Run the demo into ``out``; returns the results and where the picture is.

    Parameters
    ----------
    out : path
        Output directory (created): ``archive/``, ``pre/`` (store, shards),
        ``labelled/{train,val,test}``, ``runs/{tcpc,scratch,finetune-tcpc}``,
        ``results.json``, ``pipeline.png``.
    config : DemoConfig
    progress : bool
        Progress bars of the stages.
    log : callable
        Receives one line per finished stage.

    Returns
    -------
    dict: ``rows`` (method → acc, auc), ``picture``, ``seconds``, ``out``.
    """
    config.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    t0 = time.perf_counter()

    labels_csv = write_archive(out / "archive", n_cases=config.cases, seed=config.seed,
                               n_lesions=config.lesions_per_case, classes=(0, 1), shape=config.shape)
    log(f"archive: {config.cases} phantom CTs with {config.cases * config.lesions_per_case} lesions "
        f"in {out / 'archive'}")
    rep = preprocess([str(out / "archive")], out / "pre", workers=1, progress=progress,
                     supervoxel_config=SupervoxelConfig(n_segments=config.n_segments, sigma=config.sigma,
                                                        top_k=config.top_k, crop_size=config.crop_size),
                     shard_config=ShardConfig(crop_size=config.crop_size, cube_size=config.cube_size,
                                              targets_per_crop=4, seed=config.seed))
    if not rep.ok:
        raise RuntimeError(f"preprocessing failed:\n{rep.summary()}")
    log(rep.summary())
    store = out / "pre" / "volumes.zarr"
    for split, csv_path in _write_split_csvs(labels_csv, out, config.split).items():
        write_labelled_shards(store, csv_path, out / "labelled" / split,
                              LabelledConfig(crop_size=config.crop_size), workers=1)

    pcfg = PretrainConfig(task="tcpc", width=config.width, steps=config.pretrain_steps,
                          batch_size=config.batch_size, runtime=RuntimeConfig(workers=0, seed=config.seed),
                          warmup=min(50, config.pretrain_steps // 5),
                          checkpoint_every=config.pretrain_steps)
    pre = pretrain(out / "pre" / "shards", out / "runs" / "tcpc", pcfg, progress=progress)
    log(f"TCPC pretraining: InfoNCE {pre['final_loss']:.3f} after {pre['steps']} steps "
        f"(chance {pre['chance_loss']:.3f})")

    rows = {}
    for method, init in (("scratch", None), ("TCPC", pre["checkpoint"])):
        fcfg = FinetuneConfig(width=config.width, epochs=config.finetune_epochs, batch_size=config.batch_size,
                              init=init, runtime=RuntimeConfig(workers=0, seed=config.seed, shuffle_buffer=512))
        s = finetune(out / "labelled", out / "runs" / f"finetune-{method.lower()}", fcfg, progress=progress)
        rows[method] = {"acc": s["metrics"]["acc"], "auc": s["metrics"]["auc"], "n_train": s["n_train"],
                        "n_test": s["metrics"].get("n"), "run": s["out"]}
        log(f"fine-tuned from {method}: test ACC {rows[method]['acc']:.3f} AUC {_fmt(rows[method]['auc'])}")
    picture = _pipeline_picture(out, rows)
    result = {"rows": rows, "picture": str(picture), "seconds": time.perf_counter() - t0, "out": str(out)}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    return result


def results_table(rows: dict) -> str:
    """The demo's result as a small text table."""
    lines = [f"{'initialisation':<16}{'test ACC':>10}{'test AUC':>10}"]
    lines += [f"{m:<16}{r['acc']:>10.3f}{_fmt(r['auc']):>10}" for m, r in rows.items()]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    """A metric with 3 decimals; AUC is None when the test split holds one class."""
    return "n/a" if value is None else f"{value:.3f}"


def _pipeline_picture(out: Path, rows: dict) -> Path:
    """One PNG: a phantom with supervoxels and candidates, a U-path sample, the pretraining
    loss, and the two fine-tuned models' ROC curves."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tcpc_data.overview import inspect_path

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
                       f"{4 + m}. fine-tuned from {method}: ACC {rows[method]['acc']:.3f} AUC {_fmt(rows[method]['auc'])}"))
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
