"""Deep-layer feature maps of one crop under several encoders (the paper's Fig. 3).

For each encoder, the last convolutional stage's activations
(``encoder.feature_map``, before pooling) on the crop: the channel mean and a
few channels, each upsampled to the crop and laid over its central axial
slice. Channels are chosen without looking at where the nodule is: by their
variance over the whole crop, or fixed indices, so the figure does not pick
channels because they fire at the crop centre. The crop shown should be of a
nodule the fine-tuning never saw (``tcpc_train.apps.realct`` leaves it out).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def deep_features(encoder: torch.nn.Module, crop: np.ndarray) -> np.ndarray:
    """Activations of the encoder's last stage on one crop.

    Parameters
    ----------
    encoder : module with ``feature_map`` ((N, 1, D, H, W) -> (N, C, d, h, w))
    crop : (S, S, S) array in [-1, 1]

    Returns
    -------
    (C, S, S, S) float32: each channel trilinearly upsampled to the crop.
    """
    encoder.eval()
    x = torch.as_tensor(np.asarray(crop, np.float32))[None, None]
    fmap = encoder.feature_map(x)
    return F.interpolate(fmap, size=crop.shape, mode="trilinear", align_corners=False)[0].numpy()


def select_channels(feats: np.ndarray, n_channels: int, channels: str | Sequence[int] = "variance") -> np.ndarray:
    """Channels of ``feats`` (C, S, S, S) to draw, chosen without reference to the crop centre.

    Parameters
    ----------
    feats : (C, S, S, S) array
    n_channels : int
        How many channels ``"variance"`` picks.
    channels : "variance" or a sequence of int
        ``"variance"``: the ``n_channels`` channels whose activation varies
        most over the whole crop (ties: the lower index first); a sequence:
        these channel indices, in this order.

    Returns
    -------
    (K,) int64 channel indices.
    """
    if isinstance(channels, str):
        if channels != "variance":
            raise ValueError(f"channels must be 'variance' or a list of channel indices, got {channels!r}")
        var = feats.reshape(len(feats), -1).var(1)
        return np.argsort(-var, kind="stable")[:n_channels]
    idx = np.asarray(list(channels), dtype=np.int64)
    if idx.ndim != 1 or not len(idx) or (idx < 0).any() or (idx >= len(feats)).any():
        raise ValueError(f"channel indices must lie in [0, {len(feats)}), got {list(channels)}")
    return idx


def render_feature_maps(encoders: Mapping[str, torch.nn.Module], crop: np.ndarray, png: str | Path,
                        n_channels: int = 3, title: str = "", channels: str | Sequence[int] = "variance") -> Path:
    """One row per encoder: the crop's central axial slice, the channel mean, and the channels
    of :func:`select_channels` (by variance over the whole crop, or fixed indices), as heat maps
    over the slice."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    crop = np.asarray(crop, np.float32)
    mid = tuple(s // 2 for s in crop.shape)
    ncols = 2 + (n_channels if isinstance(channels, str) else len(channels))
    fig, axes = plt.subplots(len(encoders), ncols, figsize=(2.6 * ncols, 2.6 * len(encoders)), squeeze=False)
    for row, (name, enc) in zip(axes, encoders.items()):
        feats = deep_features(enc, crop)
        top = select_channels(feats, n_channels, channels)
        maps = [("channel mean", feats.mean(0))] + [(f"channel {c}", feats[c]) for c in top]
        row[0].imshow(crop[mid[0]], cmap="gray", vmin=-1, vmax=1)
        row[0].set_title(f"{name}: crop", fontsize=9)
        for ax, (label, vol) in zip(row[1:], maps):
            sl = vol[mid[0]]
            span = float(sl.max() - sl.min()) or 1.0
            ax.imshow(crop[mid[0]], cmap="gray", vmin=-1, vmax=1)
            ax.imshow((sl - sl.min()) / span, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
            ax.set_title(label, fontsize=9)
        for ax in row:
            ax.plot(mid[2], mid[1], "c+", ms=8)
            ax.set_axis_off()
    fig.suptitle(title or "deep-layer feature maps (last stage, central axial slice; + = crop centre)",
                 fontsize=11)
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
