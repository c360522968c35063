"""The lazy public names of both packages are the functions and classes, never same-named submodules."""
import importlib
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
        assert not name == module.rsplit(".", 1)[-1], f"module {module} would shadow {name}"


def test_importing_tcpc_data_does_not_load_numba_or_torch():
    code = "import sys, tcpc_data, tcpc_train; print('numba' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
