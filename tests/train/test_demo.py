"""`tcpc demo` end to end on a tiny phantom archive (the real demo is the same code, larger)."""
import csv
import json
import math

import pytest
from click.testing import CliRunner

from cli import main
from tcpc_train.apps.demo import DemoConfig, _fmt, _split_cases, results_table, run_demo


def test_demo_runs_the_whole_pipeline_and_draws_it(tmp_path):
    cfg = DemoConfig(cases=4, lesions_per_case=3, shape=(32, 64, 64), top_k=4, pretrain_steps=3,
                     finetune_epochs=1, batch_size=4, width=0.0625, n_segments=100, split=(0.5, 0.25))
    lines = []
    res = run_demo(tmp_path / "d", cfg, log=lines.append)
    lesions = {s: list(csv.DictReader(open(tmp_path / "d" / f"lesions-{s}.csv"))) for s in ("train", "val", "test")}
    # the labelled splits are disjoint by case: no patient in two splits
    cases = {s: {row["case"] for row in rows} for s, rows in lesions.items()}
    assert not (cases["train"] & cases["test"]) and not (cases["train"] & cases["val"])
    n_test = len(lesions["test"])
    assert list(res["rows"]) == ["scratch", "TCPC"] and n_test == 3  # 1 test case x 3 lesions
    for method, row in res["rows"].items():
        assert row["n_train"] == 6 and row["n_test"] == n_test  # 2 train cases x 3 lesions; every test crop scored
        assert row["acc"] * n_test == pytest.approx(round(row["acc"] * n_test))  # a count of test lesions
        assert f"fine-tuned from {method}: test ACC {row['acc']:.3f} AUC {_fmt(row['auc'])}" in lines
    # the table the CLI prints is the returned metrics, one row per initialisation
    table = [line.split() for line in results_table(res["rows"]).splitlines()[1:]]
    assert table == [[m, f"{r['acc']:.3f}", _fmt(r["auc"])] for m, r in res["rows"].items()]
    (pre,) = [line for line in lines if line.startswith("TCPC pretraining: InfoNCE ")]
    assert math.isfinite(float(pre.split()[3]))
    assert (tmp_path / "d" / "pipeline.png").stat().st_size > 20_000
    assert json.loads((tmp_path / "d" / "results.json").read_text())["rows"] == res["rows"]


def test_split_cases_gives_every_split_a_case():
    assert _split_cases(["a", "b", "c"], (0.9, 0.05)) == {"train": ["a"], "val": ["b"], "test": ["c"]}
    parts = _split_cases([f"c{i}" for i in range(20)], (0.6, 0.15))
    assert [len(parts[s]) for s in ("train", "val", "test")] == [12, 3, 5]


@pytest.mark.parametrize("args, message", [(["--cases", "2"], "cases must be >= 3"),
                                           (["--pretrain-steps", "0"], "pretrain_steps must be >= 1")])
def test_demo_cli_rejects_bad_sizes_in_one_line(tmp_path, args, message):
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "d"), *args])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
