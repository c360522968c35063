"""`tcpc demo` end to end on a tiny phantom archive (the real demo is the same code, larger)."""
import csv
import json

import itertools

import pytest
import torch
from click.testing import CliRunner

from cli import main
from tcpc_train.apps.demo import DemoConfig, _split_cases, results_table, run_demo
from tcpc_train.input.loader import open_shards, raw_samples


def test_demo_runs_the_whole_pipeline_and_draws_it(tmp_path):
    cfg = DemoConfig(cases=4, lesions_per_case=3, shape=(32, 64, 64), top_k=4, pretrain_steps=3,
                     finetune_epochs=1, batch_size=4, width=0.0625, n_segments=100, split=(0.5, 0.25),
                     finetune_seeds=(0, 1))
    threads = torch.get_num_threads()
    res = run_demo(tmp_path / "d", cfg, log=lambda s: None)
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()  # restored
    assert set(res["rows"]) == {"scratch", "TCPC"}
    for row in res["rows"].values():
        assert row["n_train"] == 6 and row["n_test"] == 3  # 2 train cases x 3 lesions; 1 test case
        assert [r["seed"] for r in row["per_seed"]] == [0, 1]
        assert row["acc"] == pytest.approx(sum(r["acc"] for r in row["per_seed"]) / 2)
        assert row["acc_ci"][0] <= row["acc"] <= row["acc_ci"][1]
    assert "mean over 2 fine-tuning seeds" in results_table(res["rows"])
    # pretraining saw the training patients only: its shards hold no val or test case
    assert res["pretrain_cases"] == ["phantom-000", "phantom-001"]
    shards = open_shards(tmp_path / "d" / "pre" / "shards")
    cases = {json.loads(r["json"])["case"] for r in itertools.chain.from_iterable(map(raw_samples, shards.urls))}
    assert cases and cases <= set(res["pretrain_cases"])
    # the labelled splits are disjoint by case: no patient in two splits
    cases = {s: {row["case"] for row in csv.DictReader(open(tmp_path / "d" / f"lesions-{s}.csv"))}
             for s in ("train", "val", "test")}
    assert not (cases["train"] & cases["test"]) and not (cases["train"] & cases["val"])
    assert (tmp_path / "d" / "pipeline.png").stat().st_size > 20_000
    assert json.loads((tmp_path / "d" / "results.json").read_text())["rows"] == json.loads(json.dumps(res["rows"]))


def test_the_demo_is_deterministic(tmp_path):
    cfg = DemoConfig(cases=4, lesions_per_case=3, shape=(32, 64, 64), top_k=4, pretrain_steps=2,
                     finetune_epochs=1, batch_size=4, width=0.0625, n_segments=100, split=(0.5, 0.25),
                     finetune_seeds=(0,))
    a = run_demo(tmp_path / "a", cfg, log=lambda s: None)["rows"]
    b = run_demo(tmp_path / "b", cfg, log=lambda s: None)["rows"]
    assert [a[m]["per_seed"] for m in a] == [b[m]["per_seed"] for m in b]


def test_split_cases_gives_every_split_a_case():
    assert _split_cases(["a", "b", "c"], (0.9, 0.05)) == {"train": ["a"], "val": ["b"], "test": ["c"]}
    parts = _split_cases([f"c{i}" for i in range(20)], (0.6, 0.15))
    assert [len(parts[s]) for s in ("train", "val", "test")] == [12, 3, 5]


@pytest.mark.parametrize("args, message", [(["--cases", "2"], "cases must be >= 3"),
                                           (["--pretrain-steps", "0"], "pretrain_steps must be >= 1")])
def test_demo_cli_rejects_bad_sizes_in_one_line(tmp_path, args, message):
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "d"), *args])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
