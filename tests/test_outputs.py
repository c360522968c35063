"""No command loses a user's data: it writes only into folders it made, never inside its inputs.

Every output kind (volume store, shard set, split sets, preprocess folder, pretraining and
fine-tuning runs, evaluation, experiment, demo) is tried against a non-empty folder of the
user's and against an output inside its own inputs: each is refused in one line naming the
path, exit status 2, and every file that was there is still there, byte for byte.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from tcpc_data.ingest import IngestConfig, ingest
from tcpc_data.outputs import MARKER, OutputError, check_apart, claim_dir, has_files
from tcpc_data.phantom import make_phantom, write_nifti
from tcpc_data.store.volumes import STORE_ATTR, claim_store, list_cases, open_store
from tcpc_train.input.synthetic import write_synthetic_labelled, write_synthetic_paths


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _users_folder(path: Path) -> dict[str, bytes]:
    (path / "good").mkdir(parents=True)
    (path / "good" / "notes.txt").write_text("my notes\n")
    (path / "results.csv").write_text("a,b\n1,2\n")
    return _snapshot(path)


def _refused(r, path) -> None:
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], r.output
    assert "Traceback" not in r.output


@pytest.fixture(scope="module")
def nifti(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("in")
    ph = make_phantom(shape=(16, 32, 32), n_lesions=1, seed=1)
    write_nifti(d / "good.nii.gz", ph.hu, ph.spacing_zyx)
    return d / "good.nii.gz"


def test_ingest_into_a_users_folder_named_like_the_case_loses_nothing(nifti, tmp_path):
    # the reported loss: the store replaced other/good (a folder named like the case)
    other = tmp_path / "other"
    before = _users_folder(other)
    r = _run("ingest", nifti, "--out", other, "--workers", 1, "--no-progress")
    _refused(r, other)
    assert _snapshot(other) == before


def test_ingest_with_the_output_in_its_own_input_folder_loses_nothing(nifti, tmp_path):
    src = tmp_path / "in_self"
    src.mkdir()
    (src / "good.nii.gz").write_bytes(nifti.read_bytes())
    before = _snapshot(src)
    for out in (src, src / "volumes.zarr"):
        r = _run("ingest", src, "--out", out, "--workers", 1, "--no-progress")
        _refused(r, src)
        assert "inside" in r.output
        assert _snapshot(src) == before


def test_a_stray_folder_inside_a_tcpc_store_is_left_and_its_case_fails(nifti, tmp_path):
    store = tmp_path / "v.zarr"
    assert ingest(nifti, store, workers=1).ok
    (store / "good").rename(tmp_path / "kept")  # the case gone from the store...
    (store / "good").mkdir()  # ...and a folder of the user's in its place
    (store / "good" / "notes.txt").write_text("mine\n")
    report = ingest(nifti, store, workers=1)
    assert [f["case"] for f in report.failures] == ["good"]
    assert "is not a case tcpc wrote" in report.failures[0]["error"]
    assert (store / "good" / "notes.txt").read_text() == "mine\n"


def test_a_failures_path_that_is_a_users_file_is_refused_before_any_work(nifti, tmp_path):
    mine = tmp_path / "important.txt"
    mine.write_text("not a failures report\n")
    r = _run("ingest", nifti, "--out", tmp_path / "v.zarr", "--failures", mine, "--workers", 1, "--no-progress")
    _refused(r, mine)
    assert mine.read_text() == "not a failures report\n" and not (tmp_path / "v.zarr").exists()


@pytest.fixture(scope="module")
def store(tmp_path_factory, phantom_store) -> Path:
    d = tmp_path_factory.mktemp("store")
    phantom_store(d / "v.zarr", n_cases=1)
    return d / "v.zarr"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return write_synthetic_labelled(tmp_path_factory.mktemp("lab") / "labelled", (8, 4, 4), size=16, per_shard=8)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> Path:
    return write_synthetic_paths(tmp_path_factory.mktemp("paths") / "shards", 8, cube=8, per_shard=8)


SHARD_ARGS = ("--crop-size", 32, "--cube-size", 8, "--workers", 1, "--no-progress")
TRAIN_ARGS = ("--steps", 1, "--batch-size", 4, "--width", 0.0625, "--workers", 0, "--no-tensorboard")


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("npz") / "m.npz"
    rng = np.random.default_rng(0)
    np.savez(path, **{f"{s}_{k}": v for s in ("train", "val", "test") for k, v in
                      (("images", rng.integers(0, 255, (4, 8, 8, 8), dtype=np.uint8)),
                       ("labels", np.array([[0], [1], [0], [1]])))})
    return path


def _commands(store, labelled, paths, nifti, out, npz=None, nodules=None):
    """Each command that writes a folder, with ``out`` as that folder."""
    return {
        "npz splits": ["shards", npz, "--out", out, "--no-progress"],
        "realct": ["realct", nifti, "--nodules", nodules, "--out", out],
        "shards": ["shards", store, "--out", out, *SHARD_ARGS],
        "preprocess": ["preprocess", nifti, "--out", out, "--workers", 1, "--no-progress"],
        "pretrain": ["pretrain", paths, "--out", out, *TRAIN_ARGS],
        "finetune": ["finetune", labelled, "--scratch", "--out", out, "--epochs", 1, "--batch-size", 4,
                     "--width", 0.0625, "--workers", 0, "--no-tensorboard"],
        "demo": ["demo", "--out", out],
        "supervoxels": ["supervoxels", out, "--workers", 1, "--no-progress"],
    }


@pytest.mark.parametrize("command", ["shards", "npz splits", "preprocess", "pretrain", "finetune", "demo",
                                     "supervoxels", "realct"])
def test_every_command_refuses_a_non_empty_folder_it_did_not_write(command, store, labelled, paths, nifti, npz,
                                                                   tmp_path):
    out = tmp_path / "mine"
    before = _users_folder(out)
    nodules = tmp_path / "nodules.csv"
    nodules.write_text("patient_id,row,col,z_position_mm,diameter_mm\ngood,10,10,0,5\n")
    r = _run(*_commands(store, labelled, paths, nifti, out, npz, nodules)[command])
    _refused(r, out)
    assert _snapshot(out) == before


@pytest.mark.parametrize("command, inside", [
    ("shards", "store"), ("pretrain", "paths"), ("finetune", "labelled")])
def test_every_command_refuses_an_output_inside_its_input(command, inside, store, labelled, paths, nifti):
    src = {"store": store, "paths": paths, "labelled": labelled}[inside]
    before = _snapshot(src)
    r = _run(*_commands(store, labelled, paths, nifti, src / "out")[command])
    _refused(r, src)
    assert "inside" in r.output and _snapshot(src) == before


def test_finetune_refuses_a_run_directory_holding_its_init_checkpoint(labelled, paths, tmp_path):
    run = tmp_path / "pre"
    assert _run("pretrain", paths, "--out", run, *TRAIN_ARGS).exit_code == 0
    before = _snapshot(run)
    r = _run("finetune", labelled, "--init", run / "last.pt", "--out", run, "--epochs", 1, "--batch-size", 4,
             "--width", 0.0625, "--workers", 0, "--no-tensorboard")
    _refused(r, run)
    assert _snapshot(run) == before


def test_evaluate_refuses_a_users_folder_and_writes_into_its_own_run(labelled, tmp_path):
    run = tmp_path / "ft"
    assert _run("finetune", labelled, "--scratch", "--out", run, "--epochs", 1, "--batch-size", 4, "--width",
                0.0625, "--workers", 0, "--no-tensorboard").exit_code == 0
    mine = tmp_path / "mine"
    before = _users_folder(mine)
    r = _run("evaluate", run / "best.pt", labelled, "--out", mine, "--workers", 0)
    _refused(r, mine)
    assert _snapshot(mine) == before
    r = _run("evaluate", run / "best.pt", labelled, "--out", tmp_path / "eval", "--workers", 0)
    assert r.exit_code == 0 and (tmp_path / "eval" / "metrics.json").exists(), r.output
    assert _run("evaluate", run / "best.pt", labelled, "--out", tmp_path / "eval", "--workers", 0).exit_code == 0


def test_experiment_refuses_a_users_folder(labelled, tmp_path):
    config = tmp_path / "e.toml"
    config.write_text(f'data = "{labelled}"\nrows = ["scratch"]\nfractions = [1.0]\nepochs = [1]\nseeds = [0]\n')
    mine = tmp_path / "mine"
    before = _users_folder(mine)
    r = _run("experiment", config, "--out", mine, "--no-progress")
    _refused(r, mine)
    assert _snapshot(mine) == before


def test_one_kind_of_output_is_never_written_as_another(store, paths, tmp_path):
    # a pretraining run directory is not a shard set, and a shard set is not a run directory
    run = tmp_path / "run"
    assert _run("pretrain", paths, "--out", run, *TRAIN_ARGS).exit_code == 0
    before = _snapshot(run)
    r = _run("shards", store, "--out", run, *SHARD_ARGS)
    _refused(r, run)
    assert "pretrain run" in r.output and _snapshot(run) == before
    sh = tmp_path / "sh"
    assert _run("shards", store, "--out", sh, *SHARD_ARGS).exit_code == 0
    r = _run("pretrain", sh, "--out", sh / "..", *TRAIN_ARGS)
    _refused(r, tmp_path)


def test_reruns_write_into_what_they_made_and_unmarked_outputs_of_older_versions_are_adopted(store, paths,
                                                                                           tmp_path):
    sh, run = tmp_path / "sh", tmp_path / "run"
    for _ in range(2):  # the second run finds its own marked folders
        assert _run("shards", store, "--out", sh, *SHARD_ARGS).exit_code == 0
        assert _run("pretrain", paths, "--out", run, *TRAIN_ARGS).exit_code == 0
    assert json.loads((sh / MARKER).read_text())["kind"] == "shard-set"
    # outputs written before marks: their own files prove what they are
    (sh / MARKER).unlink()
    (run / MARKER).unlink()
    assert _run("shards", store, "--out", sh, *SHARD_ARGS).exit_code == 0
    assert _run("pretrain", paths, "--out", run, *TRAIN_ARGS, "--fresh").exit_code == 0
    assert (sh / MARKER).exists() and (run / MARKER).exists()


def test_a_store_from_before_marks_is_adopted_and_a_foreign_zarr_group_refused(nifti, tmp_path):
    import zarr

    store = tmp_path / "v.zarr"
    assert ingest(nifti, store, workers=1).ok
    root = open_store(store, mode="r+")
    assert root.attrs[STORE_ATTR]["kind"] == "volume-store"
    root.update_attributes({STORE_ATTR: None})  # as a store of an older version looked
    claim_store(store)
    assert open_store(store, mode="r").attrs[STORE_ATTR]["kind"] == "volume-store"
    foreign = tmp_path / "foreign.zarr"
    g = zarr.open_group(str(foreign), mode="w", zarr_format=3)
    g.create_array("raw", data=np.zeros((4, 4), "f4"))
    before = _snapshot(foreign)
    with pytest.raises(OutputError, match="a Zarr group tcpc did not write"):
        ingest(nifti, foreign, IngestConfig(), workers=1)
    assert _snapshot(foreign) == before and list_cases(store) == ["good"]


def test_claims_compare_resolved_paths_and_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(OutputError, match="inside the input"):
        check_apart("a/b/../b/out", ["a"])
    check_apart("a", [tmp_path / "a" / "b" / "x.nii"])  # an input inside the output: only our names are replaced
    check_apart("a2", ["a"])  # a shared prefix is not containment
    with pytest.raises(OutputError, match="inside the input"):
        check_apart("memory://bucket/in/out", ["memory://bucket/in"])
    check_apart("memory://bucket/out", ["memory://bucket/in", None])


def test_a_marked_folder_of_another_kind_and_a_file_are_refused(tmp_path):
    claim_dir(tmp_path / "x", "demo")
    with pytest.raises(OutputError, match="is a tcpc demo, not an experiment"):
        claim_dir(tmp_path / "x", "experiment")
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        claim_dir(tmp_path / "f", "demo")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "demo.json").write_text("{}")
    assert claim_dir(tmp_path / "old", "demo", legacy=has_files("demo.json")) == tmp_path / "old"
