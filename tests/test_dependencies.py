"""Every package the code imports is declared in pyproject.toml with a range, the engine and the trainer
import an optional extra only where it is used (never at a module's top), and no module reaches into a
dependency's internals (zarr's ``zarr.core``)."""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN = {"tcpc_data", "tcpc_train", "cli", "tests", "bench"}
PACKAGES = ("tcpc_data", "tcpc_train")


def _requirements() -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """(core requirement name -> its specifier, extra -> the same), names normalised as PyPI does."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def parse(reqs):
        out = {}
        for req in reqs:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)", req)
            out[_normal(m[1])] = m[3]
        return out
    return parse(project["dependencies"]), {k: parse(v) for k, v in project["optional-dependencies"].items()}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports(path: Path, top_only: bool = False) -> set[str]:
    """Top-level names of the absolute imports in ``path`` (with ``top_only``: of its module-level
    statements alone, not those inside a function, a class or a try)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - OWN - {"__future__"}


def _sources(*tops: str) -> list[Path]:
    return [p for top in tops for p in ([ROOT / top] if top.endswith(".py") else sorted((ROOT / top).rglob("*.py")))]


@functools.cache
def _installed() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distribution(module: str) -> str:
    dists = _installed().get(module)
    if not dists:
        pytest.skip(f"{module} is not installed here (its distribution cannot be looked up)")
    return _normal(dists[0])


def test_every_requirement_has_a_lower_bound():
    core, extras = _requirements()
    for name, spec in [*core.items(), *(kv for extra in extras.values() for kv in extra.items())]:
        assert ">=" in spec, f"{name} in pyproject.toml has no lower bound ({spec!r})"


@pytest.mark.parametrize("tops", [("tcpc_data", "tcpc_train", "cli.py"), ("tests",), ("bench",)])
def test_every_imported_package_is_declared(tops):
    core, extras = _requirements()
    declared = set(core) | {name for extra in extras.values() for name in extra}
    # the distributions that packages declared here install for themselves and that the code also names
    transitive = {"dask[distributed]": {"distributed"}}
    declared |= {d for deps in transitive.values() for d in deps}
    for path in _sources(*tops):
        for module in _imports(path):
            assert _distribution(module) in declared, f"{path.relative_to(ROOT)} imports {module}, not declared"


def test_the_engine_and_trainer_import_only_core_requirements_at_module_level():
    core, _ = _requirements()
    core = set(core) | {"distributed"}  # dask[distributed]
    for path in _sources(*PACKAGES, "cli.py"):
        for module in _imports(path, top_only=True):
            assert _distribution(module) in core, \
                f"{path.relative_to(ROOT)} imports the optional {module} at its top: import it where it is used"


def test_no_module_imports_a_dependencys_internals():
    for path in _sources(*PACKAGES, "cli.py", "tests", "bench"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) zarr\.core\b|zarr\.core\.", text, re.M), \
            f"{path.relative_to(ROOT)} uses zarr.core (zarr's internals)"
