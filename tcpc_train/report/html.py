"""Self-contained HTML reports: one page per run (pretraining, fine-tuning, evaluation) and per experiment.

A page holds everything it shows: figures as SVG ``data:`` URIs, tables as
HTML, its style inline, no script. Its Content-Security-Policy
(``default-src 'none'``) forbids every fetch, so it opens offline and a stray
external reference could not be followed either. Links to the reports of an
experiment's runs are relative paths, opened only when clicked.

A run's page (:func:`run_report`) shows its summary, its curves (loss,
learning rate, validation metrics), ROC curves and confusion matrix of its
test predictions, and its configuration. An experiment's page
(:func:`experiment_report`) is built from its directory alone (see
:mod:`tcpc_train.apps.experiment`): the results table, Fig. 4, pretraining
loss and validation AUC curves, ROC curves pooled over seeds, confusion
matrices summed over seeds, the configuration and links to every run's page.
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.ticker import MaxNLocator

from tcpc_train.report.plots import curves_figure, roc_axes, roc_figure, roc_frame

import matplotlib.pyplot as plt  # noqa: E402  (tcpc_train.report.plots chose the headless backend)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1150px;padding:0 1em;color:#1d1d1d}
h1{font-size:1.45em;margin-bottom:.2em} h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.15em;
margin-top:1.6em} h3{font-size:1em;margin:.8em 0 .3em}
table{border-collapse:collapse;margin:.4em 0} td,th{border:1px solid #d0d0d0;padding:.2em .55em;text-align:right}
th{background:#f3f3f3} td.k,th.k,td.v{text-align:left} td.k{font-family:ui-monospace,monospace;font-size:.92em}
img{max-width:100%;display:block;margin:.4em 0} .lead{color:#555} nav a{margin-right:1em}
.grid{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start} .cm td{min-width:2.5em}
"""
# The run log's series a run page plots, in this order, when present.
_CURVES = ("loss", "lr", "val_auc", "val_acc", "samples_per_s")


@dataclass(frozen=True)
class Section:
    """A titled part of a page; ``body`` is HTML."""

    title: str
    body: str

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def esc(value) -> str:
    """``value`` as HTML text."""
    return html.escape(str(value), quote=True)


def figure_img(fig, alt: str) -> str:
    """An ``<img>`` holding matplotlib figure ``fig`` as an SVG data URI (the figure is closed).

    Text stays text (``svg.fonttype`` none) and the SVG is reproducible (no date, fixed hash salt).
    """
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "tcpc"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    return f'<img alt="{esc(alt)}" src="data:image/svg+xml;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def png_img(path: str | Path, alt: str) -> str:
    """An ``<img>`` holding the PNG file ``path`` as a data URI."""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(Path(path).read_bytes()).decode()}">'


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return str(v)


def flatten(d: Mapping, prefix: str = "") -> dict:
    """Nested mappings as one level of ``outer.inner`` keys."""
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def value_table(items: Mapping, head: tuple[str, str] = ("field", "value")) -> str:
    """A two-column table of ``items``: names, then values (both left-aligned: they mix text and numbers)."""
    rows = "".join(f'<tr><td class="k">{esc(k)}</td><td class="v">{esc(_fmt(v))}</td></tr>'
                   for k, v in items.items())
    return f'<table><tr><th class="k">{esc(head[0])}</th><th class="k">{esc(head[1])}</th></tr>{rows}</table>'


def record_table(records: Sequence[Mapping], columns: Sequence[str]) -> str:
    """A table with a line per record and the given columns."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in records)
    return f"<table><tr>{head}</tr>{body}</table>"


def confusion_table(confusion: Sequence[Sequence[int]], caption: str = "") -> str:
    """A confusion matrix (rows true, columns predicted) as a table shaded by each row's share."""
    m = np.asarray(confusion, dtype=np.int64)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    head = "".join(f"<th>pred {j}</th>" for j in range(m.shape[1]))
    body = "".join(
        f'<tr><th class="k">true {i}</th>' + "".join(
            f'<td style="background:rgba(31,119,180,{share[i, j] * 0.75:.2f})">{m[i, j]}</td>'
            for j in range(m.shape[1])) + "</tr>" for i in range(m.shape[0]))
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f'<table class="cm">{cap}<tr><th></th>{head}</tr>{body}</table>'


def markdown_html(text: str) -> str:
    """The Markdown of ``results.md`` (pipe tables and paragraphs) as HTML."""
    out, table = [], []

    def flush():
        if table:
            cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table
                     if not re.fullmatch(r"\|?(\s*:?-+:?\s*\|)+\s*", line.strip())]
            head = "".join(f"<th>{esc(c)}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
            out.append(f"<table><tr>{head}</tr>{body}</table>")
            table.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            table.append(line)
            continue
        flush()
        if line.strip():
            out.append(f"<p>{esc(line.replace(chr(92) + '*', '*'))}</p>")
    flush()
    return "\n".join(out)


def page(title: str, lead: str, sections: Iterable[Section]) -> str:
    """A whole HTML document: title, a lead line, a table of contents and the sections."""
    sections = list(sections)
    nav = "".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(f'<section id="{s.anchor}"><h2>{esc(s.title)}</h2>\n{s.body}\n</section>' for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_STYLE}</style></head>\n"
            f'<body><h1>{esc(title)}</h1><p class="lead">{esc(lead)}</p><nav>{nav}</nav>\n{body}\n</body></html>\n')


def write_page(path: str | Path, title: str, lead: str, sections: Iterable[Section]) -> Path:
    """Write :func:`page` to ``path`` whole (a reader never sees half a page)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page(title, lead, sections), encoding="utf-8")
    tmp.replace(path)
    return path


def _scalars(d: Mapping | None) -> dict:
    return {k: v for k, v in (d or {}).items() if v is None or isinstance(v, (str, int, float, bool))}


def run_report(path: str | Path, title: str, *, config: Mapping, rows: Sequence[Mapping] = (),
               summary: Mapping | None = None, metrics: Mapping | None = None,
               labels: np.ndarray | None = None, scores: np.ndarray | None = None, lead: str = "") -> Path:
    """Write a run's page to ``path``.

    Parameters
    ----------
    path
        The HTML file (``report.html`` in the run directory).
    title, lead
        Heading and the line under it.
    config
        The run's configuration (``dataclasses.asdict``), shown flattened.
    rows
        The run's log rows (``log.jsonl``); the series of ``loss``, ``lr``,
        ``val_auc``, ``val_acc`` and ``samples_per_s`` found there are plotted against the step.
    summary
        The run's summary; its plain values (not nested ones) are listed.
    metrics
        Test metrics (:func:`tcpc_train.evaluation.metrics.classification_metrics` and
        more); its plain values are listed and ``confusion`` shown as a table.
    labels, scores
        (N,) test classes and (N, K) class (log-)probabilities for the ROC curves.
    """
    sections = []
    shown = {**_scalars(summary), **_scalars(metrics)}
    if shown:
        sections.append(Section("Summary", value_table(shown)))
    keys = [k for k in _CURVES if any(r.get(k) is not None for r in rows)]
    if keys:
        sections.append(Section("Curves", figure_img(curves_figure(rows, keys), "curves: " + ", ".join(keys))))
    if labels is not None and scores is not None:
        sections.append(Section("ROC", figure_img(roc_figure(labels, scores, f"{len(labels)} samples"),
                                                   "ROC curves")))
    if metrics and metrics.get("confusion") is not None:
        sections.append(Section("Confusion matrix", "<p>Rows: true class, columns: predicted.</p>"
                                + confusion_table(metrics["confusion"])))
    sections.append(Section("Configuration", value_table(flatten(config))))
    return write_page(path, title, lead, sections)


# ---------------------------------------------------------------------------------------------
# Experiments
# ---------------------------------------------------------------------------------------------

def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a last line cut short by a kill
            continue
    return rows


def _predictions(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        return z["labels"].astype(np.int64), z["scores"]


def _panels(n: int, width: float = 4.2, height: float = 3.4, per_row: int = 3):
    cols = min(n, per_row)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(width * cols + 0.6, height * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _smooth(values: np.ndarray) -> np.ndarray:
    """Trailing mean over about a twentieth of the series (noisy per-step losses read as a trend)."""
    w = max(1, len(values) // 20)
    c = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))
    lo = np.maximum(np.arange(1, len(values) + 1) - w, 0)
    return (c[1:] - c[lo]) / (np.arange(1, len(values) + 1) - lo)


def _pretraining_curves(out: Path) -> str:
    """Loss against step of every pretraining run, a panel per method (``<name>-p<seed>``), a line per seed
    (faint: per step; solid: :func:`_smooth`)."""
    groups: dict[str, list[tuple[str, list[dict]]]] = defaultdict(list)
    for run in sorted((out / "pretrain").glob("*/log.jsonl")):
        name = run.parent.name
        base, _, seed = name.rpartition("-p")
        groups[base or name].append((f"seed {seed}" if base else name, _jsonl(run)))
    groups = {k: v for k, v in groups.items() if any(r.get("loss") is not None for _, rows in v for r in rows)}
    if not groups:
        return ""
    fig, axes = _panels(len(groups))
    for ax, (name, runs) in zip(axes, groups.items()):
        for label, rows in runs:
            pts = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
            if pts:
                steps, loss = map(np.asarray, zip(*pts))
                raw, = ax.plot(steps, loss, lw=0.6, alpha=0.35)
                ax.plot(steps, _smooth(loss), lw=1.4, color=raw.get_color(), label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_img(fig, "pretraining loss per method")


def _validation_curves(out: Path, cells: list[dict], methods: list[str], fractions: list[float]) -> str:
    """Mean validation AUC over seeds against the epoch, a panel per label fraction, a line per method."""
    series: dict[tuple[float, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        for r in _jsonl(out / c["predictions"] / "log.jsonl"):
            if r.get("val_auc") is not None:
                series[(float(c["fraction"]), c["method"])][int(r["epoch"])].append(float(r["val_auc"]))
    if not series:
        return ""
    fig, axes = _panels(len(fractions))
    for ax, f in zip(axes, fractions):
        for m in methods:
            by_epoch = series.get((float(f), m))
            if by_epoch:
                epochs = sorted(by_epoch)
                ax.plot(epochs, [np.mean(by_epoch[e]) for e in epochs], marker="o", ms=3, lw=1, label=m)
        ax.set_title(f"{f * 100:g} % of the labels", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation AUC (mean over seeds)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_img(fig, "validation AUC per epoch")


def _pooled(out: Path, cells: list[dict]) -> dict[tuple[float, str], tuple[np.ndarray, np.ndarray]]:
    """(fraction, method) -> test labels and scores of all its seeds, concatenated."""
    parts: dict[tuple[float, str], list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for c in cells:
        p = _predictions(out / c["predictions"] / "predictions.npz")
        if p is not None:
            parts[(float(c["fraction"]), c["method"])].append(p)
    return {k: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v])) for k, v in parts.items()}


def _roc_panels(pooled: Mapping, methods: list[str], fractions: list[float]) -> str:
    fig, axes = _panels(len(fractions), 4.6, 4.4)
    for ax, f in zip(axes, fractions):
        for m in methods:
            if (float(f), m) in pooled:
                labels, scores = pooled[(float(f), m)]
                roc_axes(ax, labels, np.nan_to_num(scores, nan=0.0, neginf=-1e300), m)
        roc_frame(ax, f"{f * 100:g} % of the labels")
    fig.tight_layout()
    return figure_img(fig, "ROC curves per label fraction")


def _confusions(pooled: Mapping, methods: list[str], fractions: list[float]) -> str:
    parts = []
    for f in fractions:
        tables = []
        for m in methods:
            if (float(f), m) in pooled:
                labels, scores = pooled[(float(f), m)]
                k = scores.shape[1]
                conf = np.zeros((k, k), dtype=np.int64)
                np.add.at(conf, (labels, np.nan_to_num(scores, nan=0.0).argmax(1)), 1)
                tables.append(confusion_table(conf, m))
        if tables:
            parts.append(f"<h3>{f * 100:g} % of the labels</h3><div class=\"grid\">{''.join(tables)}</div>")
    return "".join(parts)


def _run_links(out: Path) -> str:
    pages = sorted(p.relative_to(out) for p in out.glob("*/*/report.html"))
    if not pages:
        return ""
    return "<ul>" + "".join(f'<li><a href="{esc(p.as_posix())}">{esc(p.parent.as_posix())}</a></li>'
                            for p in pages) + "</ul>"


def experiment_report(out: str | Path, path: str | Path | None = None) -> Path:
    """Write the page of the experiment in directory ``out`` (default ``out/report.html``).

    Reads ``experiment.json``, ``cells.jsonl``, ``results.md``, ``fig4_*.png``,
    ``external.jsonl`` and the runs' ``log.jsonl`` and ``predictions.npz``;
    what is missing (a partial experiment) is left out of the page.
    """
    out = Path(out)
    config = json.loads((out / "experiment.json").read_text())
    cells = _jsonl(out / "cells.jsonl")
    seen = list(dict.fromkeys(c["method"] for c in cells))
    fractions = sorted({float(c["fraction"]) for c in cells})
    sections = []
    if (out / "results.md").exists():
        sections.append(Section("Results", markdown_html((out / "results.md").read_text())))
    figs = [png_img(out / name, alt) for name, alt in (("fig4_left.png", "Fig. 4 left: metrics by label fraction"),
                                                      ("fig4_right.png", "Fig. 4 right: cube size x overlap"))
            if (out / name).exists()]
    if figs:
        sections.append(Section("Figure 4", "".join(figs)))
    curves = _pretraining_curves(out) + _validation_curves(out, cells, seen, fractions)
    if curves:
        sections.append(Section("Curves", curves))
    pooled = _pooled(out, cells)
    if pooled:
        sections.append(Section("ROC", "<p>Test predictions of all seeds of a cell pooled.</p>"
                                + _roc_panels(pooled, seen, fractions)))
        sections.append(Section("Confusion matrices", "<p>Test predictions summed over seeds; rows: true class, "
                                                      "columns: predicted.</p>" + _confusions(pooled, seen, fractions)))
    external = _jsonl(out / "external.jsonl")
    if external:
        sections.append(Section("External test set", record_table(
            external, ["row", "fraction", "seed", "acc", "balanced_acc", "auc", "n"])))
    links = _run_links(out)
    if links:
        sections.append(Section("Runs", links))
    sections.append(Section("Configuration", value_table(flatten(config))))
    lead = f"{len(cells)} cells of {len(seen)} methods at label fractions {', '.join(f'{f:g}' for f in fractions)}."
    return write_page(path or out / "report.html", f"Experiment: {Path(str(config.get('data', out))).name}", lead,
                      sections)


def rebuild_report(directory: str | Path) -> Path:
    """(Re)write ``report.html`` of an experiment or run directory from its files alone.

    An experiment directory (``experiment.json``) gets :func:`experiment_report`;
    a run directory (``config.json`` and ``log.jsonl``) gets :func:`run_report`
    from its log, ``summary.json`` and ``metrics.json``, with ROC curves where
    its test predictions were saved (``predictions.npz``, as in an experiment's cells).
    """
    d = Path(directory)
    if (d / "experiment.json").is_file():
        return experiment_report(d)
    if not (d / "config.json").is_file() or not (d / "log.jsonl").is_file():
        raise ValueError(f"{d}: neither an experiment (experiment.json) nor a run directory "
                         "(config.json and log.jsonl)")
    config = json.loads((d / "config.json").read_text())
    metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else None
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else None
    pred = _predictions(d / "predictions.npz")
    title = "fine-tuning" if metrics is not None else f"{config.get('task', '')} pretraining".strip()
    return run_report(d / "report.html", title, config=config, rows=_jsonl(d / "log.jsonl"), summary=summary,
                      metrics=metrics, labels=None if pred is None else pred[0],
                      scores=None if pred is None else pred[1], lead=str(d))
