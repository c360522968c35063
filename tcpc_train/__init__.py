"""tcpc_train: the lean streaming trainer (encoders, TCPC head and loss, baselines, fine-tuning).

Public functions are imported lazily so ``import tcpc_train`` does not load torch.
"""
from __future__ import annotations

import importlib

# module -> the public names it defines
_MODULES = {
    "tcpc_train.loops.pretraining": ("pretrain", "PretrainConfig"),
    "tcpc_train.loops.finetuning": ("finetune", "FinetuneConfig", "evaluate", "EvaluateConfig"),
    "tcpc_train.loops.runtime": ("RuntimeConfig",),
    "tcpc_train.tasks.registry": ("TASKS",),
    "tcpc_train.models.encoders": ("build_encoder",),
    "tcpc_train.tasks.contrastive": ("info_nce",),
    "tcpc_train.models.weights": ("load_encoder_weights",),
    "tcpc_train.input.loader": ("open_shards",),
    "tcpc_train.input.dataset": ("ShardDataset",),
    "tcpc_train.evaluation.metrics": ("classification_metrics",),
    "tcpc_train.input.synthetic": ("write_synthetic_paths", "write_synthetic_labelled"),
    "tcpc_train.apps.demo": ("run_demo",),
    "tcpc_train.apps.experiment": ("run_experiment",),
}
_API = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'tcpc_train' has no attribute {name!r}")
