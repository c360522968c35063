"""The lazy public names of both packages are the functions and classes their modules define,
and the names users import are pinned.

The stage packages (``tcpc_data.ingest``, ``tcpc_data.supervoxels``) are plain packages whose
stage function and config are re-exported lazily from their ``stage`` module.
"""
import importlib
import inspect
import subprocess
import sys

import pytest

import tcpc_data
import tcpc_train


@pytest.mark.parametrize("package", [tcpc_data, tcpc_train])
def test_every_public_name_resolves_to_what_its_module_defines(package):
    for name, module in package._API.items():
        mod = importlib.import_module(module)  # the submodule imported first: the trap for same names
        assert getattr(package, name) is getattr(mod, name), f"{package.__name__}.{name}"


@pytest.mark.parametrize("package, names", [
    ("tcpc_data.ingest", ("ingest", "IngestConfig")), ("tcpc_data.supervoxels", ("supervoxels", "SupervoxelConfig"))])
def test_a_stage_package_names_its_stage_function_and_config(package, names):
    import tcpc_data.ingest.discover  # noqa: F401  (any import form keeps the package a package)
    pkg = importlib.import_module(package)
    stage = importlib.import_module(f"{package}.stage")
    assert inspect.ismodule(pkg) and not callable(pkg)
    for name in names:
        assert getattr(pkg, name) is getattr(stage, name)
    with pytest.raises(AttributeError):
        getattr(pkg, "no_such_name")


# What users import: removing or renaming one of these is a breaking change (README, docs/guide).
PINNED = {
    "tcpc_data": ["IngestConfig", "LabelledConfig", "PATHS", "ShardConfig", "SupervoxelConfig", "body_mask", "crop",
                  "gaussian", "inspect_path", "make_phantom", "path_positions", "preprocess", "score_table", "slic",
                  "supervoxel_table", "top_candidates", "write_archive", "write_labelled_shards", "write_npz_shards",
                  "write_shards"],
    "tcpc_train": ["EvaluateConfig", "FinetuneConfig", "PretrainConfig", "RuntimeConfig", "ShardDataset", "TASKS",
                   "build_encoder", "classification_metrics", "evaluate", "finetune", "info_nce",
                   "load_encoder_weights", "open_shards", "pretrain", "run_demo", "run_experiment",
                   "write_synthetic_labelled", "write_synthetic_paths"],
}


@pytest.mark.parametrize("package", sorted(PINNED))
def test_the_public_names_users_import_are_pinned(package):
    mod = importlib.import_module(package)
    assert sorted(mod.__all__) == PINNED[package]
    for name in PINNED[package]:
        assert getattr(mod, name) is not None


def test_importing_tcpc_data_does_not_load_numba_or_torch():
    code = ("import sys, tcpc_data, tcpc_train, tcpc_data.ingest, tcpc_data.supervoxels; "
            "print('numba' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_engine_loads_no_torch_and_the_training_loops_no_engine_stack():
    code = ("import sys, tcpc_data.ingest.stage, tcpc_data.supervoxels.stage, tcpc_data.pipeline; "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["False"]
    code = ("import sys, tcpc_train.loops.pretraining, tcpc_train.loops.finetuning; "
            "print([m for m in ('zarr', 'dask', 'numba') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
