"""Deep-layer feature maps of one crop under several encoders (the paper's Fig. 3).

For each encoder, the last convolutional stage's activations
(``encoder.feature_map``, before pooling) on the crop: the channel mean and
the channels most active at the crop centre, each upsampled to the crop and
laid over its central axial slice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

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


def render_feature_maps(encoders: Mapping[str, torch.nn.Module], crop: np.ndarray, png: str | Path,
                        n_channels: int = 3, title: str = "") -> Path:
    """One row per encoder: the crop's central axial slice, the channel mean, and the
    ``n_channels`` channels most active at the centre, as heat maps over the slice."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    crop = np.asarray(crop, np.float32)
    mid = tuple(s // 2 for s in crop.shape)
    ncols = 2 + n_channels
    fig, axes = plt.subplots(len(encoders), ncols, figsize=(2.6 * ncols, 2.6 * len(encoders)), squeeze=False)
    for row, (name, enc) in zip(axes, encoders.items()):
        feats = deep_features(enc, crop)
        top = np.argsort(-feats[(slice(None), *mid)])[:n_channels]
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
