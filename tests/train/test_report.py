import pytest

from tcpc_train.apps.published import MEDMNIST_V2_ADRENAL3D
from tcpc_train.apps.report import aggregate, markdown_table, plot_auc_vs_fraction

CELLS = [
    {"method": "scratch", "fraction": 0.1, "seed": 0, "acc": 0.6, "auc": 0.70},
    {"method": "scratch", "fraction": 0.1, "seed": 1, "acc": 0.8, "auc": 0.80},
    {"method": "tcpc", "fraction": 0.1, "seed": 0, "acc": 0.9, "auc": 0.95},
]


def test_aggregate_mean_and_sample_std():
    s = aggregate(CELLS)
    mean, std, n = s[("scratch", 0.1)]["auc"]
    assert mean == pytest.approx(0.75) and std == pytest.approx(0.0707107, rel=1e-5) and n == 2
    assert s[("tcpc", 0.1)]["acc"] == (0.9, 0.0, 1)


def test_markdown_table_has_a_row_per_method_and_missing_cells_marked():
    md = markdown_table(aggregate(CELLS), ["scratch", "tcpc"], [0.1, 1.0], MEDMNIST_V2_ADRENAL3D, "MedMNIST v2")
    rows = [line for line in md.splitlines() if line.startswith("| scratch") or line.startswith("| tcpc")]
    assert rows[0].startswith("| scratch | 0.700 ± 0.141 | 0.750 ± 0.071 | — | — |")
    assert "| ResNet-18 + 3D | 0.721 | 0.827 |" in md


def test_plot_draws_a_curve_per_method_and_the_published_line(tmp_path, read_png):
    cells = CELLS + [{"method": "scratch", "fraction": 1.0, "seed": 0, "acc": 0.9, "auc": 0.9}]
    p = plot_auc_vs_fraction(aggregate(cells), ["scratch", "tcpc"], [0.1, 1.0], tmp_path / "f.png",
                             reference=MEDMNIST_V2_ADRENAL3D)
    img = read_png(p).astype(int)
    assert img.shape == (528, 768, 3)  # 6.4 x 4.4 inches at 120 dpi
    # Matplotlib's line colours in order: scratch (C0) a line over two fractions, tcpc (C1) one
    # point, no third method (C2).
    count = {c: int((img == rgb).all(-1).sum()) for c, rgb in
             {"C0": (31, 119, 180), "C1": (255, 127, 14), "C2": (44, 160, 44)}.items()}
    assert count["C0"] > 2 * count["C1"] > 100 and count["C2"] == 0, count
    # the published best is a dashed grey line across the axes: one row mostly mid-grey
    grey = (img.max(-1) - img.min(-1) <= 8) & (img.min(-1) >= 90) & (img.max(-1) <= 170)
    assert grey.sum(1).max() > 0.3 * img.shape[1]


def test_cells_without_auc_are_left_out_of_the_mean():
    cells = CELLS + [{"method": "tcpc", "fraction": 1.0, "seed": 0, "acc": 1.0, "auc": None},
                     {"method": "tcpc", "fraction": 0.1, "seed": 1, "acc": 0.7, "auc": None}]
    s = aggregate(cells)
    assert s[("tcpc", 0.1)]["auc"] == (0.95, 0.0, 1) and s[("tcpc", 0.1)]["acc"][2] == 2
    md = markdown_table(s, ["tcpc"], [1.0])
    assert "| tcpc | 1.000 ± 0.000 | — |" in md
