"""Report tables and figures from saved per-cell predictions with known answers."""
import numpy as np
import pytest

from tcpc_train.apps.published import MEDMNIST_V2_ADRENAL3D
from tcpc_train.apps.tables import (grid_stats, load_predictions, markdown_table, plot_fig4_left, plot_grid,
                                    table_stats)

LABELS = np.arange(20) % 2
GROUPS = np.array([f"p{i // 2}" for i in range(20)])  # two samples per patient


def _cell(root, name, method, fraction, seed, right):
    """A cell whose first ``right`` test samples are ranked and classified correctly, the rest wrongly."""
    ok = np.arange(20) < right
    p1 = np.where(ok == (LABELS == 1), 0.9, 0.1)
    (root / name).mkdir(parents=True)
    np.savez(root / name / "predictions.npz", key=np.array([f"k{i}" for i in range(20)]), group=GROUPS,
             labels=LABELS, scores=np.log(np.stack([1 - p1, p1], 1)))
    return {"method": method, "fraction": fraction, "seed": seed, "predictions": name}


@pytest.fixture
def cells(tmp_path):
    out = [_cell(tmp_path, f"tcpc-{s}", "TCPC", 0.1, s, 20) for s in range(3)]
    out += [_cell(tmp_path, f"scratch-{s}", "scratch", 0.1, s, 10) for s in range(3)]
    out += [_cell(tmp_path, f"same-{s}", "same", 0.1, s, 20) for s in range(3)]
    return out


def test_load_predictions_keeps_the_ranking_and_the_patients(tmp_path):
    c = _cell(tmp_path, "c", "x", 1.0, 0, 14)
    p, keys, groups = load_predictions(tmp_path / "c" / "predictions.npz")
    assert (p.pred == LABELS).sum() == 14 and p.score.shape == (20,) and list(groups) == list(GROUPS)
    assert len(keys) == 20 and c["predictions"] == "c"


def test_table_stats_intervals_and_paired_tests(tmp_path, cells):
    s = table_stats(cells, tmp_path, n_boot=300)
    assert s[("TCPC", 0.1)]["acc"] == (1.0, 1.0, 1.0) and s[("TCPC", 0.1)]["vs"] is None
    acc, lo, hi = s[("scratch", 0.1)]["acc"]
    assert acc == 0.5 and lo < 0.5 < hi and s[("scratch", 0.1)]["n"] == 3
    diff, p = s[("scratch", 0.1)]["vs"]["auc"]
    assert diff == pytest.approx(-0.5) and p < 0.05
    assert s[("same", 0.1)]["vs"]["acc"] == (0.0, 1.0)


def test_markdown_table_has_intervals_paired_column_and_missing_cells(tmp_path, cells):
    md = markdown_table(table_stats(cells, tmp_path, n_boot=100), ["scratch", "TCPC"], [0.1, 1.0],
                        MEDMNIST_V2_ADRENAL3D, "MedMNIST v2")
    lines = md.splitlines()
    assert lines[0] == ("| labels | method | seeds | ACC [95 % CI] | bal. ACC [95 % CI] | AUC [95 % CI] | "
                        "Δ AUC vs TCPC (p) | Δ ACC vs TCPC (p) |")
    assert any(x.startswith("| 10 % | TCPC | 3 | 1.000 [1.000, 1.000] |") and x.endswith("| — | — |")
               for x in lines)
    assert any(x.startswith("| 10 % | scratch | 3 | 0.500 [") and "| -0.500 (" in x for x in lines)
    assert "| 100 % | scratch | — |" in md and "| ResNet-18 + 3D | 0.721 | 0.827 |" in md


def test_figures_are_written(tmp_path, cells):
    p = plot_fig4_left(table_stats(cells, tmp_path, n_boot=50), ["scratch", "TCPC"], [0.1], tmp_path / "l.png",
                       title="t")
    assert p.stat().st_size > 5000
    grid = grid_stats([{"cube": 8, "overlap": 0.5, "auc": 0.7}, {"cube": 8, "overlap": 0.5, "auc": 0.9},
                       {"cube": 16, "overlap": 0.0, "auc": None}])
    assert grid == {(8, 0.5): (pytest.approx(0.8), 2)}
    assert plot_grid(grid, [8, 16], [0.0, 0.5], tmp_path / "r.png").stat().st_size > 5000


def test_cells_of_one_row_must_share_the_test_samples(tmp_path, cells):
    bad = _cell(tmp_path, "odd", "TCPC", 0.1, 9, 20)
    z = dict(np.load(tmp_path / "odd" / "predictions.npz"))
    z["key"] = z["key"][::-1]
    np.savez(tmp_path / "odd" / "predictions.npz", **z)
    with pytest.raises(ValueError, match="scored other test samples"):
        table_stats(cells + [bad], tmp_path, n_boot=10)
