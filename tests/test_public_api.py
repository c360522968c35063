"""The lazy public names of both packages are the functions and classes their modules define.

The stage packages (``tcpc_data.ingest``, ``tcpc_data.supervoxels``) share their name with
the stage function: the package itself is callable and runs the stage.
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
        public = getattr(package, name)
        if mod.__name__ == f"{package.__name__}.{name}":  # a stage package
            assert public is mod and callable(public)
            assert public.stage_function() is getattr(importlib.import_module(f"{module}.stage"), name)
        else:
            assert public is getattr(mod, name), f"{package.__name__}.{name}"


def test_a_stage_package_runs_its_stage_and_keeps_its_modules(monkeypatch):
    import tcpc_data.ingest.discover  # noqa: F401  (any import form binds the package, never shadows it)
    stage = importlib.import_module("tcpc_data.ingest.stage")
    monkeypatch.setattr(stage, "ingest", lambda *a, **k: ("ran", a, k))
    assert tcpc_data.ingest("src", out="x") == ("ran", ("src",), {"out": "x"})
    assert inspect.ismodule(tcpc_data.ingest.discover)


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
    code = ("import sys, tcpc_train.pretraining, tcpc_train.finetuning; "
            "print([m for m in ('zarr', 'dask', 'numba') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
