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
@click.option("--workers", type=int, default=None, help="Local worker processes (default: one per core).")
@click.option("--scheduler", default=None, metavar="ADDRESS", help="A running dask.distributed scheduler.")
@click.option("--failures", "failures", default=None, metavar="PATH",
              help="Failures report (JSON lines); default <STORE>.failures.jsonl.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Live progress display.")
@_friendly
def ingest(sources, out, clip, spacing, npy_spacing, dtype, irregular, max_voxels, workers, scheduler,
           failures, progress):
    """Read CT archives (DICOM, NIfTI, MetaImage, NRRD, NumPy) into a normalised Zarr volume store."""
    from tcpc_data.ingestion import IngestConfig, ingest as run_ingest

    config = IngestConfig(clip=_floats(clip, (2,), "--clip"), spacing_zyx=_floats(spacing, (1, 3), "--spacing"),
                          npy_spacing_zyx=_floats(npy_spacing, (1, 3), "--npy-spacing"), dtype=dtype,
                          irregular=irregular, max_voxels=max_voxels)
    failures = failures or f"{str(out).rstrip('/')}.failures.jsonl"
    report = run_ingest(list(sources), out, config, workers=workers, scheduler=scheduler,
                        progress=progress, failures_path=failures)
    for note in report.notes:
        click.echo(f"note: {note}")
    if not progress:  # the live display already named each failure as it happened
        for rec in report.failures:
            click.echo(f"failed {rec['case']}: {rec['error']}", err=True)
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
