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
            msg = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
            if "Original Traceback" in msg:  # raised in a loader worker: its own last line is the message
                msg = msg.strip().splitlines()[-1].split(": ", 1)[-1]
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


def _run_options(failures_default: str | None):
    """Parallelism and progress options shared by the stage commands, plus ``--failures`` when
    the command writes a failures report (``failures_default`` says where it goes otherwise)."""
    def decorate(fn):
        opts = [
            click.option("--workers", type=int, default=None, help="Worker processes [one per core]."),
            click.option("--scheduler", default=None, metavar="ADDRESS",
                         help="Address of a running dask scheduler (tcp://host:8786)."),
        ]
        if failures_default:
            opts.append(click.option("--failures", "failures_path", type=click.Path(dir_okay=False), default=None,
                                     help=f"JSON-lines report of failed cases [{failures_default}]."))
        opts.append(click.option("--progress/--no-progress", default=True, show_default=True,
                                 help="Live progress display."))
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return decorate


def _finish_stage(report, progress) -> None:
    """Print a stage's notes, its failures (unless the live display showed them) and summary; exit 1
    when a case failed."""
    for note in report.notes:
        click.echo(f"note: {note}")
    if not progress:  # the live display already named each failure as it happened
        for rec in report.failures:
            click.echo(f"failed {rec['case']}: {rec['error']}", err=True)
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", "out", required=True, help="Volume store to write (path or fsspec URL), e.g. volumes.zarr.")
@click.option("--clip", default=None, metavar="LO,HI",
              help="HU window applied before min/max normalisation, e.g. -1024,3071.")
@click.option("--spacing", default=None, metavar="S|Z,Y,X", help="Resample to this voxel size in mm.")
@click.option("--npy-spacing", default=None, metavar="Z,Y,X", help="Voxel size in mm of .npy/.npz inputs.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--irregular", type=click.Choice(["resample", "refuse"]), default="resample", show_default=True,
              help="Tilted or unevenly spaced DICOM series: resample onto a regular grid, or refuse.")
@click.option("--max-voxels", type=int, default=1 << 30, show_default=True, help="Refuse larger volumes.")
@_run_options("<STORE>.failures.jsonl")
@_friendly
def ingest(sources, out, clip, spacing, npy_spacing, dtype, irregular, max_voxels, workers, scheduler,
           failures_path, progress):
    """Read CT archives (DICOM, NIfTI, MetaImage, NRRD, NumPy) into a normalised Zarr volume store."""
    from tcpc_data.ingest.stage import IngestConfig, ingest as run_ingest

    config = IngestConfig(clip=_floats(clip, (2,), "--clip"), spacing_zyx=_floats(spacing, (1, 3), "--spacing"),
                          npy_spacing_zyx=_floats(npy_spacing, (1, 3), "--npy-spacing"), dtype=dtype,
                          irregular=irregular, max_voxels=max_voxels)
    failures_path = failures_path or f"{str(out).rstrip('/')}.failures.jsonl"
    report = run_ingest(list(sources), out, config, workers=workers, scheduler=scheduler,
                        progress=progress, failures_path=failures_path)
    _finish_stage(report, progress)


def _shard_options(fn):
    """Options of the shard stage (shared by `tcpc shards` and `tcpc preprocess`)."""
    opts = [
        click.option("--crop-size", type=int, default=None,
                     help="Crop side S in voxels [64; an npz's image side]."),
        click.option("--cube-size", type=int, default=None,
                     help="Cube side c in voxels [16; 8 for 28^3 npz images]."),
        click.option("--overlap", type=float, default=0.5, show_default=True,
                     help="Fraction of a cube shared with its grid neighbour."),
        click.option("--path", "path_kind", type=click.Choice(["u", "straight", "block"]), default="u",
                     show_default=True, help="Path kind: u (TCPC), straight (3D CPC), block (Rubik/Jigsaw)."),
        click.option("--path-size", type=int, default=None,
                     help="U radius, straight length or block step in cubes [1, 3, touching blocks: 2 at overlap 0.5]."),
        click.option("--plane", type=click.Choice(["axial", "coronal", "sagittal"]), default=None,
                     help="Fix the path plane (default: drawn per sample)."),
        click.option("--opening", type=click.Choice(["up", "down", "left", "right"]), default=None,
                     help="Fix the path opening (default: drawn per sample)."),
        click.option("--targets-per-crop", type=int, default=4, show_default=True,
                     help="Path samples drawn per crop."),
        click.option("--target-radius", type=int, default=1, show_default=True,
                     help="Targets within this many cubes of the crop centre (-1: anywhere the path fits)."),
        click.option("--candidates-per-case", type=int, default=None,
                     help="Use the best K candidates of each case [all]."),
        click.option("--background", type=float, default=-1.0, show_default=True,
                     help="Value of crop voxels outside the volume."),
        click.option("--shard-size", type=int, default=1000, show_default=True, help="Samples per shard."),
        click.option("--name", default=None, help="Shard file prefix [tcpc; labelled]."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of every draw."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _shard_config(kw: dict, side: int | None = None):
    """Build a ShardConfig from the shard options; ``side`` is an npz image side (crop = image)."""
    from tcpc_data.shards.labelled import pretrain_config_for
    from tcpc_data.shards.pretrain import ShardConfig
    fields = dict(overlap=kw["overlap"], path=kw["path_kind"], path_size=kw["path_size"], plane=kw["plane"],
                  opening=kw["opening"], targets_per_crop=kw["targets_per_crop"],
                  target_radius=None if kw["target_radius"] < 0 else kw["target_radius"],
                  candidates_per_case=kw["candidates_per_case"], background=kw["background"],
                  shard_size=kw["shard_size"], name=kw["name"] or "tcpc", seed=kw["seed"])
    if kw["crop_size"] is not None:
        fields["crop_size"] = kw["crop_size"]
    if kw["cube_size"] is not None:
        fields["cube_size"] = kw["cube_size"]
    return pretrain_config_for(side, **fields) if side is not None else ShardConfig(**fields)


def _labelled_config(kw: dict):
    """A LabelledConfig from the shard options (crop side 64 unless given)."""
    from tcpc_data.shards.labelled import LabelledConfig
    return LabelledConfig(crop_size=kw["crop_size"] or 64, background=kw["background"],
                          shard_size=kw["shard_size"], name=kw["name"] or "labelled")


def _print_run(report, manifest, out) -> None:
    click.echo(report.summary())
    t = manifest["totals"]
    click.echo(f"{out}: {t['samples']} samples in {t['shards']} shards from {t['cases']} cases "
               f"(manifest {manifest['digest'][:12]})")


@main.command()
@click.argument("source")
@click.option("--out", "out", required=True, help="Shard directory: a path or an fsspec URL (s3://bucket/shards).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV case,z,y,x,label: labelled crops for fine-tuning instead of path samples.")
@click.option("--task", type=click.Choice(["pretrain", "finetune"]), default=None,
              help="npz only: finetune (labelled split sets, default) or pretrain (path samples of train images).")
@click.option("--cases", default=None, help="Comma-separated case ids [all complete cases].")
@_shard_options
@_run_options("OUT/failures-shards.jsonl; ./failures-shards.jsonl for a URL")
@_friendly
def shards(source, out, labels, task, cases, workers, scheduler, failures_path, progress, **kw):
    """Write WebDataset shards from a volume STORE or a MedMNIST .npz SOURCE.

    A store gives U-path (or straight/block) pretraining samples around each
    candidate, or with --labels, labelled crops. An .npz gives one labelled
    shard set per official split in OUT/train, OUT/val, OUT/test.
    """
    from tcpc_data.shards.shardset import is_remote

    out = out.rstrip("/")
    failures_path = failures_path or ("failures-shards.jsonl" if is_remote(out) else f"{out}/failures-shards.jsonl")
    run = dict(workers=workers, progress=progress, failures_path=failures_path)
    if str(source).endswith(".npz"):
        run["workers"] = workers or 1  # arrays travel in the payloads: processes rarely pay off
        from tcpc_data.shards.labelled import load_npz_split, write_npz_shards
        if labels or cases:
            raise click.UsageError("--labels and --cases apply to a volume store, not an .npz")
        if (task or "finetune") == "pretrain":
            side = load_npz_split(source, "train")[0].shape[1]
            results = write_npz_shards(source, out, task="pretrain", config=_shard_config(kw, side), **run)
        else:
            results = write_npz_shards(source, out, config=_labelled_config(kw), **run)
        for split, (rep, man) in results.items():
            _print_run(rep, man, f"{out}/{split}" if split != "pretrain" else out)
        ok = all(rep.ok for rep, _ in results.values())
    elif labels:
        from tcpc_data.shards.labelled import write_labelled_shards
        if task == "pretrain":
            raise click.UsageError("--labels writes fine-tuning shards; drop --task pretrain")
        rep, man = write_labelled_shards(source, labels, out, _labelled_config(kw), scheduler=scheduler, **run)
        _print_run(rep, man, out)
        ok = rep.ok
    else:
        from tcpc_data.shards.pretrain import write_shards
        if task == "finetune":
            raise click.UsageError("fine-tuning shards from a store need --labels CSV")
        case_list = [c.strip() for c in cases.split(",")] if cases else None
        rep, man = write_shards(source, out, _shard_config(kw), cases=case_list, scheduler=scheduler, **run)
        _print_run(rep, man, out)
        ok = rep.ok
    if not ok:
        sys.exit(1)


@main.command()
@click.argument("path")
@click.option("--png", type=click.Path(dir_okay=False), default=None,
              help="Write a montage: a slice with supervoxels and candidate boxes, or a sample's cubes.")
@click.option("--sample", type=int, default=0, show_default=True, help="Which shard sample to show.")
@_friendly
def inspect(path, png, sample):
    """Summarise a volume STORE, one case (STORE/<case>) or a shard directory."""
    from tcpc_data.overview import inspect_path
    click.echo(inspect_path(path, png=png, sample=sample))
    if png:
        click.echo(f"montage written to {png}")


def _field_help(cls, name: str) -> str:
    """The numpydoc 'Attributes' description of field ``name`` of config class ``cls``."""
    lines = (cls.__doc__ or "").splitlines()
    for i, line in enumerate(lines):
        if line.strip() == name:
            indent = len(line) - len(line.lstrip())
            desc = []
            for nxt in lines[i + 1:]:
                if not nxt.strip() or len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                desc.append(nxt.strip())
            return " ".join(desc)
    return ""


def _config_options(cls, stage: str, taken: set[str]) -> list[click.Option]:
    """One option per field of the frozen dataclass ``cls``; unset options keep the config's default.

    Tuples are given as comma-separated numbers; an option name already
    ``taken`` by another stage gets the stage as prefix.
    """
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1
        base = args[0] if optional else hint  # X | None -> X
        flag = f.name.replace("_", "-")
        if f"--{flag}" in taken:
            flag = f"{stage}-{flag}"
        taken.add(f"--{flag}")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = f"{_field_help(cls, f.name)} [{stage}; default: {default}]"
        dest = f"{stage}__{f.name}"
        if base is bool:
            out.append(click.Option([f"--{flag}/--no-{flag}", dest], default=None, help=help_))
        elif typing.get_origin(base) is tuple:
            out.append(click.Option([f"--{flag}", dest], default=None, metavar="A,B,..", help=help_))
        elif base in (int, float):
            out.append(click.Option([f"--{flag}", dest], type=base, default=None, help=help_))
        else:
            out.append(click.Option([f"--{flag}", dest], type=str, default=None, help=help_))
    return out


def _config_from(cls, stage: str, kw: dict):
    """Build ``cls`` from the options of ``stage`` that were given (tuples parsed from 'a,b,c')."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    given = {}
    for f in dataclasses.fields(cls):
        v = kw.pop(f"{stage}__{f.name}", None)
        if v is None:
            continue
        if "tuple" in str(hints[f.name]) and isinstance(v, str):
            elem = int if "tuple[int" in str(hints[f.name]) else float
            try:
                v = tuple(elem(x) for x in v.split(","))
            except ValueError:
                raise click.BadParameter(f"{f.name} takes numbers separated by commas, got {v!r}")
        given[f.name] = v
    return cls(**given)


class _StageOptionsCommand(click.Command):
    """A command that also takes every field of other stages' configs as options.

    The options are generated from the config dataclasses on first use, so
    ``tcpc --help`` and the other commands do not import those stages.
    """

    stage_configs = {"ingest": ("tcpc_data.ingest.stage", "IngestConfig"),
                     "supervoxels": ("tcpc_data.supervoxels.stage", "SupervoxelConfig")}

    def get_params(self, ctx):
        if not getattr(self, "_stage_options", False):
            import importlib
            self._stage_options = True
            taken = {o for p in self.params for o in p.opts}
            for stage, (module, name) in self.stage_configs.items():
                cls = getattr(importlib.import_module(module), name)
                self.params.extend(_config_options(cls, stage, taken))
        return super().get_params(ctx)


@main.command(cls=_StageOptionsCommand)
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Output directory: volumes.zarr, shards/, labelled/, failures-<stage>.jsonl.")
@click.option("--candidates-csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Crop centres from a CSV instead of SLIC's ranking.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV case,z,y,x,label: also write labelled crops to OUT/labelled.")
@_shard_options
@_run_options(None)  # one failures report per stage under OUT
@_friendly
def preprocess(sources, out, candidates_csv, labels, workers, scheduler, progress, **kw):
    """Ingest SOURCES, find supervoxels and candidates, and write shards: one command.

    Every option of `tcpc ingest` and the supervoxels stage is available too
    (see the options marked [ingest] and [supervoxels]).
    """
    from tcpc_data.ingest.stage import IngestConfig
    from tcpc_data.pipeline import preprocess as run_preprocess
    from tcpc_data.supervoxels.stage import SupervoxelConfig

    ingest_config = _config_from(IngestConfig, "ingest", kw)
    if kw.get("supervoxels__crop_size") is None and kw["crop_size"] is not None:
        kw["supervoxels__crop_size"] = kw["crop_size"]  # candidates spaced for the crops cut from them
    supervoxel_config = _config_from(SupervoxelConfig, "supervoxels", kw)
    report = run_preprocess(list(sources), out, ingest_config=ingest_config,
                            supervoxel_config=supervoxel_config, shard_config=_shard_config(kw),
                            candidates_csv=candidates_csv, labels_csv=labels, workers=workers,
                            scheduler=scheduler, progress=progress)
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


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
    from tcpc_train.pretraining import PretrainConfig, pretrain as run

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
    from tcpc_train.finetuning import FinetuneConfig, finetune as run

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
    from tcpc_train.finetuning import evaluate as run

    m = run(checkpoint, shards, out, batch_size=batch_size, device=device)
    _print_summary(f"evaluated {checkpoint} on {m['shards']} ({m['n']} samples)", {
        "ACC": f"{m['acc']:.4f}", "AUC": "n/a" if m["auc"] is None else f"{m['auc']:.4f}",
        "confusion": m["confusion"]})


@main.command()
@click.argument("config", type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="experiment directory; finished cells found there are skipped")
@click.option("--rows", default=None, help="Only these rows of CONFIG, comma-separated (e.g. scratch,tcpc).")
@click.option("--fractions", default=None, help="Only these label fractions of CONFIG, comma-separated.")
@click.option("--seeds", default=None, help="Only these fine-tuning seeds of CONFIG, comma-separated.")
@click.option("--external", type=click.Path(exists=True), default=None,
              help="Score every cell's selected checkpoint on this folder (labelled shard set); "
                   "writes OUT/external.jsonl.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_friendly
def experiment(config, out, rows, fractions, seeds, external, progress):
    """Run the paper's Table 1 protocol from a TOML CONFIG (see experiments/*.toml).

    Pretrains each method once per pretraining seed on the training images
    without labels, fine-tunes every (row, label fraction, seed) cell, and writes
    results.md (intervals, paired tests) and fig4_left.png. Rerunning resumes
    where it stopped; --rows/--fractions/--seeds run a subset of the cells.
    """
    from tcpc_train.apps.experiment import Selection, load_config, run_experiment

    def items(text, kind, name):
        try:
            return tuple(kind(v) for v in text.split(",")) if text else ()
        except ValueError:
            raise click.BadParameter(f"{name} must be a comma-separated list, got {text!r}") from None
    selection = Selection(rows=items(rows, str, "--rows"), fractions=items(fractions, float, "--fractions"),
                          seeds=items(seeds, int, "--seeds"), external=external)
    res = run_experiment(load_config(config), out, selection, progress=progress, log=click.echo)
    click.echo(res["table"])
    click.echo(f"{len(res['cells'])} cells ({res['skipped']} pieces found finished) in {res['seconds']:.0f} s; "
               f"table in {out}/results.md, plots {', '.join(res['plots'])}"
               + (f", external scores in {res['external']}" if res["external"] else ""))


@main.command()
@click.argument("store")
@click.option("--n-segments", type=int, default=None, help="Approximate supervoxels per body [2000].")
@click.option("--compactness", type=float, default=None, help="Intensity/space balance of SLIC [0.1].")
@click.option("--max-num-iter", type=int, default=None, help="k-means iterations [10].")
@click.option("--sigma", type=float, default=None, help="Gaussian smoothing before SLIC, mm with spacing [10].")
@click.option("--use-spacing/--no-use-spacing", default=None, help="Weight distances and sigma by voxel spacing [on].")
@click.option("--enforce-connectivity/--no-enforce-connectivity", default=None,
              help="Make each supervoxel one connected piece [on].")
@click.option("--min-size-factor", type=float, default=None, help="Merge pieces below this x mean size [0.5].")
@click.option("--max-size-factor", type=float, default=None, help="Cut pieces above this x mean size [3].")
@click.option("--body-threshold-hu", type=float, default=None, help="Body mask: tissue above this HU [-500].")
@click.option("--body-opening-mm", type=float, default=None, help="Body mask: opening radius in mm [3].")
@click.option("--top-k", type=int, default=None, help="Crop centres kept per case [32].")
@click.option("--crop-size", type=int, default=None, help="Crop side in voxels, for suppression [64].")
@click.option("--candidates-csv", type=click.Path(dir_okay=False), default=None,
              help="Centres from a CSV (case,z,y,x voxels or case,z_mm,y_mm,x_mm) instead of the SLIC ranking.")
@click.option("--case", "cases", multiple=True, help="Only this case (repeatable).")
@_run_options("<STORE>.supervoxels-failures.jsonl")
@_friendly
def supervoxels(store, cases, workers, scheduler, failures_path, progress, candidates_csv, **fields):
    """Supervoxels, per-supervoxel table and ranked crop centres for every case of STORE."""
    import dataclasses

    from tcpc_data.supervoxels.stage import SupervoxelConfig
    from tcpc_data.supervoxels.stage import supervoxels as run_supervoxels

    given = {k: v for k, v in fields.items() if v is not None}
    config = dataclasses.replace(SupervoxelConfig(), **given)
    failures_path = failures_path or f"{str(store).rstrip('/')}.supervoxels-failures.jsonl"
    report = run_supervoxels(store, config, cases=list(cases) or None, candidates_csv=candidates_csv,
                             workers=workers, scheduler=scheduler, progress=progress,
                             failures_path=failures_path)
    _finish_stage(report, progress)


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="tcpc-demo", show_default=True,
              help="output directory")
@click.option("--cases", type=int, default=24, show_default=True, help="phantom CTs to generate")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--pretrain-steps", type=int, default=150, show_default=True)
@click.option("--finetune-epochs", type=int, default=12, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@_friendly
def demo(out, cases, seed, pretrain_steps, finetune_epochs, progress):
    """The whole pipeline on generated phantoms: preprocess, TCPC pretraining, fine-tuning.

    Prints test ACC and AUC of a classifier fine-tuned from TCPC and from scratch,
    and writes a picture of the pipeline's outputs (OUT/pipeline.png).
    """
    from tcpc_train.apps.demo import DemoConfig, results_table, run_demo

    cfg = DemoConfig(cases=cases, seed=seed, pretrain_steps=pretrain_steps, finetune_epochs=finetune_epochs)
    res = run_demo(out, cfg, progress=progress, log=click.echo)
    click.echo(results_table(res["rows"]))
    click.echo(f"picture of the pipeline: {res['picture']}  ({res['seconds']:.0f} s)")


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--nodules", type=click.Path(dir_okay=False), required=True,
              help="nodules.csv (patient_id,row,col,z_position_mm,diameter_mm,...)")
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--pretrain-steps", type=int, default=200, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@_friendly
def realct(sources, nodules, out, pretrain_steps, progress):
    """Real CT end to end: TCPC on the candidate crops of chest CTs, and the
    deep-layer feature maps of a nodule for a random, a TCPC and a fine-tuned encoder."""
    from tcpc_train.apps.realct import RealCTConfig, run_realct

    res = run_realct(sources, nodules, out, RealCTConfig(pretrain_steps=pretrain_steps), progress=progress,
                     log=click.echo)
    click.echo(f"feature maps: {res['figure']}  ({res['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
