"""tcpc_train: the lean streaming trainer (encoders, TCPC head and loss, baselines, fine-tuning).

Public functions are imported lazily so ``import tcpc_train`` does not load torch.
"""
from __future__ import annotations

import importlib

# public name -> module that defines it
_API = {
    "pretrain": "tcpc_train.pretrain",
    "PretrainConfig": "tcpc_train.pretrain",
    "finetune": "tcpc_train.finetune",
    "FinetuneConfig": "tcpc_train.finetune",
    "evaluate": "tcpc_train.finetune",
    "build_encoder": "tcpc_train.models",
    "run_demo": "tcpc_train.demo",
    "run_experiment": "tcpc_train.experiment",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tcpc_train' has no attribute {name!r}")
