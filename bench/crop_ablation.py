"""Ablation of TCPC's task knowledge: pretraining on SLIC candidate crops vs random and centre crops.

The paper's central claim is that crops centred on SLIC lesion candidates
make a better pretraining set than crops placed without task knowledge. This
measures both halves of the claim on seeded phantom chest CTs, where every
lesion is known (``tcpc_data.phantom``):

1. the share of pretraining crops that contain a lesion centre
   (``bench.lesioncrops``), per crop source;
2. the test result of fine-tuning a lesion classifier (benign vs malignant
   crops, small label fractions) from TCPC pretrained on each source's crops.

Crop sources, all with the same number of crops per training case (K), the
same crop and cube geometry, the same samples per crop and pretraining steps:

- ``slic``: the supervoxels stage's top-K candidates (the tool's default);
- ``random``: K centres uniform over the volume (as ``bench/lesion_crops.py``);
- ``body``: K centres uniform over the body mask (supervoxel label > 0), so
  random crops are not handicapped by landing in air or padding;
- ``centre``: the volume's centre crop, K times (its samples differ only in
  their target draws and path variants).

Each non-SLIC source is given to ``tcpc supervoxels --candidates-csv`` as a
``case,z,y,x`` table, so its shards are cut by the same normal path. Cases
are split by patient; supervoxels, candidates and pretraining shards come
from the training patients only. A row fine-tunes with seeds ``seeds``,
paired with pretraining seeds (seed i starts from pretraining seed
``pretrain_seeds[i % n]`` of its source); every row, scratch included, uses
the same label subsets, validation subsets (sized to the label budget,
drawn from the validation patients) and test patients. The report gives
ACC, balanced ACC and AUC with 95 % intervals by bootstrap over test
patients and seeds and a paired test of each row against the SLIC row
(``tcpc_train.evaluation.stats``).

    python bench/crop_ablation.py --out runs/crop-ablation       # ~45 min on the busy 2-core machine

The same on real CT: ``--data`` a folder of CT series with a ``nodules.csv``
(pixel row/col and ``z_position_mm``, as ``../shared/data/ct/lidc``) gives
the pretraining crops (ingested at 1 mm in the ``--clip`` window mapped onto
[-1, 1], as the nodule experiment's VOIs); ``--labelled`` a nodule folder
(``images/*.nii.gz`` + ``nodules.csv``) gives the fine-tuning task, built as
``tcpc experiment`` builds it (its ``val`` patients are the test set, 15 % of
its training patients select checkpoints). A CT patient among the nodule
folder's test patients is refused. Paths then follow the nodule
experiment's geometry (``--plane axial --target-radius 0``):

    python bench/crop_ablation.py --out runs/crop-ablation-lidc --data ../shared/data/ct/lidc \
        --labelled ../shared/data/labeled/lidc-nodules --sources slic body centre \
        --n-segments 2000 --sigma 10 --top-k 64 --plane axial --target-radius 0 \
        --fractions 0.1 --epochs 6 --val-min 20

Everything lands in ``--out`` and a rerun skips what is finished
(pretraining and fine-tuning runs resume; stores and shards are digest-checked):
``archive/``, ``volumes.zarr`` (all cases; SLIC candidates), ``stores/<source>.zarr``,
``shards/<source>``, ``pretrain/<source>-p<seed>``, ``cells/<row>-f<fraction>-s<seed>``,
``shares.json``, ``cells.jsonl``, ``pretrain.jsonl`` (final InfoNCE per source and seed), ``results.md``,
``crop-ablation.png``, ``ablation.json``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import shutil
import sys
import time
from dataclasses import field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SOURCES = {"slic": "SLIC candidates", "body": "random in body", "random": "random crops", "centre": "centre crop"}
ROWS = {"scratch": "train from scratch", **{s: f"TCPC on {label}" for s, label in SOURCES.items()}}


@dataclasses.dataclass(frozen=True)
class AblationConfig:
    """Sizes of the ablation (saved as ``ablation.json``); the defaults took 45 min on the busy 2-core CPU."""

    data: str = field(default="phantoms", metadata={
        "help": "phantoms, or a folder of CT series with a nodules.csv (pixel row/col, z_position_mm)."})
    labelled: str = field(default="", metadata={
        "help": "With CT data: the nodule folder (images/ + nodules.csv) of the fine-tuning task."})
    clip: tuple[float, float] = field(default=(-1000.0, 400.0), metadata={
        "help": "With CT data: HU window mapped onto [-1, 1] (the nodule experiment's)."})
    sources: tuple[str, ...] = field(default=tuple(SOURCES), metadata={"help": f"Crop sources, from {list(SOURCES)}."})
    cases: int = field(default=40, metadata={"help": "Phantom CTs (patients)."})
    # Lesions sparse enough that a crop without task knowledge rarely holds one, as in chest CT
    # (LIDC: 1 % of random 64 mm crops, none of the centre crops): in the demo's 48 x 96 x 96
    # phantoms with 6 lesions a 32-voxel centre crop holds a lesion in 3 cases of 4.
    shape: tuple[int, int, int] = field(default=(64, 128, 128), metadata={"help": "Phantom size Z Y X, voxels."})
    spacing: tuple[float, float, float] = field(default=(2.0, 1.4, 1.4), metadata={"help": "Voxel size Z Y X, mm."})
    lesions_per_case: int = field(default=4, metadata={"help": "Lesions per phantom (benign or malignant)."})
    split: tuple[int, int] = field(default=(24, 4), metadata={"help": "Train and validation patients; the rest test."})
    seed: int = field(default=0, metadata={"help": "Seed of the phantoms and of the random crop centres."})
    crop: int = field(default=32, metadata={"help": "Crop side of pretraining and labelled crops, voxels."})
    cube: int = field(default=8, metadata={"help": "Pretraining cube side, voxels."})
    n_segments: int = field(default=700, metadata={"help": "SLIC supervoxels per phantom (the demo's size of one)."})
    sigma: float = field(default=1.0, metadata={"help": "SLIC smoothing, mm."})
    top_k: int = field(default=8, metadata={"help": "Crops per training case, every source."})
    targets_per_crop: int = field(default=4, metadata={"help": "Pretraining samples per crop."})
    plane: str = field(default="any", metadata={"help": "Plane of the pretraining paths (any: drawn per sample)."})
    target_radius: int = field(default=1, metadata={"help": "Targets within this many grid steps of the crop centre."})
    width: float = field(default=0.125, metadata={"help": "Encoder channel multiplier."})
    pretrain_steps: int = field(default=200, metadata={"help": "TCPC steps per pretraining."})
    batch: int = field(default=16, metadata={"help": "Samples per step (pretraining and fine-tuning)."})
    pretrain_seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "Pretraining seeds per source."})
    seeds: tuple[int, ...] = field(default=(0, 1, 2, 3, 4, 5), metadata={"help": "Fine-tuning seeds per row."})
    # Labels per class: 0.02 one (the stratified floor), 0.05 2-3, 0.1 4-5. With the demo's 14 patients'
    # lesions (84 labels) both demo rows reach AUC 0.98-0.99, so only these few-label columns leave room
    # for a better initialisation to show.
    fractions: tuple[float, ...] = field(default=(0.02, 0.05, 0.1), metadata={
        "help": "Shares of the training lesions labelled (per class at least one)."})
    epochs: tuple[int, ...] = field(default=(30, 30, 30), metadata={"help": "Fine-tuning epochs per fraction."})
    val_per_label: float = field(default=1.0, metadata={"help": "Validation samples per training label."})
    val_min: int = field(default=10, metadata={"help": "Floor of the validation subset."})
    n_boot: int = field(default=2000, metadata={"help": "Bootstrap replicates."})
    # one thread: on a shared, oversubscribed CPU a second one mostly spin-waits
    threads: int = field(default=1, metadata={"help": "torch CPU threads (fixed: sums depend on it)."})

    def validate(self) -> None:
        unknown = [x for x in self.sources if x not in SOURCES]
        if unknown or not self.sources:
            raise ValueError(f"sources {list(self.sources)}: choose one or more of {list(SOURCES)}")
        if self.data != "phantoms" and not (Path(self.data) / "nodules.csv").is_file():
            raise FileNotFoundError(f"{self.data}: not 'phantoms' and no nodules.csv there")
        if len(self.epochs) != len(self.fractions) or not all(0 < f <= 1 for f in self.fractions):
            raise ValueError(f"need one epoch count per fraction in (0, 1], got {self.epochs} for {self.fractions}")
        if self.data != "phantoms" and not (Path(self.labelled) / "nodules.csv").is_file():
            raise FileNotFoundError(f"--labelled {self.labelled!r}: CT data needs a nodule folder for fine-tuning")

    def rows(self) -> dict[str, str]:
        """Row -> label: scratch, then TCPC on each source."""
        return {r: label for r, label in ROWS.items() if r == "scratch" or r in self.sources}


def _split_csvs(labels_csv: Path, out: Path, split: tuple[int, int]) -> dict[str, list[str]]:
    """lesions-{train,val,test}.csv cut by patient (cases in order); returns split -> cases."""
    rows = list(csv.DictReader(open(labels_csv, newline="")))
    cases = sorted({r["case"] for r in rows})
    if split[0] < 1 or split[1] < 1 or sum(split) >= len(cases):
        raise ValueError(f"split {split} must leave at least one test patient of {len(cases)}")
    parts = {"train": cases[:split[0]], "val": cases[split[0]:sum(split)], "test": cases[sum(split):]}
    for name, cs in parts.items():
        with open(out / f"lesions-{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(r for r in rows if r["case"] in cs)
    return parts


def _centres(source: str, root, case: str, k: int, seed: int) -> np.ndarray:
    """(K, 3) crop centres of one case for a non-SLIC source (``root``: the SLIC store, opened)."""
    from bench.lesioncrops import centre_crops, random_centres, random_centres_in

    shape = root[case]["image"].shape
    if source == "random":
        return random_centres(shape, k, seed)
    if source == "body":
        return random_centres_in(root[case]["supervoxels"][...] > 0, k, seed)
    return centre_crops(shape, k)


def _stores(out: Path, cfg: AblationConfig, train: list[str], log) -> dict[str, Path]:
    """One store per source with its K candidates per training case (the SLIC one is ``volumes.zarr``)."""
    from tcpc_data.store.volumes import open_store
    from tcpc_data.supervoxels.stage import SupervoxelConfig, supervoxels

    base = out / "volumes.zarr"
    # CT: the body mask's threshold (-500 HU) must lie inside the stored window
    sv = SupervoxelConfig(n_segments=cfg.n_segments, sigma=cfg.sigma, top_k=cfg.top_k, crop_size=cfg.crop)
    rep = supervoxels(base, sv, cases=train, workers=1)
    if not rep.ok:
        raise RuntimeError(rep.summary())
    stores = {"slic": base} if "slic" in cfg.sources else {}
    root = open_store(base, "r")
    for source in cfg.sources:
        if source == "slic":
            continue
        table = out / f"centres-{source}.csv"
        with open(table, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "z", "y", "x"])
            for i, case in enumerate(train):
                w.writerows([case, *map(int, c)] for c in _centres(source, root, case, cfg.top_k, cfg.seed * 1000 + i))
        store = out / "stores" / f"{source}.zarr"
        if not store.exists():
            staging = store.with_suffix(".copying")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(base, staging)
            staging.rename(store)
        rep = supervoxels(store, sv, cases=train, candidates_csv=table, workers=1)
        if not rep.ok:
            raise RuntimeError(rep.summary())
        stores[source] = store
    log(f"candidates: {len(train)} training cases x {cfg.top_k} crops for {', '.join(cfg.sources)}")
    return stores


def _shares(stores: dict[str, Path], lesions: dict[str, np.ndarray], cfg: AblationConfig) -> dict:
    """Per source: share of its crops holding a lesion centre (all crops pooled) and per case."""
    from bench.lesioncrops import contains_lesion
    from tcpc_data.store.volumes import open_store

    out = {}
    for source, store in stores.items():
        root = open_store(store, "r")
        per_case = {c: contains_lesion(root[c]["candidates"][...], lesions[c], cfg.crop) for c in sorted(lesions)}
        hits = np.concatenate(list(per_case.values()))
        out[source] = {"share": float(hits.mean()), "crops": int(len(hits)),
                       "per_case": {c: float(h.mean()) for c, h in per_case.items()}}
    return out


def _done(run: Path, cfg) -> dict | None:
    """A finished run's summary when ``run/config.json`` holds ``cfg``; None otherwise."""
    summary, saved = run / "summary.json", run / "config.json"
    if summary.exists() and saved.exists() and \
            json.loads(saved.read_text()) == json.loads(json.dumps(dataclasses.asdict(cfg))):
        return json.loads(summary.read_text())
    return None


def _pretrain(out: Path, source: str, shards: Path, seed: int, cfg: AblationConfig, log) -> str:
    from tcpc_train.loops.pretraining import PretrainConfig, pretrain
    from tcpc_train.loops.runtime import RuntimeConfig

    pcfg = PretrainConfig(task="tcpc", width=cfg.width, steps=cfg.pretrain_steps, batch_size=cfg.batch,
                          runtime=RuntimeConfig(seed=seed, workers=0, device="cpu"),
                          warmup=min(50, cfg.pretrain_steps // 5), checkpoint_every=max(1, cfg.pretrain_steps // 3))
    run = out / "pretrain" / f"{source}-p{seed}"
    s = _done(run, pcfg)
    if s is None or s.get("steps") != pcfg.steps:
        t0 = time.perf_counter()
        s = pretrain(shards, run, pcfg, resume=True)
        log(f"pretrained TCPC on {SOURCES[source]} (seed {seed}): InfoNCE {s['final_loss']:.3f} "
            f"(chance {s['chance_loss']:.3f}), {time.perf_counter() - t0:.0f} s")
    return str(s["checkpoint"])


def _cell(out: Path, row: str, seed: int, fraction: float, epochs: int, init: str | None, labelled: Path,
          cfg: AblationConfig, log) -> dict:
    """Fine-tune one (row, seed) on its label subset, select on a label-scaled validation subset, score test."""
    from tcpc_train.apps.experiment import ExperimentConfig, predict_split, validation_view
    from tcpc_train.loops.finetuning import FINETUNE_RUNTIME, FinetuneConfig, finetune, read_labels, stratified_fraction
    from tcpc_train.input.loader import labelled_splits

    splits = labelled_splits(labelled)
    n_train = len(stratified_fraction(read_labels(splits["train"]), fraction, seed))
    protocol = ExperimentConfig(data=str(labelled), val_per_label=cfg.val_per_label, val_min=cfg.val_min)
    view, val_keys = validation_view(labelled, out, n_train, seed, protocol)
    fcfg = FinetuneConfig(width=cfg.width, epochs=epochs, batch_size=cfg.batch, label_fraction=fraction,
                          init=init, runtime=dataclasses.replace(FINETUNE_RUNTIME, seed=seed, workers=0, device="cpu"))
    cell = out / "cells" / f"{row}-f{fraction:g}-s{seed}"
    s = _done(cell, fcfg)
    if s is None or not (cell / "predictions.npz").exists() or \
            json.loads((cell / "val_keys.json").read_text()) != val_keys:
        shutil.rmtree(cell, ignore_errors=True)
        cell.mkdir(parents=True)
        (cell / "val_keys.json").write_text(json.dumps(val_keys))
        s = finetune(view, cell, fcfg)
        np.savez(cell / "predictions.npz", **predict_split(s["checkpoint"], splits["test"], cfg.batch, "cpu"))
        log(f"{ROWS[row]:>26} {fraction:>5g} seed {seed}: test ACC {s['metrics']['acc']:.3f} AUC {s['metrics']['auc']:.3f} "
            f"({s['n_train']} labels, {len(val_keys)} for selection)")
    m = s["metrics"]
    return {"row": row, "method": cfg.rows()[row], "fraction": fraction, "seed": seed,
            "pretrain_seed": None if init is None else cfg.pretrain_seeds[cfg.seeds.index(seed) % len(cfg.pretrain_seeds)],
            "acc": m["acc"], "balanced_acc": m["balanced_acc"], "auc": m["auc"], "n_train": s["n_train"],
            "n_val": len(val_keys), "predictions": str(cell.relative_to(out))}


def _figure(shares: dict, stats: dict, cfg: AblationConfig, path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1, 1.3, 1.3]})
    names = list(cfg.sources)
    axes[0].bar([SOURCES[s] for s in names], [shares[s]["share"] for s in names], color="C0")
    for i, s in enumerate(names):
        axes[0].text(i, shares[s]["share"], f"{shares[s]['share']:.2f}", ha="center", va="bottom")
    axes[0].set_ylabel("share of crops holding a lesion centre")
    axes[0].set_title(f"pretraining crops ({cfg.top_k} per training case, side {cfg.crop})", fontsize=10)
    axes[0].tick_params(axis="x", labelrotation=20)
    rows = list(cfg.rows().values())
    for ax, metric, name in ((axes[1], "acc", "ACC"), (axes[2], "auc", "AUC")):
        for k, fraction in enumerate(cfg.fractions):
            vals = [stats[(r, float(fraction))][metric] for r in rows]
            mean = np.array([v[0] for v in vals])
            x = np.arange(len(rows)) + 0.15 * (k - (len(cfg.fractions) - 1) / 2)
            ax.errorbar(x, mean, yerr=[mean - [v[1] for v in vals], [v[2] for v in vals] - mean], fmt="o",
                        capsize=4, label=f"{fraction * 100:g} % of the labels")
        ax.set_xticks(range(len(rows)), [r.replace("TCPC on ", "TCPC:\n") for r in rows], fontsize=8)
        ax.set_ylabel(f"test {name}")
        ax.set_title("fine-tuned: mean over seeds, 95 % interval", fontsize=10)
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.suptitle(f"{title}: where TCPC's pretraining crops come from", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _phantom_data(out: Path, cfg: AblationConfig, log) -> dict:
    """Phantom archive split by patient, ingested; lesion CSVs and labelled crops per split."""
    from tcpc_data.ingest.stage import IngestConfig, ingest
    from tcpc_data.phantom import write_archive
    from tcpc_data.shards.labelled import LabelledConfig, write_labelled_shards

    labels_csv = write_archive(out / "archive", n_cases=cfg.cases, seed=cfg.seed, n_lesions=cfg.lesions_per_case,
                               classes=(0, 1), shape=cfg.shape, spacing_zyx=cfg.spacing)
    parts = _split_csvs(labels_csv, out, cfg.split)
    rep = ingest(out / "archive", out / "volumes.zarr", IngestConfig(), workers=1)
    if not rep.ok:
        raise RuntimeError(rep.summary())
    lesions: dict[str, list] = {}
    for r in csv.DictReader(open(labels_csv, newline="")):
        if r["case"] in parts["train"]:
            lesions.setdefault(r["case"], []).append([int(r["z"]), int(r["y"]), int(r["x"])])
    for split in parts:
        rep, _ = write_labelled_shards(out / "volumes.zarr", out / f"lesions-{split}.csv", out / "labelled" / split,
                                       LabelledConfig(crop_size=cfg.crop), workers=1)
        if not rep.ok:
            raise RuntimeError(rep.summary())
    return {"train": parts["train"], "lesions": {c: np.array(v) for c, v in lesions.items()},
            "labelled": out / "labelled", "title": "Phantom CTs",
            "what": f"{cfg.cases} phantoms of {'x'.join(map(str, cfg.shape))} voxels with {cfg.lesions_per_case} "
                    f"lesions each: {len(parts['train'])} train, {len(parts['val'])} val, {len(parts['test'])} test "
                    "patients"}


def _ct_data(out: Path, cfg: AblationConfig, log) -> dict:
    """CT series (pretraining crops, nodule centres) and the nodule folder's labelled set (fine-tuning)."""
    from bench.lesion_crops import _lidc_lesions
    from tcpc_data.ingest.stage import IngestConfig, ingest
    from tcpc_train.apps.experiment import ExperimentConfig, nodule_labelled, nodule_patients

    ct = Path(cfg.data)
    cases = sorted({r["patient_id"] for r in csv.DictReader(open(ct / "nodules.csv", newline=""))})
    protocol = ExperimentConfig(data=cfg.labelled, nodule_crop=cfg.crop, nodule_clip_hu=cfg.clip)
    labelled = nodule_labelled(Path(cfg.labelled), out / "labelled", protocol, out / "nodules" / "volumes.zarr",
                                log=log)
    test = nodule_patients(out / "nodules" / "splits.csv", ("test",))
    if set(cases) & test:
        raise ValueError(f"CT patients {sorted(set(cases) & test)} are test patients of {cfg.labelled}: "
                         "pretraining must not see them")
    rep = ingest([ct / c for c in cases], out / "volumes.zarr",
                 IngestConfig(clip=cfg.clip, spacing_zyx=(1.0, 1.0, 1.0), fixed_window=True), workers=1)
    if not rep.ok:
        raise RuntimeError(rep.summary())
    lesions = _lidc_lesions(out / "volumes.zarr", ct / "nodules.csv")
    return {"train": cases, "lesions": lesions, "labelled": labelled,
            "title": f"{ct.name} CTs (pretraining) -> {Path(cfg.labelled).name} (fine-tuning)",
            "what": f"pretraining crops from the {len(cases)} CT series of {ct.name} ({sum(map(len, lesions.values()))} "
                    f"nodules) at 1 mm; fine-tuning on {Path(cfg.labelled).name} (its val patients are the test set)"}


def run(out: Path, cfg: AblationConfig, log=print) -> dict:
    import torch

    from tcpc_data.shards.pretrain import ShardConfig, write_shards
    from tcpc_train.apps.tables import markdown_table, table_stats

    cfg.validate()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    t0 = time.perf_counter()
    data = (_phantom_data if cfg.data == "phantoms" else _ct_data)(out, cfg, log)
    stores = _stores(out, cfg, data["train"], log)
    shares = _shares(stores, data["lesions"], cfg)
    (out / "shares.json").write_text(json.dumps(shares, indent=1))
    log("share of crops holding a lesion: " + ", ".join(f"{SOURCES[s]} {v['share']:.3f}" for s, v in shares.items()))
    scfg = ShardConfig(crop_size=cfg.crop, cube_size=cfg.cube, targets_per_crop=cfg.targets_per_crop, seed=cfg.seed,
                       plane=None if cfg.plane == "any" else cfg.plane, target_radius=cfg.target_radius)
    shards = {}
    for source, store in stores.items():
        shards[source] = out / "shards" / source
        rep, _ = write_shards(store, shards[source], scfg, cases=data["train"], workers=1)
        if not rep.ok:
            raise RuntimeError(rep.summary())
    log(f"data ready ({time.perf_counter() - t0:.0f} s): {data['what']}")
    rows = cfg.rows()
    cells = []
    # seed-major: a run stopped early has every row for its first seeds
    for i, seed in enumerate(cfg.seeds):
        pseed = cfg.pretrain_seeds[i % len(cfg.pretrain_seeds)]
        for fraction, epochs in zip(cfg.fractions, cfg.epochs):
            for row in rows:
                init = None if row == "scratch" else _pretrain(out, row, shards[row], pseed, cfg, log)
                cells.append(_cell(out, row, seed, fraction, epochs, init, data["labelled"], cfg, log))
                (out / "cells.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
    used = sorted({cfg.pretrain_seeds[i % len(cfg.pretrain_seeds)] for i in range(len(cfg.seeds))})
    with open(out / "pretrain.jsonl", "w") as f:
        for source, pseed in itertools.product(cfg.sources, used):
            summary = json.loads((out / "pretrain" / f"{source}-p{pseed}" / "summary.json").read_text())
            f.write(json.dumps({"source": source, "seed": pseed, "steps": summary["steps"],
                                "final_loss": summary["final_loss"], "chance_loss": summary["chance_loss"]}) + "\n")
    against = rows["slic"] if "slic" in rows else rows["scratch"]
    stats = table_stats(cells, out, against=against, n_boot=cfg.n_boot)
    table = markdown_table(stats, list(rows.values()), list(cfg.fractions), against=against)
    share_line = " | ".join(f"{SOURCES[s]} {v['share']:.3f}" for s, v in shares.items())
    (out / "results.md").write_text(
        f"Crop-source ablation: {data['what']}; {cfg.top_k} crops of {cfg.crop} voxels per pretraining case, "
        f"{cfg.targets_per_crop} samples each; TCPC {cfg.pretrain_steps} steps x {cfg.batch}, pretraining seeds "
        f"{list(cfg.pretrain_seeds)}; fine-tuning seeds {list(cfg.seeds)} (paired), epochs {list(cfg.epochs)} for "
        f"label fractions {list(cfg.fractions)}, selection on max({cfg.val_min}, "
        f"{cfg.val_per_label:g} x labels) validation samples; {cfg.n_boot} bootstrap replicates over test patients "
        f"and seeds.\n\nShare of pretraining crops holding a lesion centre: {share_line}\n\n" + table)
    picture = _figure(shares, stats, cfg, out / "crop-ablation.png", data["title"])
    log(table)
    return {"shares": shares, "cells": cells, "table": table, "picture": str(picture),
            "seconds": time.perf_counter() - t0}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder; a rerun skips what is finished")
    for f in dataclasses.fields(AblationConfig):
        default = f.default
        kind = type(default[0]) if isinstance(default, tuple) else type(default)
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=kind, nargs="+" if isinstance(default, tuple) else None,
                        default=default, help=f"{f.metadata['help']} (default {default})")
    args = vars(ap.parse_args(argv))
    out = Path(args.pop("out"))
    cfg = AblationConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    run(out, cfg)


if __name__ == "__main__":
    main()
