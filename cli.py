"""The ``tcpc`` command: a thin click layer over tcpc_data and tcpc_train.

Each command parses options, builds a config, calls one library function and
prints a summary. Expected failures (bad input, missing files) become a
one-line message and exit status 2; a run in which some cases failed exits 1.
"""
from __future__ import annotations

import functools
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
@click.option("--workers", type=int, default=None, help="Worker processes [one per core].")
@click.option("--scheduler", default=None, help="Address of a running dask scheduler (tcp://host:8786).")
@click.option("--failures", "failures_path", type=click.Path(dir_okay=False), default=None,
              help="JSON-lines report of failed cases [STORE/../failures-supervoxels.jsonl].")
@click.option("--progress/--no-progress", default=True, help="Show live progress.")
@_friendly
def supervoxels(store, cases, workers, scheduler, failures_path, progress, candidates_csv, **fields):
    """Supervoxels, per-supervoxel table and ranked crop centres for every case of STORE."""
    import dataclasses
    from pathlib import Path

    from tcpc_data.store import is_local
    from tcpc_data.supervoxels import SupervoxelConfig
    from tcpc_data.supervoxels import supervoxels as run_supervoxels

    given = {k: v for k, v in fields.items() if v is not None}
    config = dataclasses.replace(SupervoxelConfig(), **given)
    if failures_path is None and is_local(store):
        failures_path = Path(store).resolve().parent / "failures-supervoxels.jsonl"
    report = run_supervoxels(store, config, cases=list(cases) or None, candidates_csv=candidates_csv,
                             workers=workers, scheduler=scheduler, progress=progress,
                             failures_path=failures_path)
    click.echo(report.summary())
    if not report.ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
