"""A stage package that is also its stage's function: ``tcpc_data.ingest(...)`` runs the ingest stage.

The layout names each stage's package after the stage (``tcpc_data/ingest/``), and the
public API names the stage's function the same way (``tcpc_data.ingest``). Python binds
a subpackage as an attribute of its parent on import, so one name must serve both: the
package's module object is made callable and forwards to ``<package>.stage.<name>``,
imported on the first call so ``import tcpc_data`` stays cheap.
"""
from __future__ import annotations

import importlib
import sys
import types


class _StagePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return self.stage_function()(*args, **kwargs)

    def stage_function(self):
        """The stage's function, ``<package>.stage.<last part of the package name>``."""
        name = self.__name__.rsplit(".", 1)[-1]
        return getattr(importlib.import_module(f"{self.__name__}.stage"), name)


def make_callable(module_name: str) -> None:
    """Turn the already-imported package ``module_name`` into a callable stage package."""
    sys.modules[module_name].__class__ = _StagePackage
