"""The ``tcpc`` command: a thin click layer over tcpc_data and tcpc_train.

Each command parses options, builds its config, calls one library function
and prints a summary. Every setting is an option generated from a field of a
config dataclass (:func:`config_options`): the name from the field (or its
metadata's ``option``), the help from its metadata's ``help``, the click type
from its annotation, the default from the dataclass. A field of the same name
in two configs of one command is one option setting both. Every option can
also be set as ``TCPC_<COMMAND>_<OPTION>`` in the environment.

Expected failures (bad input, missing files) become a one-line message and
exit status 2; a run in which some cases failed exits 1.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import types
import typing
from pathlib import Path

import click
from click.core import ParameterSource

from tcpc_data import __version__

# Errors a user can cause or fix (bad input, missing files, a full disk): reported in one line, never as a
# traceback.
_USER_ERRORS = (ValueError, OSError, KeyError)


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


# ---------------------------------------------------------------------------------------------
# Options from config dataclasses
# ---------------------------------------------------------------------------------------------

class _Numbers(click.ParamType):
    """Comma-separated values (numbers, or names) -> a tuple; ``n`` of them when the tuple's length is fixed."""

    name = "numbers"

    def __init__(self, elem: type, n: int | None):
        self.elem, self.n = elem, n

    def get_metavar(self, param, ctx) -> str:
        letter = {int: "I", float: "X", str: "NAME"}[self.elem]
        return ",".join([letter] * self.n) if self.n else f"{letter}[,{letter}...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        opt = param.opts[0] if param is not None else "value"
        try:
            vals = tuple(self.elem(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{opt} takes numbers separated by commas, got {value!r}", param, ctx)
        if self.n is not None and len(vals) != self.n:
            self.fail(f"{opt} takes {self.n} numbers, got {len(vals)}", param, ctx)
        return vals


class _OrNone(click.ParamType):
    """An optional field's type: ``none`` gives None, anything else goes to ``inner``."""

    def __init__(self, inner: click.ParamType):
        self.inner, self.name = inner, inner.name

    def get_metavar(self, param, ctx) -> str:
        if isinstance(self.inner, click.Choice):
            return "[" + "|".join(map(str, self.inner.choices)) + "|none]"
        return self.inner.get_metavar(param, ctx) or self.inner.name.upper()

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return self.inner.convert(value, param, ctx)


def _click_type(hint) -> click.ParamType:
    """The click type of a field annotation (``Optional`` already removed)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return click.Choice([str(a) for a in args])
    if origin is tuple:
        fixed = not (len(args) == 2 and args[1] is Ellipsis)
        return _Numbers(args[0], len(args) if fixed else None)
    if hint in (int, float, str):
        return {int: click.INT, float: click.FLOAT, str: click.STRING}[hint]
    if hint is Path:
        return click.Path(path_type=Path)
    raise TypeError(f"no command-line type for {hint!r}")


def _optional(hint) -> tuple[object, bool]:
    """(X, True) for ``X | None``, else (hint, False)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return hint, False


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """A non-dataclass field of a config, reached through ``path`` from the config's root."""

    path: tuple[str, ...]
    field: dataclasses.Field
    hint: object
    default: object


def _leaves(cls, default=None, path: tuple[str, ...] = ()) -> list[_Leaf]:
    """Every settable field of config class ``cls`` (nested configs flattened), with its default
    taken from the instance ``default`` or else the class (``dataclasses.MISSING``: required)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name) if default is not None else f.default
        if dataclasses.is_dataclass(hints[f.name]):
            out += _leaves(hints[f.name], value, path + (f.name,))
        else:
            out.append(_Leaf(path + (f.name,), f, hints[f.name], value))
    return out


def _option_name(leaf: _Leaf) -> str:
    return leaf.field.metadata.get("option", leaf.field.name).replace("_", "-")


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def config_options(configs: dict[str, type], omit: tuple[str, ...] = ()) -> list[click.Option]:
    """Click options for every field of the config classes ``configs`` (name -> class).

    Parameters
    ----------
    configs
        Config dataclasses by the name :meth:`Settings.build` takes.
    omit
        Field names the command does not use.

    Each option takes its name from the field (``metadata["option"]`` may
    rename it), its help from ``metadata["help"]`` (required), its type from
    the annotation (Literal: a choice; tuple: comma-separated numbers; ``X |
    None``: ``none`` is a value; bool: a ``--x/--no-x`` flag) and shows the
    dataclass default. ``metadata["aliases"]`` adds hidden old names. Fields
    of the same name in several configs become one option that sets them all.
    """
    by_name: dict[str, list[tuple[str, _Leaf]]] = {}
    for key, cls in configs.items():
        for leaf in _leaves(cls):
            if leaf.field.name in omit:
                continue
            if "help" not in leaf.field.metadata:
                raise TypeError(f"{cls.__name__}.{'.'.join(leaf.path)} has no metadata help")
            by_name.setdefault(_option_name(leaf), []).append((key, leaf))
    options = []
    for name, uses in by_name.items():
        leaf = uses[0][1]
        if any(u.hint != leaf.hint for _, u in uses):
            raise TypeError(f"--{name} means fields of different types: {[u.hint for _, u in uses]}")
        base, optional = _optional(leaf.hint)
        dest = name.replace("-", "_")
        if leaf.default is dataclasses.MISSING:
            common = dict(required=True)
        elif len({_show(u.default) for _, u in uses}) == 1:
            common = dict(default=leaf.default, show_default=leaf.default is not None)
        else:  # one option, several defaults: say which is whose
            common = dict(default=None, show_default="; ".join(f"{_show(u.default)} for {k}" for k, u in uses))
        common["help"] = leaf.field.metadata["help"]
        if base is bool:
            options.append(click.Option([f"--{name}/--no-{name}", dest], **common))
            continue
        kind = _click_type(base)
        kind = _OrNone(kind) if optional else kind
        metavar = leaf.field.metadata.get("metavar")
        options.append(click.Option([f"--{name}", dest], type=kind, metavar=metavar, **common))
        for alias in leaf.field.metadata.get("aliases", ()):
            options.append(click.Option([f"--{alias}", f"{dest}__alias"], type=kind, default=None, hidden=True,
                                        allow_from_autoenv=False))
    return options


def _given(ctx: click.Context, names: set[str]) -> dict:
    """The values of options ``names`` set on the command line or in the environment (not the
    defaults), taken out of ``ctx.params``; a hidden alias counts as its option."""
    out = {}
    for name in names:
        value = ctx.params.pop(name, None)
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            out[name.removesuffix("__alias")] = value
    return out


def build_fields(cls, given: dict) -> dict:
    """The keyword arguments of config class ``cls`` that ``given`` (option dest -> value) sets;
    a nested config is its default with the given fields replaced."""
    nested: dict = {}
    for leaf in _leaves(cls):
        dest = _option_name(leaf).replace("-", "_")
        if dest in given:
            node = nested
            for part in leaf.path[:-1]:
                node = node.setdefault(part, {})
            node[leaf.path[-1]] = given[dest]
    return _nest(cls, nested)


def _nest(cls, fields: dict) -> dict:
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    return {k: dataclasses.replace(defaults[k], **_nest(hints[k], v)) if isinstance(v, dict) else v
            for k, v in fields.items()}


class Settings:
    """What a command was given: its configs' fields and the group's verbosity."""

    def __init__(self, classes: dict[str, type], given: dict, verbosity: int):
        self.classes, self.given, self.verbosity = classes, given, verbosity
        self.shown: set[str] = set()  # configs printed already (--verbose)

    def fields(self, key: str) -> dict:
        """The given fields of config ``key``, as keyword arguments of its class."""
        return build_fields(self.classes[key], self.given)

    def build(self, key: str):
        """Config ``key`` from its defaults and the given fields (printed with --verbose)."""
        config = self.classes[key](**self.fields(key))
        if self.verbosity > 1 and key not in self.shown:
            self.shown.add(key)
            click.echo(f"{key} config: {json.dumps(dataclasses.asdict(config), default=str)}")
        return config

    def say(self, message: str) -> None:
        """Print ``message`` unless --quiet."""
        if self.verbosity > 0:
            click.echo(message)

    def progress(self, key: str = "run") -> bool:
        """Whether to show a live display: asked for, and not --quiet."""
        return self.build(key).progress and self.verbosity > 0


def _load(spec) -> type:
    """A class, or ``"module:Class"`` imported now (so a command imports only its own stages)."""
    if isinstance(spec, str):
        import importlib
        module, name = spec.split(":")
        return getattr(importlib.import_module(module), name)
    return spec


class ConfigCommand(click.Command):
    """A command whose options are generated from config dataclasses (:func:`config_options`).

    The options are made on first use, so ``tcpc --help`` and the other
    commands do not import those configs' modules. The callback receives the
    keyword argument ``settings`` (:class:`Settings`) in place of the options.
    """

    def __init__(self, *args, configs: dict, omit: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.configs, self.omit, self.generated = configs, omit, None

    def get_params(self, ctx):
        if self.generated is None:
            self.classes = {k: _load(v) for k, v in self.configs.items()}
            self.generated = config_options(self.classes, self.omit)
            self.params.extend(self.generated)
        return super().get_params(ctx)

    def invoke(self, ctx):
        given = _given(ctx, {o.name for o in self.generated})
        ctx.params["settings"] = Settings(self.classes, given, ctx.find_root().meta.get("tcpc.verbosity", 1))
        return super().invoke(ctx)


@dataclasses.dataclass(frozen=True)
class Display:
    """How a command shows its work."""

    progress: bool = dataclasses.field(default=True, metadata={"help": "Live progress display."})


@dataclasses.dataclass(frozen=True)
class StageRun(Display):
    """How a data stage runs its cases (``tcpc_data.runner.run_cases``)."""

    workers: int | None = dataclasses.field(default=None, metadata={
        "help": "Worker processes; none: one per core."})
    scheduler: str | None = dataclasses.field(default=None, metadata={
        "help": "Address of a running dask scheduler (tcp://host:8786).", "metavar": "ADDRESS"})
    memory_limit: str | None = dataclasses.field(default=None, metadata={
        "help": "Memory of each worker process tcpc starts (4GiB, 500MB; bytes): a worker past it is restarted "
                "and its case retried once. None: the machine's memory shared between workers.",
        "metavar": "SIZE"})


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Where a training run writes, and whether it continues a run found there."""

    out: Path = dataclasses.field(metadata={"help": "Run directory (created)."})
    fresh: bool = dataclasses.field(default=False, metadata={
        "help": "Start over instead of resuming from the run directory's last.pt."})
    tensorboard: bool = dataclasses.field(default=False, metadata={
        "help": "Also write log.jsonl's rows as a TensorBoard event file in the run directory "
                "(needs the tensorboard extra: pip install 'tcpc[tensorboard]')."})


def _stage_run(settings: Settings) -> dict:
    run = settings.build("run")
    if run.memory_limit is not None:  # refused before any work starts
        from tcpc_data.runner import check_memory_limit
        check_memory_limit(run.memory_limit, run.scheduler)
    return dict(workers=run.workers, scheduler=run.scheduler, memory_limit=run.memory_limit,
                progress=settings.progress())


def _failures_option(default: str):
    return click.option("--failures", "failures_path", type=click.Path(dir_okay=False), default=None,
                        help=f"JSON-lines report of failed cases [{default}].")


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "TCPC"})
@click.version_option(__version__, prog_name="tcpc")
@click.option("-q", "--quiet", is_flag=True, help="Print only results and errors: no progress, notes or log lines.")
@click.option("-v", "--verbose", is_flag=True, help="Also print each command's resolved configs.")
@click.pass_context
def main(ctx, quiet, verbose):
    """tcpc: Task-related Contrastive Predictive Coding on 3D CT.

    Preprocess CT archives into sharded stores, pretrain a 3D CNN with TCPC,
    fine-tune and evaluate it. Start with `tcpc demo`. Every option can also
    be set as TCPC_<COMMAND>_<OPTION>, e.g. TCPC_INGEST_SPACING=1.
    """
    if quiet and verbose:
        raise click.UsageError("give --quiet or --verbose, not both")
    ctx.meta["tcpc.verbosity"] = 0 if quiet else 2 if verbose else 1


def _finish_stage(report, settings: Settings) -> None:
    """Print a stage's notes, its failures (unless the live display showed them) and summary; exit 1
    when a case failed."""
    for note in report.notes:
        settings.say(f"note: {note}")
    if not settings.progress():  # the live display already named each failure as it happened
        for rec in report.failures:
            click.echo(f"failed {rec['case']}: {rec['error']}", err=True)
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


@main.command(cls=ConfigCommand, configs={"ingest": "tcpc_data.ingest.stage:IngestConfig", "run": StageRun})
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", required=True, help="Volume store to write (path or fsspec URL), e.g. volumes.zarr.")
@_failures_option("<STORE>.failures.jsonl")
@_friendly
def ingest(sources, out, failures_path, settings):
    """Read CT archives (DICOM, NIfTI, MetaImage, NRRD, NumPy) into a normalised Zarr volume store."""
    from tcpc_data.ingest.stage import ingest as run_ingest

    report = run_ingest(list(sources), out, settings.build("ingest"), **_stage_run(settings),
                        failures_path=failures_path or f"{str(out).rstrip('/')}.failures.jsonl")
    _finish_stage(report, settings)


@main.command(cls=ConfigCommand,
              configs={"supervoxels": "tcpc_data.supervoxels.stage:SupervoxelConfig", "run": StageRun})
@click.argument("store")
@click.option("--candidates-csv", type=click.Path(dir_okay=False), default=None,
              help="Centres from a CSV (case,z,y,x voxels or case,z_mm,y_mm,x_mm) instead of the SLIC ranking.")
@click.option("--case", "cases", multiple=True, help="Only this case (repeatable).")
@_failures_option("<STORE>.supervoxels-failures.jsonl")
@_friendly
def supervoxels(store, candidates_csv, cases, failures_path, settings):
    """Supervoxels, per-supervoxel table and ranked crop centres for every case of STORE."""
    from tcpc_data.supervoxels.stage import supervoxels as run_supervoxels

    report = run_supervoxels(store, settings.build("supervoxels"), cases=list(cases) or None,
                             candidates_csv=candidates_csv, **_stage_run(settings),
                             failures_path=failures_path or f"{str(store).rstrip('/')}.supervoxels-failures.jsonl")
    _finish_stage(report, settings)


_SHARD_CONFIGS = {"shards": "tcpc_data.shards.pretrain:ShardConfig",
                  "labelled": "tcpc_data.shards.labelled:LabelledConfig"}


def _print_sets(results: dict) -> bool:
    """Print each shard set's report and totals; whether every one is complete."""
    for where, (report, manifest) in results.items():
        click.echo(report.summary())
        t = manifest["totals"]
        click.echo(f"{where}: {t['samples']} samples in {t['shards']} shards from {t['cases']} cases "
                   f"(manifest {manifest['digest'][:12]})")
    return all(report.ok for report, _ in results.values())


@main.command(cls=ConfigCommand, configs={**_SHARD_CONFIGS, "run": StageRun})
@click.argument("source")
@click.option("--out", required=True, help="Shard directory: a path or an fsspec URL (s3://bucket/shards).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Labels table (case,z,y,x,label; world mm; a nodules.csv; LUNA16 candidates.csv): labelled "
                   "crops, one set per split in OUT/<split> when it has a split column.")
@click.option("--split", default=None,
              help="Only the rows of this split of --labels; with --task pretrain, the cases of this split [train].")
@click.option("--task", type=click.Choice(["pretrain", "finetune"]), default=None,
              help="npz: finetune (labelled split sets, default) or pretrain (path samples of train images); "
                   "store with --labels: pretrain cuts path samples of the --split cases, labels unused.")
@click.option("--case", "cases", multiple=True, help="Only this case (repeatable) [all complete cases].")
@click.option("--cases", "case_list", default=None, hidden=True)  # the old comma-separated form of --case
@_failures_option("OUT/failures-shards.jsonl; ./failures-shards.jsonl for a URL")
@_friendly
def shards(source, out, labels, split, task, cases, case_list, failures_path, settings):
    """Write WebDataset shards from a volume STORE or a MedMNIST .npz SOURCE.

    A store gives U-path (or straight/block) pretraining samples around each
    candidate, or with --labels, labelled crops. An .npz gives one labelled
    shard set per official split in OUT/train, OUT/val, OUT/test; options left
    unset follow its images (crop = image side).
    """
    from tcpc_data.pipeline import write_shard_sets

    results = write_shard_sets(source, out, shard_fields=settings.fields("shards"),
                               labelled_fields=settings.fields("labelled"), labels_csv=labels, split=split,
                               task=task,
                               cases=[*cases, *(c.strip() for c in (case_list or "").split(",") if c)] or None,
                               failures_path=failures_path, **_stage_run(settings))
    sys.exit(0 if _print_sets(results) else 1)


@main.command()
@click.argument("path")
@click.option("--png", type=click.Path(dir_okay=False), default=None,
              help="Write a montage: a slice with supervoxels and candidate boxes, or a sample's cubes.")
@click.option("--sample", type=int, default=0, show_default=True, help="Which shard sample to show.")
@_friendly
def inspect(path, png, sample):
    """Summarise a volume STORE, one case (STORE/<case>) or a shard directory."""
    from tcpc_data.tools.overview import inspect_path
    click.echo(inspect_path(path, png=png, sample=sample))
    if png:
        click.echo(f"montage written to {png}")


@main.command()
@click.argument("path")
@_friendly
def verify(path):
    """Check a volume STORE, a shard set or a directory of split sets: digests, chunk checksums,
    shapes, attributes and tar integrity. Prints each problem; exit 1 if there is any."""
    from tcpc_data.tools.verify import verify as run_verify
    report = run_verify(path)
    for problem in report.problems:
        click.echo(f"problem: {problem}")
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


@main.command(cls=ConfigCommand, configs={"view": "tcpc_data.tools.view:ViewConfig"})
@click.argument("store")
@click.argument("case", required=False)
@click.option("--centres", type=click.Path(dir_okay=False), default=None,
              help="Centre table shown as points (case,z,y,x; case,z_mm,y_mm,x_mm; nodule table; LUNA16).")
@click.option("--screenshot", type=click.Path(dir_okay=False), default=None,
              help="Save the view to this PNG and close, instead of keeping the window open.")
@_friendly
def view(store, case, centres, screenshot, settings):
    """Open CASE of a volume STORE (default: its first case) in napari: the image in world mm,
    supervoxels and mask as label layers, candidate crop boxes and --centres points.
    Needs the napari extra: pip install 'tcpc[napari]'."""
    from tcpc_data.tools.view import open_viewer

    try:
        viewer = open_viewer(store, case, settings.build("view"), centres)
    except ModuleNotFoundError as exc:  # the napari extra is not installed: one line, like other user errors
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if screenshot:
        viewer.screenshot(path=screenshot, canvas_only=True)
        viewer.close()
        click.echo(f"view of {viewer.title.removeprefix('tcpc ')} written to {screenshot}")
        return
    import napari
    napari.run()


@main.command(cls=ConfigCommand, configs={"ingest": "tcpc_data.ingest.stage:IngestConfig",
                                          "supervoxels": "tcpc_data.supervoxels.stage:SupervoxelConfig",
                                          **_SHARD_CONFIGS, "run": StageRun})
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory: volumes.zarr, shards/, labelled/, failures-<stage>.jsonl.")
@click.option("--candidates-csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Crop centres from a CSV instead of SLIC's ranking.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV case,z,y,x,label: also write labelled crops to OUT/labelled.")
@_friendly
def preprocess(sources, out, candidates_csv, labels, settings):
    """Ingest SOURCES, find supervoxels and candidates, and write shards: one command.

    Takes the options of `tcpc ingest`, `tcpc supervoxels` and `tcpc shards`;
    --crop-size sizes the candidates' suppression, the path-sample crops and
    the labelled crops alike.
    """
    from tcpc_data.pipeline import preprocess as run_preprocess

    report = run_preprocess(list(sources), out, ingest_config=settings.build("ingest"),
                            supervoxel_config=settings.build("supervoxels"), shard_config=settings.build("shards"),
                            labelled_config=settings.build("labelled"), candidates_csv=candidates_csv,
                            labels_csv=labels, **_stage_run(settings))
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


def _print_summary(title: str, rows: dict) -> None:
    click.echo(title)
    for k, v in rows.items():
        click.echo(f"  {k:<14} {v}")


@main.command(cls=ConfigCommand, configs={"pretrain": "tcpc_train.loops.pretraining:PretrainConfig", "run": RunDir})
@click.argument("shards", type=click.Path())
@_friendly
def pretrain(shards, settings):
    """Self-supervised pretraining on SHARDS (TCPC or a baseline). Run under torchrun for DDP."""
    from tcpc_train.loops.pretraining import pretrain as run

    cfg, where = settings.build("pretrain"), settings.build("run")
    s = run(shards, where.out, cfg, resume=not where.fresh, progress=settings.verbosity > 0,
            tensorboard=where.tensorboard)
    if s["world_size"] > 1 and int(os.environ.get("RANK", 0)) != 0:
        return
    _print_summary(f"pretrained {cfg.task} ({cfg.arch}, width {cfg.width}) -> {where.out}", {
        "steps": f"{s['start_step']} -> {s['steps']}", "final loss": s["final_loss"],
        "chance loss": s["chance_loss"], "samples/s": s["samples_per_s"], "checkpoint": s["checkpoint"]})


@main.command(cls=ConfigCommand, configs={"finetune": "tcpc_train.loops.finetuning:FinetuneConfig", "run": RunDir})
@click.argument("labelled_shards", type=click.Path())
@click.option("--scratch", is_flag=True, help="Train from random initialisation (instead of --init).")
@_friendly
def finetune(labelled_shards, scratch, settings):
    """Fine-tune a classifier on LABELLED_SHARDS/{train,val,test}; report test ACC and AUC. DDP under torchrun."""
    from tcpc_train.loops.finetuning import finetune as run

    cfg, where = settings.build("finetune"), settings.build("run")
    if bool(cfg.init) == scratch:
        raise click.UsageError("give exactly one of --init CKPT or --scratch")
    s = run(labelled_shards, where.out, cfg, resume=not where.fresh, progress=settings.verbosity > 0,
            tensorboard=where.tensorboard)
    if s["world_size"] > 1 and int(os.environ.get("RANK", 0)) != 0:
        return
    rep = s["init_report"]
    m = s["metrics"]
    title = f"fine-tuned {cfg.arch} on {s['n_train']} samples ({cfg.label_fraction:g} of train) -> {where.out}"
    _print_summary(title, {
        "init": "scratch" if rep is None else
        f"{len(rep['matched']) + len(rep['adapted'])} matched, {len(rep['missing'])} missing, "
        f"{len(rep['unexpected'])} unexpected (see init_report.json)",
        "test ACC": f"{m['acc']:.4f}", "test AUC": "n/a" if m["auc"] is None else f"{m['auc']:.4f}",
        "confusion": m["confusion"], "checkpoint": s["checkpoint"]})


@main.command(cls=ConfigCommand, configs={"evaluate": "tcpc_train.loops.finetuning:EvaluateConfig"},
              omit=("seed", "shuffle_buffer"))
@click.argument("checkpoint", type=click.Path())
@click.argument("shards", type=click.Path())
@click.option("--out", type=click.Path(), help="Write metrics.json and roc.png here.")
@_friendly
def evaluate(checkpoint, shards, out, settings):
    """Evaluate a fine-tuned CHECKPOINT on SHARDS (a split directory, or a labelled set: its test/)."""
    from tcpc_train.loops.finetuning import evaluate as run

    m = run(checkpoint, shards, out, settings.build("evaluate"))
    _print_summary(f"evaluated {checkpoint} on {m['shards']} ({m['n']} samples)", {
        "ACC": f"{m['acc']:.4f}", "AUC": "n/a" if m["auc"] is None else f"{m['auc']:.4f}",
        "confusion": m["confusion"]})


@main.command(cls=ConfigCommand, configs={"selection": "tcpc_train.apps.experiment:Selection", "display": Display})
@click.argument("config", type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Experiment directory; finished cells found there are skipped.")
@_friendly
def experiment(config, out, settings):
    """Run the paper's Table 1 protocol from a TOML CONFIG (see experiments/*.toml).

    Pretrains each method once per pretraining seed on the training images
    without labels, fine-tunes every (row, label fraction, seed) cell, and writes
    results.md (intervals, paired tests) and fig4_left.png. Rerunning resumes
    where it stopped; --rows/--fractions/--seeds run a subset of the cells.
    """
    from tcpc_train.apps.experiment import load_config, run_experiment

    res = run_experiment(load_config(config), out, settings.build("selection"),
                         progress=settings.progress("display"), log=settings.say)
    click.echo(res["table"])
    click.echo(f"{len(res['cells'])} cells ({res['skipped']} pieces found finished) in {res['seconds']:.0f} s; "
               f"table in {out}/results.md, plots {', '.join(res['plots'])}, report {res['report']}"
               + (f", external scores in {res['external']}" if res["external"] else ""))


@main.command()
@click.argument("directories", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@_friendly
def report(directories):
    """(Re)write report.html of experiment or run DIRECTORIES from their files (runs and experiments write
    it themselves; this rebuilds it, e.g. for directories made before reports existed)."""
    from tcpc_train.report.html import rebuild_report
    for d in directories:
        click.echo(f"report written to {rebuild_report(d)}")


@main.command(cls=ConfigCommand, configs={"demo": "tcpc_train.apps.demo:DemoConfig", "display": Display})
@click.option("--out", type=click.Path(file_okay=False), default="tcpc-demo", show_default=True,
              help="Output directory.")
@_friendly
def demo(out, settings):
    """The whole pipeline on generated phantoms: preprocess, TCPC pretraining, fine-tuning.

    Prints test ACC and AUC of a classifier fine-tuned from TCPC and from scratch,
    and writes a picture of the pipeline's outputs (OUT/pipeline.png).
    """
    from tcpc_train.apps.demo import results_table, run_demo

    res = run_demo(out, settings.build("demo"), progress=settings.progress("display"), log=settings.say)
    click.echo(results_table(res["rows"]))
    click.echo(f"picture of the pipeline: {res['picture']}  ({res['seconds']:.0f} s)")


@main.command(cls=ConfigCommand, configs={"realct": "tcpc_train.apps.realct:RealCTConfig", "display": Display})
@click.argument("sources", nargs=-1, required=True)
@click.option("--nodules", type=click.Path(dir_okay=False), required=True,
              help="nodules.csv (patient_id,row,col,z_position_mm,diameter_mm,...).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output directory.")
@_friendly
def realct(sources, nodules, out, settings):
    """Real CT end to end: TCPC on the candidate crops of chest CTs, and the
    deep-layer feature maps of a nodule for a random, a TCPC and a fine-tuned encoder."""
    from tcpc_train.apps.realct import run_realct

    res = run_realct(sources, nodules, out, settings.build("realct"), progress=settings.progress("display"),
                     log=settings.say)
    click.echo(f"feature maps: {res['figure']}  ({res['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
