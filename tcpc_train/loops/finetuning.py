"""Fine-tuning and evaluation of a 3D CNN classifier on labelled shard splits.

``finetune`` trains encoder + linear head on a seeded, stratified fraction of
``train`` (Adam, the paper's optimiser), keeps the weights with the best
validation AUC (then ACC), and evaluates them on ``test``. The encoder starts
from scratch, from a tcpc checkpoint (TCPC or a proxy task) or from any
external state dict, with a report of matched / missing / unexpected keys
(:mod:`tcpc_train.models.weights`); pretraining with ``init`` set and fine-tuning
from its checkpoint is the cascade external → TCPC → fine-tune.

The run is four pieces on one state (``_Run``): ``_setup`` (data checks, the
label subset, model, resume), ``_train_epoch`` (one pass through
:func:`tcpc_train.loops.runtime.optimiser_steps`, the prefetching step loop
pretraining uses too), ``_select`` (validation, ``best.pt``/``last.pt``) and
``_test``.

Under ``torchrun`` the model trains under DDP: each epoch the selected
training keys are dealt to the ranks by a seeded permutation (balanced to one
sample; every rank reads the training tars and decodes only its own samples),
the ranks step in lockstep (:func:`tcpc_train.loops.runtime.lockstep`), recalibrate
batch norm on their shares and average the statistics, and rank 0 alone
validates, writes files and tests while the others wait; every rank returns
rank 0's summary.

Outputs in ``out``: ``config.json``, ``init_report.json``, ``log.jsonl``
(per step: epoch, loss, lr, samples/s; per epoch: validation metrics) and the
same rows as a TensorBoard event file,
``last.pt`` and ``best.pt`` (plain-dict checkpoints), ``metrics.json`` (test
ACC, AUC, confusion matrix), ``roc.png``, ``curves.png``, ``report.html``.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from tcpc_data.outputs import claim_dir, has_files
from tcpc_train.loops.checkpoint import load_checkpoint, save_checkpoint
from tcpc_train.input.loader import (ShardSet, ShardStream, augment_volume, decode_labelled_sample, first_sample,
                               labelled_splits, make_loader, open_shards, raw_samples, read_label,
                               sample_rng, split_or_set)
from tcpc_train.report.html import run_report
from tcpc_train.evaluation.metrics import classification_metrics
from tcpc_train.models.encoders import ARCHS, Classifier, adopt_encoder, build_encoder
from tcpc_train.report.plots import plot_curves, plot_roc
from tcpc_train.report.tbevents import require_tensorboard
from tcpc_train.loops.pretraining import Arch, encoder_name
from tcpc_train.loops.runtime import (RuntimeConfig, StepLog, agree, autocast, average_over_ranks, barrier,
                                      claim_run, config_changes, init_distributed, loader_workers, lockstep,
                                      optimiser_steps, progress_bar, resolve_device, share_json, skip_counts)
from tcpc_train.models.weights import load_encoder_weights


# Fine-tuning's runtime defaults: a larger shuffle buffer than pretraining's (labelled sets are
# small and often sorted by class). Callers change fields of it with dataclasses.replace.
FINETUNE_RUNTIME = RuntimeConfig(shuffle_buffer=512)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings (saved with the checkpoints and as ``config.json``)."""

    arch: Arch = field(default="resnet18", metadata={
        "help": "Encoder architecture; must match --init when it is a tcpc checkpoint."})
    width: float = field(default=1.0, metadata={"help": "Channel multiplier of the encoder."})
    epochs: int = field(default=10, metadata={"help": "Passes over the selected training samples."})
    batch_size: int = field(default=8, metadata={"help": "Samples per step (at least 2: batch norm)."})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay."})
    label_fraction: float = field(default=1.0, metadata={
        "help": "Share of the training labels used, in (0, 1]: per class round(fraction * n), at least 1, seeded."})
    init: str | None = field(default=None, metadata={
        "help": "Checkpoint or external state dict for the encoder; none: train from scratch."})
    augment: bool = field(default=True, metadata={"help": "Random flips / 90-degree rotations of training volumes."})
    runtime: RuntimeConfig = field(default=FINETUNE_RUNTIME, metadata={
        "help": "How the run executes."})

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if not 0 < self.label_fraction <= 1:
            raise ValueError(f"label fraction must be in (0, 1], got {self.label_fraction}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1, batch_size >= 2 (batch norm)")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        self.runtime.validate()


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """How a fine-tuned classifier is scored (the runtime's seed and shuffle buffer are unused:
    every sample is scored once, in a fixed order)."""

    batch_size: int = field(default=8, metadata={"help": "Samples per forward pass."})
    runtime: RuntimeConfig = field(default=RuntimeConfig(), metadata={"help": "How the run executes."})


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
            workers: int = 0, amp: bool = True, skip_bad: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), class log-probabilities (N, K), float64) of every sample of ``data``, in a fixed order.

    Log-probabilities, not probabilities: a confident model's float32
    probabilities round to exactly 0 and 1, every sample then ties and the AUC
    reads 0.5 (seen with full-width networks fine-tuned on 12 labels); their
    logarithms, and the logit differences built from them, keep the ranking. ``skip_bad``: leave out
    the samples that fail to load (:class:`tcpc_train.input.loader.ShardStream`).
    """
    model.eval()
    stream = ShardStream(data, VolumeSample(False, 0), batch_size, shuffle_buffer=1, epoch=0, rank=0, world=1,
                         skip_bad=skip_bad)
    labels, scores = [], []
    for batch in make_loader(stream, workers, pin_memory=device.type == "cuda"):
        with autocast(device, amp):
            logits = model(batch["volume"].to(device, non_blocking=True))
        scores.append(F.log_softmax(logits.double(), 1).cpu().numpy())
        labels.append(batch["label"].numpy())
    return np.concatenate(labels), np.concatenate(scores)


def _check_resume(ck: dict, cfg: FinetuneConfig, data_digest: str, path: Path, encoder: str | None) -> None:
    diff = config_changes(ck.get("config", {}), dataclasses.asdict(cfg),
                          {"epochs", "runtime.device", "runtime.workers", "runtime.skip_bad_samples"})
    if ck.get("encoder") != encoder:
        diff["encoder"] = (ck.get("encoder") or cfg.arch, encoder or cfg.arch)
    if ck.get("kind") != "classifier" or diff:
        was = ", ".join(f"{k}: {old!r}" for k, (old, _) in sorted(diff.items())) or "not a classifier"
        raise ValueError(f"{path} holds another run ({was});"
                         " resume with the same settings or choose a new output directory")
    if ck.get("data_digest") != data_digest:
        raise ValueError(f"{path} was trained on another training split (manifest digest differs); "
                         "choose a new output directory")


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, data: ShardSet, keys: frozenset, batch_size: int,
                          device: torch.device, workers: int = 0, amp: bool = True, max_batches: int = 50,
                          skip_bad: bool = False) -> None:
    """Recompute batch-norm running statistics as exact averages over (up to ``max_batches``) training batches.

    With few, fast-changing steps the momentum averages lag the weights, and
    evaluation-mode outputs drift from the training-mode ones (seen here:
    AUC 1.0 but ACC 0.5 on a separable set); "precise BN" removes the lag.
    ``skip_bad``: leave out the samples that fail to load.

    Under DDP every rank runs this on its own ``keys`` (its share), in
    lockstep (SyncBatchNorm's forward is a collective), and the ranks'
    statistics are then averaged: with equal batch counts, the average over
    all ranks' batches, as one process would compute it.
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
                         drop_last=len(keys) > batch_size, rank=0, world=1, skip_bad=skip_bad)
    for i, batch in enumerate(lockstep(iter(make_loader(stream, workers)))):
        if i == max_batches:
            break
        with autocast(device, amp):
            model(batch["volume"].to(device, non_blocking=True))
    for m, mom in zip(bns, saved):
        m.momentum = mom
        average_over_ranks(m.running_mean, m.running_var)
    model.eval()


def _write_eval(out: Path, metrics: dict, labels: np.ndarray, scores: np.ndarray, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plot_roc(labels, scores, out / "roc.png", title)


@dataclasses.dataclass
class _Run:
    """A fine-tuning run in progress: its data, model, optimiser and selection state."""

    config: FinetuneConfig
    out: Path
    device: torch.device
    splits: dict[str, ShardSet]
    keys: frozenset  # the selected training samples
    n_classes: int
    model: Classifier
    net: torch.nn.Module  # the model, under DistributedDataParallel when there are several ranks
    opt: torch.optim.Optimizer
    init_report: dict | None
    log: StepLog
    rank: int
    world: int
    encoder: str | None  # a user's encoder class (None: built from arch and width)
    step: int = 0  # optimiser steps done
    start: int = 0  # epochs done before this process
    val: list = dataclasses.field(default_factory=list)  # per-epoch validation metrics
    best_key: tuple | None = None  # (val AUC, val ACC) of best.pt

    @property
    def workers(self) -> int:
        """Loader processes for this run's device."""
        return loader_workers(self.config.runtime.workers, self.device)

    def state(self, epoch: int) -> dict:
        return {"kind": "classifier", "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "step": self.step, "epoch": epoch, "n_classes": self.n_classes,
                "config": dataclasses.asdict(self.config), "data_digest": self.splits["train"].digest,
                "val": self.val, "best_key": list(self.best_key or ()), "encoder": self.encoder}


def _setup(labelled: str | Path, out: str | Path, config: FinetuneConfig, resume: bool,
           encoder: torch.nn.Module | None, tensorboard: bool) -> _Run:
    """Check the data, select the training samples, build the model and resume from ``out/last.pt``."""
    config.validate()
    if tensorboard:
        require_tensorboard()
    rt = config.runtime
    splits = labelled_splits(labelled)
    out = Path(out)
    device = resolve_device(rt.device)
    for split in splits.values():  # wrong layout: a clear error before workers start
        try:
            VolumeSample(False, 0)(first_sample(split), 0)
        except ValueError:
            if not rt.skip_bad_samples:  # else the loader counts it, or names it if none is usable
                raise
    train_labels = read_labels(splits["train"])
    if len(set(train_labels.values())) < 2:
        raise ValueError(f"{splits['train'].root}: the training split holds a single class; need at least two")
    keys = stratified_fraction(train_labels, config.label_fraction, rt.seed)
    claim_run(out, "finetune-run", (labelled, config.init), "label_fraction")  # the data checked first

    if encoder is not None:
        adopt_encoder(encoder, decode_labelled_sample(first_sample(splits["train"]))["volume"].shape)
    rank, world = init_distributed(device)
    if len(keys) < world:
        raise ValueError(f"{len(keys)} selected training samples for {world} ranks; use fewer ranks or a larger "
                         "label fraction")
    main = rank == 0
    torch.manual_seed(rt.seed)
    n_classes = max(train_labels.values()) + 1
    expect = None if encoder is not None else {"arch": config.arch, "width": config.width}
    encoder_id = encoder_name(encoder)
    encoder = encoder if encoder is not None else build_encoder(config.arch, config.width)
    init_report = load_encoder_weights(encoder, config.init, expect) if config.init else None
    model = Classifier(encoder, n_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
        (out / "init_report.json").write_text(json.dumps(init_report, indent=1))
    done = dict(step=0, start=0, val=[], best_key=None)
    if resume and (out / "last.pt").exists():
        ck = load_checkpoint(out / "last.pt", map_location=device)
        _check_resume(ck, config, splits["train"].digest, out / "last.pt", encoder_id)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        done = dict(step=int(ck["step"]), start=int(ck["epoch"]), val=list(ck["val"]), best_key=tuple(ck["best_key"]))
    agree(done["step"], "the step to resume from")
    log = StepLog(out / "log.jsonl", main, keep_until_step=done["step"], tensorboard=tensorboard)
    net = model
    if world > 1:
        if device.type == "cuda":  # few samples per GPU: batch statistics over all ranks
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = DistributedDataParallel(model)
    return _Run(config, out, device, splits, keys, n_classes, model, net, opt, init_report, log, rank, world,
                encoder_id, **done)


def rank_keys(keys: frozenset, seed: int, epoch: int, rank: int, world: int) -> frozenset:
    """Rank ``rank``'s share of ``keys`` in ``epoch``: every ``world``-th of a (seed, epoch)-seeded
    permutation of them (shares differ by at most one key, cover ``keys`` and do not overlap)."""
    if world == 1:
        return keys
    order = sorted(keys)
    return frozenset(order[i] for i in np.random.default_rng([seed, epoch]).permutation(len(order))[rank::world])


def _train_epoch(run: _Run, epoch: int, advance) -> None:
    """One pass over the selected training samples (order a pure function of seed and epoch), then
    precise batch-norm statistics; ``advance(status)`` after every step."""
    cfg, rt = run.config, run.config.runtime
    run.net.train()
    mine = rank_keys(run.keys, rt.seed, epoch, run.rank, run.world)
    stream = ShardStream(run.splits["train"], VolumeSample(cfg.augment, rt.seed), cfg.batch_size, seed=rt.seed,
                         shuffle_buffer=rt.shuffle_buffer, epoch=epoch, keys=mine,
                         drop_last=len(mine) > cfg.batch_size, rank=0, world=1, skip_bad=rt.skip_bad_samples)
    loader = make_loader(stream, run.workers, pin_memory=run.device.type == "cuda")
    batches, skipped_in = skip_counts(lockstep(iter(loader)))

    def loss_of(batch: dict) -> torch.Tensor:
        return F.cross_entropy(run.net(batch["volume"]).float(), batch["label"])

    for value, lr, dt, n in optimiser_steps(loss_of, run.opt, batches, run.device, lambda i: cfg.lr, rt.amp):
        run.step += 1
        run.log.write({"step": run.step, "epoch": epoch + 1, "loss": value, "lr": lr,
                       "samples_per_s": n * run.world / dt, "skipped": skipped_in()})
        advance(f"epoch {epoch + 1} loss {value:.4f}")
    recalibrate_batchnorm(run.model, run.splits["train"], mine, cfg.batch_size, run.device, run.workers, rt.amp,
                          skip_bad=rt.skip_bad_samples)


def _select(run: _Run, epoch: int) -> None:
    """Score epoch ``epoch`` on ``val`` (AUC, then ACC; the last epoch without ``val``), keep the best
    weights in ``best.pt`` and the run's state in ``last.pt`` (rank 0; the others wait for it)."""
    if run.rank == 0:
        _select_here(run, epoch)
    barrier()


def _select_here(run: _Run, epoch: int) -> None:
    cfg, rt = run.config, run.config.runtime
    if "val" in run.splits:
        m = classification_metrics(*predict(run.model, run.splits["val"], cfg.batch_size, run.device,
                                            run.workers, rt.amp, rt.skip_bad_samples))
        run.val.append({"epoch": epoch + 1, **m})
        run.log.write({"step": run.step, "epoch": epoch + 1, "val_acc": m["acc"], "val_auc": m["auc"]})
        key = (m["auc"] if m["auc"] is not None else -1.0, m["acc"])
    else:
        key = (epoch, 0.0)
    if run.best_key is None or key > run.best_key:
        run.best_key = key
        save_checkpoint(run.out / "best.pt", run.state(epoch + 1))
    save_checkpoint(run.out / "last.pt", run.state(epoch + 1))


def _test(run: _Run) -> dict:
    """Evaluate ``best.pt`` on ``test``; write metrics, ROC, curves and the summary (rank 0; every rank
    returns its summary)."""
    return share_json(_test_here(run) if run.rank == 0 else None)


def _test_here(run: _Run) -> dict:
    cfg, rt = run.config, run.config.runtime
    best = load_checkpoint(run.out / "best.pt", map_location=run.device)
    run.model.load_state_dict(best["model"])
    labels, scores = predict(run.model, run.splits["test"], cfg.batch_size, run.device, run.workers, rt.amp,
                             rt.skip_bad_samples)
    metrics = {**classification_metrics(labels, scores), "split": "test", "best_epoch": best["epoch"],
               "label_fraction": cfg.label_fraction, "n_train": len(run.keys)}
    _write_eval(run.out, metrics, labels, scores, f"test (best epoch {best['epoch']})")
    plot_curves(run.log.rows, run.out / "curves.png", ("loss", "val_auc"), "fine-tuning")
    summary = {"metrics": metrics, "val": run.val, "n_train": len(run.keys), "n_classes": run.n_classes,
               "init_report": run.init_report, "checkpoint": str(run.out / "best.pt"), "out": str(run.out),
               "skipped_samples": sum(r.get("skipped", 0) for r in run.log.rows), "world_size": run.world,
               "encoder": run.encoder}
    (run.out / "summary.json").write_text(json.dumps(summary, indent=1))
    run_report(run.out / "report.html", "fine-tuning", config=dataclasses.asdict(cfg), rows=run.log.rows,
               summary=summary, metrics=metrics, labels=labels, scores=scores, lead=str(run.out))
    return summary


def finetune(labelled: str | Path, out: str | Path, config: FinetuneConfig = FinetuneConfig(),
             resume: bool = True, progress: bool = False, tensorboard: bool = False,
             encoder: torch.nn.Module | None = None) -> dict:
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
        but ``epochs``/``runtime.device``, same data) instead of starting over.
        Epoch e's order is a pure function of (seed, e), so the resumed run
        matches an uninterrupted one; a partly done epoch is redone.
    progress : bool
        Show a progress bar (rank 0).
    tensorboard : bool
        Also write the log rows as a TensorBoard event file in ``out`` (rank 0); needs the
        tensorboard package (checked before any work starts).
    encoder : nn.Module, optional
        Your own encoder instead of ``config.arch``/``config.width`` (any
        module mapping (N, 1, S, S, S) to features; see
        :func:`tcpc_train.models.encoders.adopt_encoder`); ``config.init`` loads into it
        by parameter name. Checkpoints record its class; :func:`evaluate` and a
        resume need it again.

    Returns
    -------
    dict summary: ``metrics`` (test acc, auc, confusion, n), ``val`` (per-epoch
    validation metrics), ``n_train`` (selected samples), ``n_classes``,
    ``init_report``, ``checkpoint`` (best.pt), ``out``, ``skipped_samples``
    (training samples dropped by ``runtime.skip_bad_samples``, over the log's steps),
    ``world_size``, ``encoder`` (the class of a user's encoder, else None).
    """
    run = _setup(labelled, out, config, resume, encoder, tensorboard)
    steps_per_epoch = max(1, len(run.keys) // run.world // config.batch_size)
    with progress_bar(progress and run.rank == 0, "finetune") as bar:
        task = bar.add_task("", total=config.epochs * steps_per_epoch, completed=run.start * steps_per_epoch,
                            status="")
        for epoch in range(run.start, config.epochs):
            _train_epoch(run, epoch, lambda status: bar.update(task, advance=1, status=status))
            _select(run, epoch)
    return _test(run)


def evaluate(checkpoint: str | Path, shards: str | Path, out: str | Path | None = None,
             config: EvaluateConfig = EvaluateConfig(), encoder: torch.nn.Module | None = None) -> dict:
    """Evaluate a fine-tuned classifier checkpoint on one shard split (with ``out``: metrics, ROC, report).

    Parameters
    ----------
    checkpoint : path
        ``best.pt`` or ``last.pt`` of a fine-tuning run.
    shards : path
        A labelled split directory (with ``manifest.json``), or a labelled set
        directory, whose ``test/`` is then used.
    out : path, optional
        Where to write ``metrics.json``, ``roc.png`` and ``report.html``.
    config : EvaluateConfig
    encoder : nn.Module, optional
        The encoder class the checkpoint was fine-tuned with, when it was a
        user's (its weights come from the checkpoint).

    Returns
    -------
    dict: acc, auc, confusion, n, checkpoint, shards.
    """
    ck = load_checkpoint(checkpoint)
    if ck.get("kind") != "classifier":
        raise ValueError(f"{checkpoint}: not a fine-tuned classifier checkpoint (kind {ck.get('kind')!r}); "
                         "evaluate the best.pt of a `tcpc finetune` run")
    shards = split_or_set(shards, "test")
    if out is not None:  # before the work: a refused folder costs nothing
        claim_dir(out, "evaluation", inputs=(checkpoint, shards), also=("finetune-run",), what="evaluation folder",
                  legacy=has_files("metrics.json"))
    data = open_shards(shards)
    cfg = ck["config"]
    rt = config.runtime
    rt.validate()
    dev = resolve_device(rt.device)
    if ck.get("encoder") != encoder_name(encoder):
        raise ValueError(f"{checkpoint} was fine-tuned with the encoder {ck.get('encoder') or cfg['arch']!r}; "
                         f"pass that encoder (got {encoder_name(encoder) or 'none'})")
    if encoder is not None:
        adopt_encoder(encoder, decode_labelled_sample(first_sample(data))["volume"].shape)
    model = Classifier(encoder if encoder is not None else build_encoder(cfg["arch"], cfg["width"]),
                       int(ck["n_classes"]))
    model.load_state_dict(ck["model"])
    labels, scores = predict(model.to(dev), data, config.batch_size, dev, loader_workers(rt.workers, dev), rt.amp,
                             rt.skip_bad_samples)
    if labels.max() >= scores.shape[1]:
        raise ValueError(f"{shards}: holds class {labels.max()} but the model knows {scores.shape[1]} classes")
    metrics = {**classification_metrics(labels, scores), "checkpoint": str(checkpoint), "shards": str(shards)}
    if out is not None:
        _write_eval(Path(out), metrics, labels, scores, shards.rstrip("/").rsplit("/", 1)[-1])
        run_report(Path(out) / "report.html", "evaluation", config=cfg, metrics=metrics, labels=labels,
                   scores=scores, lead=f"{checkpoint} on {shards}; configuration: the checkpoint's training run")
    return metrics
