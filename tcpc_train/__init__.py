"""tcpc_train: the lean streaming trainer (encoders, TCPC head and loss, baselines, fine-tuning).

Public functions are imported lazily so ``import tcpc_train`` does not load torch.
"""
from __future__ import annotations

import importlib

# public name -> module that defines it
_API = {
    "pretrain": "tcpc_train.pretraining",
    "PretrainConfig": "tcpc_train.pretraining",
    "finetune": "tcpc_train.finetuning",
    "FinetuneConfig": "tcpc_train.finetuning",
    "evaluate": "tcpc_train.finetuning",
    "EvaluateConfig": "tcpc_train.finetuning",
    "RuntimeConfig": "tcpc_train.runtime",
    "TASKS": "tcpc_train.tasks",
    "build_encoder": "tcpc_train.models",
    "info_nce": "tcpc_train.contrastive",
    "load_encoder_weights": "tcpc_train.weights",
    "open_shards": "tcpc_train.loader",
    "classification_metrics": "tcpc_train.metrics",
    "write_synthetic_paths": "tcpc_train.synthetic",
    "write_synthetic_labelled": "tcpc_train.synthetic",
    "run_demo": "tcpc_train.apps.demo",
    "run_experiment": "tcpc_train.apps.experiment",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tcpc_train' has no attribute {name!r}")
