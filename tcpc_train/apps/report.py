"""Experiment reports: aggregate per-cell metrics into a Markdown table and an AUC-vs-label-fraction plot.

A *cell* is one fine-tuning run: (method, label fraction, seed) -> metrics
(``acc``, ``auc``). The table gives mean ± std over seeds, the paper's
Table 1 layout; the plot is the paper's Fig. 4 (AUC against label fraction).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np


def aggregate(cells: Iterable[Mapping]) -> dict[tuple[str, float], dict[str, tuple[float, float, int]]]:
    """Mean and standard deviation over seeds.

    Parameters
    ----------
    cells
        Records with keys ``method``, ``fraction``, ``seed``, ``acc``, ``auc``.

    Returns
    -------
    dict
        ``(method, fraction) -> {"acc": (mean, std, n), "auc": (mean, std, n)}``;
        std is the sample standard deviation (0 for one seed).
    """
    groups: dict[tuple[str, float], list[Mapping]] = defaultdict(list)
    for c in cells:
        groups[(c["method"], float(c["fraction"]))].append(c)
    out = {}
    for key, rows in groups.items():
        stats = {}
        for metric in ("acc", "auc"):
            # AUC is None for a test split of one class: left out, and counted in n
            v = np.array([r[metric] for r in rows if r[metric] is not None], dtype=float)
            if len(v) == 0:
                stats[metric] = (float("nan"), float("nan"), 0)
                continue
            stats[metric] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v))
        out[key] = stats
    return out


def _fraction_label(f: float) -> str:
    return f"{f * 100:g} %"


def markdown_table(stats: Mapping, methods: list[str], fractions: list[float],
                   reference: Mapping[str, tuple[float, float]] | None = None,
                   reference_title: str = "") -> str:
    """The paper's Table 1 as Markdown: a row per method, ACC and AUC per label fraction.

    ``reference`` maps a published method to (AUC, ACC) with 100 % labels; it
    is listed below ours so the two can be read together.
    """
    head = ["method"] + [f"{m} @ {_fraction_label(f)}" for f in fractions for m in ("ACC", "AUC")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        row = [method]
        for f in fractions:
            s = stats.get((method, float(f)))
            for metric in ("acc", "auc"):
                row.append("—" if s is None or s[metric][2] == 0 else f"{s[metric][0]:.3f} ± {s[metric][1]:.3f}")
        lines.append("| " + " | ".join(row) + " |")
    if reference:
        lines += ["", f"Published ({reference_title}, 100 % labels):", "",
                  "| method | ACC | AUC |", "|---|---|---|"]
        lines += [f"| {name} | {acc:.3f} | {auc:.3f} |" for name, (auc, acc) in reference.items()]
    return "\n".join(lines) + "\n"


def plot_auc_vs_fraction(stats: Mapping, methods: list[str], fractions: list[float], path: str | Path,
                         title: str = "AUC against label fraction",
                         reference: Mapping[str, tuple[float, float]] | None = None) -> Path:
    """Save the paper's Fig. 4: mean AUC (± std band) against label fraction, one line per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xs = np.array(fractions, dtype=float) * 100
    for method in methods:
        pts = [stats.get((method, float(f))) for f in fractions]
        keep = [i for i, p in enumerate(pts) if p is not None]
        if not keep:
            continue
        mean = np.array([pts[i]["auc"][0] for i in keep])
        std = np.array([pts[i]["auc"][1] for i in keep])
        line, = ax.plot(xs[keep], mean, marker="o", label=method)
        ax.fill_between(xs[keep], mean - std, mean + std, color=line.get_color(), alpha=0.15)
    if reference:
        best = max(reference.items(), key=lambda kv: kv[1][0])
        ax.axhline(best[1][0], color="grey", ls="--", lw=1, label=f"published best: {best[0]}")
    ax.set_xscale("log")
    ax.set_xticks(xs, [_fraction_label(f) for f in fractions])
    ax.set_xlabel("labelled training samples")
    ax.set_ylabel("test AUC")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
