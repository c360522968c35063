"""Fine-tuning and evaluation of a 3D CNN classifier on labelled shard splits.

``finetune`` trains encoder + linear head on a seeded, stratified fraction of
``train`` (Adam, the paper's optimiser), keeps the weights with the best
validation AUC (then ACC), and evaluates them on ``test``. The encoder starts
from scratch, from a tcpc checkpoint (TCPC or a proxy task) or from any
external state dict, with a report of matched / missing / unexpected keys
(:mod:`tcpc_train.weights`); pretraining with ``init`` set and fine-tuning
from its checkpoint is the cascade external → TCPC → fine-tune.

Outputs in ``out``: ``config.json``, ``init_report.json``, ``log.jsonl``
(per step: epoch, loss, lr, samples/s; per epoch: validation metrics),
``last.pt`` and ``best.pt`` (plain-dict checkpoints), ``metrics.json`` (test
ACC, AUC, confusion matrix), ``roc.png``, ``curves.png``.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tcpc_train.checkpoint import load_checkpoint, save_checkpoint
from tcpc_train.loader import (ShardSet, ShardStream, augment_volume, decode_labelled_sample, first_sample,
                               labelled_splits, make_loader, open_shards, raw_samples, read_label,
                               sample_rng, split_or_set)
from tcpc_train.metrics import classification_metrics
from tcpc_train.models import ARCHS, Classifier, build_encoder
from tcpc_train.plots import plot_curves, plot_roc
from tcpc_train.runtime import StepLog, autocast, progress_bar, resolve_device
from tcpc_train.weights import load_encoder_weights


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings (saved with the checkpoints).

    arch, width : encoder; must match ``init`` when it is a tcpc checkpoint
    epochs, batch_size, lr, weight_decay : Adam on the selected training samples
    label_fraction : in (0, 1]; per class, round(fraction · n) samples (at least 1), seeded
    init : checkpoint or external state dict for the encoder; None trains from scratch
    augment : random flips / 90° rotations of training volumes
    shuffle_buffer, workers, seed, device, amp : as in pretraining
    """

    arch: str = "resnet18"
    width: float = 1.0
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    label_fraction: float = 1.0
    init: str | None = None
    augment: bool = True
    shuffle_buffer: int = 512
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    amp: bool = True

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"label fraction must be in (0, 1], got {self.label_fraction}")
        if self.epochs < 1 or self.batch_size < 2 or self.shuffle_buffer < 1 or self.workers < 0:
            raise ValueError("epochs and shuffle_buffer must be >= 1, batch_size >= 2 (batch norm), workers >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def read_labels(data: ShardSet) -> dict[str, int]:
    """{sample key: class} of every sample in ``data`` (reads the tars once, decodes only ``cls``)."""
    labels: dict[str, int] = {}
    for raw in itertools.chain.from_iterable(map(raw_samples, data.urls)):
        key = raw["__key__"]
        if key in labels:
            raise ValueError(f"{raw['__url__']}: sample key {key} appears twice in {data.root}")
        labels[key] = read_label(raw)
    return labels


def stratified_fraction(labels: dict[str, int], fraction: float, seed: int) -> frozenset:
    """A seeded, stratified subset of sample keys: per class round(fraction · n), at least 1.

    A pure function of (the key → class mapping, fraction, seed); smaller
    fractions with the same seed are subsets of larger ones.
    """
    chosen = []
    for cls in sorted(set(labels.values())):
        keys = sorted(k for k, c in labels.items() if c == cls)
        order = np.random.default_rng([seed, cls]).permutation(len(keys))
        n = max(1, int(round(fraction * len(keys))))
        chosen += [keys[i] for i in order[:n]]
    return frozenset(chosen)


class VolumeSample:
    """Raw labelled sample -> {volume (1, S, S, S), label}; optional augmentation (loader workers)."""

    def __init__(self, augment: bool, seed: int):
        self.augment, self.seed = augment, seed

    def __call__(self, raw: dict, epoch: int) -> dict:
        s = decode_labelled_sample(raw)
        vol = augment_volume(s["volume"], sample_rng(self.seed, epoch, s["key"])) if self.augment else s["volume"]
        return {"volume": vol[None], "label": np.int64(s["label"])}


@torch.no_grad()
def predict(model: torch.nn.Module, data: ShardSet, batch_size: int, device: torch.device,
            workers: int = 0, amp: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), class log-probabilities (N, K), float64) of every sample of ``data``, in a fixed order.

    Log-probabilities, not probabilities: a confident model's float32
    probabilities round to exactly 0 and 1, every sample then ties and the AUC
    reads 0.5 (seen with full-width networks fine-tuned on 12 labels); their
    logarithms, and the logit differences built from them, keep the ranking.
    """
    model.eval()
    stream = ShardStream(data, VolumeSample(False, 0), batch_size, shuffle_buffer=1, epoch=0, rank=0, world=1)
    labels, scores = [], []
    for batch in make_loader(stream, workers, pin_memory=device.type == "cuda"):
        with autocast(device, amp):
            logits = model(batch["volume"].to(device, non_blocking=True))
        scores.append(F.log_softmax(logits.double(), 1).cpu().numpy())
        labels.append(batch["label"].numpy())
    return np.concatenate(labels), np.concatenate(scores)


def _check_resume(ck: dict, cfg: FinetuneConfig, data_digest: str, path: Path) -> None:
    old = ck.get("config", {})
    diff = sorted(k for k, v in dataclasses.asdict(cfg).items() if k not in ("epochs", "device") and old.get(k) != v)
    if ck.get("kind") != "classifier" or diff:
        was = ", ".join(f"{k}: {old.get(k)!r}" for k in diff) or "not a classifier"
        raise ValueError(f"{path} holds another run ({was});"
                         " resume with the same settings or choose a new output directory")
    if ck.get("data_digest") != data_digest:
        raise ValueError(f"{path} was trained on another training split (manifest digest differs); "
                         "choose a new output directory")


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, data: ShardSet, keys: frozenset, batch_size: int,
                          device: torch.device, workers: int = 0, amp: bool = True, max_batches: int = 50) -> None:
    """Recompute batch-norm running statistics as exact averages over (up to ``max_batches``) training batches.

    With few, fast-changing steps the momentum averages lag the weights, and
    evaluation-mode outputs drift from the training-mode ones (seen here:
    AUC 1.0 but ACC 0.5 on a separable set); "precise BN" removes the lag.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    stream = ShardStream(data, VolumeSample(False, 0), batch_size, shuffle_buffer=1, epoch=0, keys=keys,
                         drop_last=len(keys) > batch_size, rank=0, world=1)
    for i, batch in enumerate(make_loader(stream, workers)):
        if i == max_batches:
            break
        with autocast(device, amp):
            model(batch["volume"].to(device, non_blocking=True))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


def _write_eval(out: Path, metrics: dict, labels: np.ndarray, scores: np.ndarray, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plot_roc(labels, scores, out / "roc.png", title)


def finetune(labelled: str | Path, out: str | Path, config: FinetuneConfig = FinetuneConfig(),
             resume: bool = True, progress: bool = False) -> dict:
    """Fine-tune a classifier on ``labelled/train``, select on ``val``, report on ``test``.

    Parameters
    ----------
    labelled : path
        Directory with ``train/``, optional ``val/`` and ``test/`` shard directories
        (samples ``volume.npy`` (S, S, S), ``cls``, ``json``).
    out : path
        Run directory (created).
    config : FinetuneConfig
    resume : bool
        Continue from ``out/last.pt`` (written after every epoch; same config
        but ``epochs``/``device``, same data) instead of starting over. Epoch
        e's order is a pure function of (seed, e), so the resumed run matches
        an uninterrupted one; a partly done epoch is redone.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict summary: ``metrics`` (test acc, auc, confusion, n), ``val`` (per-epoch
    validation metrics), ``n_train`` (selected samples), ``n_classes``,
    ``init_report``, ``checkpoint`` (best.pt), ``out``.
    """
    config.validate()
    splits = labelled_splits(labelled)
    out = Path(out)
    device = resolve_device(config.device)
    for split in splits.values():  # wrong layout: a clear error before workers start
        VolumeSample(False, 0)(first_sample(split), 0)
    train_labels = read_labels(splits["train"])
    n_classes = max(train_labels.values()) + 1
    if len(set(train_labels.values())) < 2:
        raise ValueError(f"{splits['train'].root}: the training split holds a single class; need at least two")
    keys = stratified_fraction(train_labels, config.label_fraction, config.seed)

    torch.manual_seed(config.seed)
    encoder = build_encoder(config.arch, config.width)
    init_report = load_encoder_weights(encoder, config.init, {"arch": config.arch, "width": config.width}) \
        if config.init else None
    model = Classifier(encoder, n_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    (out / "init_report.json").write_text(json.dumps(init_report, indent=1))
    data_digest = splits["train"].digest
    best_key, val_hist, step, start = None, [], 0, 0
    if resume and (out / "last.pt").exists():
        ck = load_checkpoint(out / "last.pt", map_location=device)
        _check_resume(ck, config, data_digest, out / "last.pt")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, start, val_hist = int(ck["step"]), int(ck["epoch"]), list(ck["val"])
        best_key = tuple(ck["best_key"])
    log = StepLog(out / "log.jsonl", True, keep_until_step=step)

    def state(epoch: int) -> dict:
        return {"kind": "classifier", "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "epoch": epoch, "n_classes": n_classes, "config": dataclasses.asdict(config),
                "data_digest": data_digest, "val": val_hist, "best_key": list(best_key or ())}

    steps_per_epoch = max(1, len(keys) // config.batch_size)
    with progress_bar(progress, "finetune") as bar:
        task = bar.add_task("", total=config.epochs * steps_per_epoch, completed=start * steps_per_epoch, status="")
        for epoch in range(start, config.epochs):
            model.train()
            stream = ShardStream(splits["train"], VolumeSample(config.augment, config.seed), config.batch_size,
                                 seed=config.seed, shuffle_buffer=config.shuffle_buffer, epoch=epoch, keys=keys,
                                 drop_last=len(keys) > config.batch_size, rank=0, world=1)
            t0 = time.perf_counter()
            pending = None  # (step, loss tensor, samples) of the step whose loss is not read yet

            def record(done: int, loss: torch.Tensor, n: int) -> None:
                nonlocal t0
                value = loss.item()
                dt, t0 = time.perf_counter() - t0, time.perf_counter()
                log.write({"step": done, "epoch": epoch + 1, "loss": value, "lr": config.lr,
                           "samples_per_s": n / dt})
                bar.update(task, advance=1, status=f"epoch {epoch + 1} loss {value:.4f}")

            for batch in make_loader(stream, config.workers, pin_memory=device.type == "cuda"):
                with autocast(device, config.amp):
                    logits = model(batch["volume"].to(device, non_blocking=True))
                loss = F.cross_entropy(logits.float(), batch["label"].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                # Read the previous step's loss, not this one's: on a GPU this step's kernels
                # then run while the loop fetches the next batch, instead of after it.
                if pending is not None:
                    record(*pending)
                pending = (step, loss.detach(), len(batch["label"]))
            if pending is not None:
                record(*pending)
            recalibrate_batchnorm(model, splits["train"], keys, config.batch_size, device, config.workers, config.amp)
            if "val" in splits:
                m = classification_metrics(*predict(model, splits["val"], config.batch_size, device,
                                                    config.workers, config.amp))
                val_hist.append({"epoch": epoch + 1, **m})
                log.write({"step": step, "epoch": epoch + 1, "val_acc": m["acc"], "val_auc": m["auc"]})
                key = (m["auc"] if m["auc"] is not None else -1.0, m["acc"])
            else:
                key = (epoch, 0.0)  # no validation split: keep the last epoch
            if best_key is None or key > best_key:
                best_key = key
                save_checkpoint(out / "best.pt", state(epoch + 1))
            save_checkpoint(out / "last.pt", state(epoch + 1))
    best = load_checkpoint(out / "best.pt", map_location=device)
    model.load_state_dict(best["model"])
    labels, scores = predict(model, splits["test"], config.batch_size, device, config.workers, config.amp)
    metrics = {**classification_metrics(labels, scores), "split": "test", "best_epoch": best["epoch"],
               "label_fraction": config.label_fraction, "n_train": len(keys)}
    _write_eval(out, metrics, labels, scores, f"test (best epoch {best['epoch']})")
    plot_curves(log.rows, out / "curves.png", ("loss", "val_auc"), "fine-tuning")
    summary = {"metrics": metrics, "val": val_hist, "n_train": len(keys), "n_classes": n_classes,
               "init_report": init_report, "checkpoint": str(out / "best.pt"), "out": str(out)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def evaluate(checkpoint: str | Path, shards: str | Path, out: str | Path | None = None,
             batch_size: int = 8, device: str = "auto", workers: int = 0) -> dict:
    """Evaluate a fine-tuned classifier checkpoint on one shard split.

    Parameters
    ----------
    checkpoint : path
        ``best.pt`` or ``last.pt`` of a fine-tuning run.
    shards : path
        A labelled split directory (with ``manifest.json``), or a labelled set
        directory, whose ``test/`` is then used.
    out : path, optional
        Where to write ``metrics.json`` and ``roc.png``.

    Returns
    -------
    dict: acc, auc, confusion, n, checkpoint, shards.
    """
    ck = load_checkpoint(checkpoint)
    if ck.get("kind") != "classifier":
        raise ValueError(f"{checkpoint}: not a fine-tuned classifier checkpoint (kind {ck.get('kind')!r}); "
                         "evaluate the best.pt of a `tcpc finetune` run")
    shards = split_or_set(shards, "test")
    data = open_shards(shards)
    cfg = ck["config"]
    dev = resolve_device(device)
    model = Classifier(build_encoder(cfg["arch"], cfg["width"]), int(ck["n_classes"]))
    model.load_state_dict(ck["model"])
    labels, scores = predict(model.to(dev), data, batch_size, dev, workers)
    if labels.max() >= scores.shape[1]:
        raise ValueError(f"{shards}: holds class {labels.max()} but the model knows {scores.shape[1]} classes")
    metrics = {**classification_metrics(labels, scores), "checkpoint": str(checkpoint), "shards": str(shards)}
    if out is not None:
        _write_eval(Path(out), metrics, labels, scores, shards.rstrip("/").rsplit("/", 1)[-1])
    return metrics
