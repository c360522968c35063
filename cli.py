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


if __name__ == "__main__":
    main()
