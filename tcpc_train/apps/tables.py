"""Experiment reports: intervals and paired tests per table cell, the Markdown table and Fig. 4.

A *cell* is one fine-tuning run: (method, label fraction, seed) with its test
predictions saved as ``<cell>/predictions.npz`` (``key``, ``group`` = patient,
``labels``, ``scores`` (N, K) log-probabilities). The table gives, per method
and label fraction, the mean over seeds of ACC, balanced ACC and AUC with a
95 % interval by bootstrap over test patients and seeds, and the paired
difference to TCPC with its p-value (:mod:`tcpc_train.evaluation.stats`). Fig. 4 left
plots ACC and AUC against the label fraction with interval bands; Fig. 4
right is a heat map of TCPC's AUC over cube size × overlap.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from tcpc_train.evaluation.stats import METRICS, Predictions, bootstrap_ci, paired_test

_NAMES = {"acc": "ACC", "balanced_acc": "bal. ACC", "auc": "AUC"}


def load_predictions(path: str | Path) -> tuple[Predictions, np.ndarray, np.ndarray]:
    """(Predictions, sample keys, patient groups) from a cell's ``predictions.npz`` (no pickle).

    The class-1 ranking score of a binary task is the log-probability
    difference (it keeps the order where probabilities round to 0 and 1);
    with more classes AUC is left undefined (score 0).
    """
    with np.load(path, allow_pickle=False) as z:
        labels, scores, keys, groups = z["labels"], z["scores"], z["key"], z["group"]
    score = scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else np.zeros(len(labels))
    score = np.nan_to_num(score, nan=0.0)  # a constant guess: -inf - -inf
    return Predictions(labels.astype(np.int64), scores.argmax(1), score), keys, groups


def _runs(cells: list[Mapping], root: Path) -> tuple[dict[int, Predictions], np.ndarray]:
    """Seed -> predictions of one group of cells, and the patients; all must share the test samples."""
    runs, keys, groups = {}, None, None
    for c in cells:
        p, k, g = load_predictions(root / c["predictions"] / "predictions.npz")
        if keys is not None and not np.array_equal(k, keys):
            raise ValueError(f"{c['predictions']}: scored other test samples than its row's first cell")
        keys, groups = k, g
        runs[int(c["seed"])] = p
    return runs, groups


def table_stats(cells: Iterable[Mapping], root: str | Path, against: str = "TCPC", n_boot: int = 1000,
                seed: int = 0) -> dict:
    """Intervals per (method, fraction) and the paired test against ``against``.

    Parameters
    ----------
    cells
        Records with ``method``, ``fraction``, ``seed`` and ``predictions``
        (cell directory relative to ``root``).
    root
        Experiment directory.
    against
        The row every other row is tested against (paired over the seeds both have).
    n_boot, seed
        Bootstrap replicates and their seed.

    Returns
    -------
    ``(method, fraction) -> {"n": seeds, metric: (mean, low, high), "vs": {metric: (mean difference
    method - against, p)} or None}``.
    """
    root = Path(root)
    groups_of: dict[tuple[str, float], list[Mapping]] = defaultdict(list)
    for c in cells:
        groups_of[(c["method"], float(c["fraction"]))].append(c)
    loaded = {key: _runs(cs, root) for key, cs in groups_of.items()}
    out = {}
    for (method, fraction), (runs, groups) in loaded.items():
        seeds = sorted(runs)
        entry = {"n": len(seeds), **bootstrap_ci([runs[s] for s in seeds], groups, n_boot=n_boot, seed=seed),
                 "vs": None}
        ref = loaded.get((against, fraction))
        if method != against and ref is not None:
            common = sorted(set(seeds) & set(ref[0]))
            if common:
                entry["vs"] = paired_test([runs[s] for s in common], [ref[0][s] for s in common], groups,
                                          n_boot=n_boot, seed=seed)
        out[(method, fraction)] = entry
    return out


def _fraction_label(f: float) -> str:
    return f"{f * 100:g} %"


def _interval(v: tuple[float, float, float]) -> str:
    return "—" if not np.isfinite(v[0]) else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown_table(stats: Mapping, methods: list[str], fractions: list[float],
                   reference: Mapping[str, tuple[float, float]] | None = None,
                   reference_title: str = "", against: str = "TCPC") -> str:
    """The paper's Table 1 with intervals: a line per (label fraction, method).

    Columns: seeds, ACC, balanced ACC and AUC as ``mean [low, high]``, and the
    paired AUC and ACC differences ``method − against`` with their p-values.
    ``reference`` maps a published method to (AUC, ACC) with 100 % labels; it
    is listed below ours so the two can be read together.
    """
    head = ["labels", "method", "seeds"] + [f"{_NAMES[m]} [95 % CI]" for m in METRICS] + \
        [f"Δ AUC vs {against} (p)", f"Δ ACC vs {against} (p)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in fractions:
        for method in methods:
            s = stats.get((method, float(f)))
            if s is None:
                lines.append("| " + " | ".join([_fraction_label(f), method] + ["—"] * (len(head) - 2)) + " |")
                continue
            vs = s["vs"]
            paired = ["—" if vs is None or not np.isfinite(vs[m][0]) else f"{vs[m][0]:+.3f} ({_p(vs[m][1])})"
                      for m in ("auc", "acc")]
            lines.append("| " + " | ".join([_fraction_label(f), method, str(s["n"])]
                                           + [_interval(s[m]) for m in METRICS] + paired) + " |")
    if reference:
        lines += ["", f"Published ({reference_title}, 100 % labels):", "",
                  "| method | ACC | AUC |", "|---|---|---|"]
        lines += [f"| {name} | {acc:.3f} | {auc:.3f} |" for name, (auc, acc) in reference.items()]
    return "\n".join(lines) + "\n"


def plot_fig4_left(stats: Mapping, methods: list[str], fractions: list[float], path: str | Path,
                   title: str = "") -> Path:
    """Save Fig. 4 left: mean ACC and AUC against label fraction with 95 % interval bands, a line per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = np.array(fractions, dtype=float) * 100
    for ax, metric in zip(axes, ("acc", "auc")):
        for k, method in enumerate(methods):
            pts = [stats.get((method, float(f))) for f in fractions]
            keep = [i for i, p in enumerate(pts) if p is not None and np.isfinite(p[metric][0])]
            if not keep:
                continue
            mean, lo, hi = (np.array([pts[i][metric][j] for i in keep]) for j in range(3))
            # bars as well as bands (one label fraction has no band to shade), nudged apart along x
            x = xs[keep] * 1.06 ** (k - (len(methods) - 1) / 2)
            bars = ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], marker="o", capsize=3, label=method)
            ax.fill_between(x, lo, hi, color=bars.lines[0].get_color(), alpha=0.12)
        ax.set_xscale("log")
        ax.set_xticks(xs, [_fraction_label(f) for f in fractions])
        ax.set_xlabel("labelled training samples")
        ax.set_ylabel(f"test {_NAMES[metric]}")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{title}: mean over seeds, 95 % bootstrap interval over patients and seeds")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def grid_stats(cells: Iterable[Mapping]) -> dict[tuple[int, float], tuple[float, int]]:
    """(cube, overlap) -> (mean test AUC over seeds, seeds) of the TCPC grid cells."""
    groups: dict[tuple[int, float], list[float]] = defaultdict(list)
    for c in cells:
        if c["auc"] is not None:
            groups[(int(c["cube"]), float(c["overlap"]))].append(float(c["auc"]))
    return {k: (float(np.mean(v)), len(v)) for k, v in groups.items()}


def plot_grid(stats: Mapping, cubes: list[int], overlaps: list[float], path: str | Path, title: str = "") -> Path:
    """Save Fig. 4 right: TCPC's mean test AUC as a heat map over cube size (rows) × overlap (columns)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.array([[stats.get((c, float(o)), (np.nan, 0))[0] for o in overlaps] for c in cubes])
    fig, ax = plt.subplots(figsize=(max(5.0, 2.4 + 1.2 * len(overlaps)), 1.6 + 0.9 * len(cubes)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, "not run" if np.isnan(v) else f"{v:.3f}", ha="center", va="center", fontsize=9,
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none"})
    ax.set_xticks(range(len(overlaps)), [f"{o:g}" for o in overlaps])
    ax.set_yticks(range(len(cubes)), [str(c) for c in cubes])
    ax.set_xlabel("cube overlap (fraction of the side)")
    ax.set_ylabel("cube side (voxels)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="mean test AUC over seeds")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
