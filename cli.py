"""The ``tcpc`` command: a thin click layer over tcpc_data and tcpc_train.

Each command parses options, builds a config, calls one library function and
prints a summary. Expected failures (bad input, missing files) become a
one-line message and exit status 2; a run in which some cases failed exits 1.
"""
from __future__ import annotations

import functools
import os
import sys

import click

from tcpc_data import __version__

# Errors a user can cause: reported in one line, never as a traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError)


def _friendly(fn):
    """Turn expected library errors into ``error: ...`` and exit status 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _USER_ERRORS as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            click.echo(f"error: {msg}", err=True)
            sys.exit(2)
    return wrapper


def _floats(text: str | None, n: tuple[int, ...], name: str) -> tuple[float, ...] | None:
    """Parse 'a' or 'a,b,c' into a tuple of floats whose length is one of ``n``."""
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{name} must be numbers separated by commas, got {text!r}")
    if len(vals) not in n:
        raise click.BadParameter(f"{name} takes {' or '.join(map(str, n))} numbers, got {len(vals)}")
    return vals


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tcpc")
def main():
    """tcpc: Task-related Contrastive Predictive Coding on 3D CT.

    Preprocess CT archives into sharded stores, pretrain a 3D CNN with TCPC,
    fine-tune and evaluate it. Start with `tcpc demo`.
    """


def _print_summary(title: str, rows: dict) -> None:
    click.echo(title)
    for k, v in rows.items():
        click.echo(f"  {k:<14} {v}")


@main.command()
@click.argument("shards", type=click.Path())
@click.option("--arch", type=click.Choice(["resnet18", "vgg"]), default="resnet18", show_default=True)
@click.option("--task", type=click.Choice(["tcpc", "cpc", "rubik", "jigsaw"]), default="tcpc", show_default=True,
              help="tcpc (U paths), cpc (straight paths), rubik / jigsaw (2x2x2 blocks)")
@click.option("--steps", type=int, default=1000, show_default=True)
@click.option("--out", type=click.Path(), required=True, help="run directory (resumes from its last.pt)")
@click.option("--width", type=float, default=1.0, show_default=True, help="channel multiplier (1/8 for a CPU)")
@click.option("--batch-size", type=int, default=16, show_default=True, help="samples per step and process")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--temperature", type=float, default=0.1, show_default=True)
@click.option("--own-negatives", is_flag=True, help="also contrast with the sample's own support cubes")
@click.option("--workers", type=int, default=2, show_default=True, help="loader processes")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--init", type=click.Path(), help="encoder weights to start from (cascade: external -> TCPC)")
@click.option("--checkpoint-every", type=int, default=100, show_default=True)
@click.option("--no-augment", is_flag=True, help="no random flips / rotations")
@click.option("--fresh", is_flag=True, help="ignore an existing last.pt in --out (default: resume)")
@_friendly
def pretrain(shards, arch, task, steps, out, width, batch_size, lr, temperature, own_negatives, workers, seed,
             device, init, checkpoint_every, no_augment, fresh):
    """Self-supervised pretraining on SHARDS (TCPC or a baseline). Run under torchrun for DDP."""
    from tcpc_train.pretrain import PretrainConfig, pretrain as run

    cfg = PretrainConfig(task=task, arch=arch, width=width, steps=steps, batch_size=batch_size, lr=lr,
                         temperature=temperature, own_negatives=own_negatives, workers=workers, seed=seed,
                         device=device, init=init, checkpoint_every=checkpoint_every, augment=not no_augment)
    s = run(shards, out, cfg, resume=not fresh, progress=True)
    if s["world_size"] > 1 and int(os.environ.get("RANK", 0)) != 0:
        return
    _print_summary(f"pretrained {task} ({arch}, width {width}) -> {out}", {
        "steps": f"{s['start_step']} -> {s['steps']}", "final loss": s["final_loss"],
        "chance loss": s["chance_loss"], "samples/s": s["samples_per_s"], "checkpoint": s["checkpoint"]})


@main.command()
@click.argument("labelled_shards", type=click.Path())
@click.option("--init", type=click.Path(), help="checkpoint or external state dict for the encoder")
@click.option("--scratch", is_flag=True, help="train from random initialisation")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--label-fraction", type=float, default=1.0, show_default=True, help="e.g. 0.01, 0.1, 1")
@click.option("--out", type=click.Path(), required=True)
@click.option("--arch", type=click.Choice(["resnet18", "vgg"]), default="resnet18", show_default=True)
@click.option("--width", type=float, default=1.0, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--no-augment", is_flag=True)
@_friendly
def finetune(labelled_shards, init, scratch, epochs, label_fraction, out, arch, width, batch_size, lr, workers,
             seed, device, no_augment):
    """Fine-tune a classifier on LABELLED_SHARDS/{train,val,test}; report test ACC and AUC."""
    from tcpc_train.finetune import FinetuneConfig, finetune as run

    if bool(init) == scratch:
        raise click.UsageError("give exactly one of --init CKPT or --scratch")
    cfg = FinetuneConfig(arch=arch, width=width, epochs=epochs, batch_size=batch_size, lr=lr,
                         label_fraction=label_fraction, init=init, workers=workers, seed=seed, device=device,
                         augment=not no_augment)
    s = run(labelled_shards, out, cfg, progress=True)
    rep = s["init_report"]
    m = s["metrics"]
    _print_summary(f"fine-tuned {arch} on {s['n_train']} samples ({label_fraction:g} of train) -> {out}", {
        "init": "scratch" if rep is None else
        f"{len(rep['matched']) + len(rep['adapted'])} matched, {len(rep['missing'])} missing, "
        f"{len(rep['unexpected'])} unexpected (see init_report.json)",
        "test ACC": f"{m['acc']:.4f}", "test AUC": "n/a" if m["auc"] is None else f"{m['auc']:.4f}",
        "confusion": m["confusion"], "checkpoint": s["checkpoint"]})


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.argument("shards", type=click.Path())
@click.option("--out", type=click.Path(), help="write metrics.json and roc.png here")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", default="auto", show_default=True)
@_friendly
def evaluate(checkpoint, shards, out, batch_size, device):
    """Evaluate a fine-tuned CHECKPOINT on SHARDS (a split directory, or a labelled set: its test/)."""
    from tcpc_train.finetune import evaluate as run

    m = run(checkpoint, shards, out, batch_size=batch_size, device=device)
    _print_summary(f"evaluated {checkpoint} on {m['shards']} ({m['n']} samples)", {
        "ACC": f"{m['acc']:.4f}", "AUC": "n/a" if m["auc"] is None else f"{m['auc']:.4f}",
        "confusion": m["confusion"]})


if __name__ == "__main__":
    main()
