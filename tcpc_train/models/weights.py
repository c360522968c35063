"""Encoder initialisation from any state dict: a tcpc checkpoint, another proxy task, an external model.

Keys are matched by name after stripping the wrappers other tools add
(``module.`` from DistributedDataParallel, ``encoder.`` from tcpc's own
models, a top-level ``state_dict``/``model`` entry). The encoder's names are
those of Hara et al.'s 3D-ResNets, MedicalNet and MONAI; torchvision's video
ResNets (``stem.0``, ``layerK.B.conv1.0``/``.1``) are renamed to them. A tensor whose shape
differs only in input channels (an RGB video model's stem: 3 → 1) is summed
over them; other shape mismatches keep the fresh initialisation. The report
says exactly which keys were matched, adapted, mismatched, missing and
unexpected, so a caller can assert on them (moco-v3's ``main_lincls.py`` style).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from tcpc_train.loops.checkpoint import load_checkpoint

_PREFIXES = ("module.", "encoder.")
# torchvision.models.video (r3d_18 etc.) -> the encoder's names
_RENAMES = ((re.compile(r"^stem\.0\."), "conv1."), (re.compile(r"^stem\.1\."), "bn1."),
            (re.compile(r"^(layer\d\.\d+)\.conv([12])\.0\."), r"\1.conv\2."),
            (re.compile(r"^(layer\d\.\d+)\.conv([12])\.1\."), r"\1.bn\2."))


def _state_dict_of(obj: dict) -> dict:
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def _strip(key: str) -> str:
    for p in _PREFIXES:
        if key.startswith(p):
            key = key[len(p):]
    for pattern, repl in _RENAMES:
        key = pattern.sub(repl, key)
    return key


def load_encoder_weights(encoder: nn.Module, source: str | Path | dict, expect: dict | None = None) -> dict:
    """Copy matching weights from ``source`` into ``encoder`` (in place).

    Parameters
    ----------
    encoder : nn.Module
    source : path or dict
        A tcpc checkpoint, a plain state dict, or a file holding either
        (loaded with ``weights_only=True``).
    expect : dict, optional
        e.g. ``{"arch": "resnet18", "width": 0.125}``: a tcpc checkpoint whose
        config says otherwise is refused (its tensors would not fit).

    Returns
    -------
    dict with sorted key lists ``matched``, ``adapted`` (summed over input
    channels), ``mismatched`` (shape differs; kept fresh), ``missing`` (in the
    encoder, not in the source; includes ``mismatched``) and ``unexpected``
    (in the source, not in the encoder), plus ``source``.

    Raises
    ------
    ValueError
        No parameter of the source matches the encoder, or a tcpc checkpoint
        was trained with another architecture or width than ``expect``.
    """
    name = str(source) if not isinstance(source, dict) else "<state dict>"
    obj = source if isinstance(source, dict) else load_checkpoint(source)
    # A run on a user's encoder ("encoder" names its class) has no meaningful arch and width.
    cfg = obj.get("config") if isinstance(obj.get("config"), dict) and not obj.get("encoder") else {}
    clash = {k: (cfg[k], v) for k, v in (expect or {}).items() if k in cfg and cfg[k] != v}
    if clash:
        raise ValueError(f"{name} was trained with " + ", ".join(f"{k} {a!r}" for k, (a, _) in clash.items())
                         + "; use the same " + ", ".join(f"--{k}" for k in clash) + " (asked for "
                         + ", ".join(f"{b!r}" for _, b in clash.values()) + ")")
    sd = _state_dict_of(obj)
    theirs = {_strip(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    ours = encoder.state_dict()
    new, matched, adapted, mismatched = {}, [], [], []
    for k, v in ours.items():
        if k not in theirs:
            continue
        t = theirs[k]
        if t.shape == v.shape:
            new[k] = t.to(v.dtype)
            matched.append(k)
        elif (t.dim() == 5 and v.dim() == 5 and v.shape[1] == 1
              and t.shape[:1] + t.shape[2:] == v.shape[:1] + v.shape[2:]):
            new[k] = t.sum(1, keepdim=True).to(v.dtype)
            adapted.append(k)
        else:
            mismatched.append(k)
    if not any(v.dim() > 0 for v in new.values()):  # batch-norm step counters alone match anything
        raise ValueError(f"{name}: none of its {len(theirs)} tensors matches the encoder by name and shape "
                         f"(its keys look like {sorted(theirs)[:3]}; the encoder's like {sorted(ours)[:3]})")
    encoder.load_state_dict(new, strict=False)
    return {"source": name, "matched": sorted(matched), "adapted": sorted(adapted),
            "mismatched": sorted(mismatched), "missing": sorted(set(ours) - set(new)),
            "unexpected": sorted(set(theirs) - set(ours))}
