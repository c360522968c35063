"""Encoders: 3D ResNet-18 and 3D VGG with one input channel, built for small cubes, and any other module.

Both map a batch (N, 1, D, H, W) through ``forward_features`` to a feature
vector (N, F) by adaptive average pooling; a classification head is added only
when fine-tuning (:class:`Classifier`). The same encoder runs on c³ cubes in
pretraining and on S³ volumes in fine-tuning.

Stem and strides (why not the video stem). The standard 3D ResNet stem (7³
conv, stride 2, then a stride-2 max-pool) shrinks a 16³ cube to 4³ before the
first stage, and stages 3 and 4 then run 3³ convolutions on 1³ feature maps:
26 of 27 kernel taps multiply padding, and on 2 CPU cores the backward pass of
those convolutions dominate a training step (``bench/train.py``; figures on
``docs/performance.md``, Encoder stem). Here the stem is
a 3³ convolution with stride ``stem_stride`` (default 2) and no max-pool, and
the stages stride 1, 2, 2, 1: a 16³ cube ends at 2³ (never 1³), a 28³ volume
at 4³, a 64³ volume at 8³. The price is honest work instead of padding:
about 7× the multiply-adds of the video stem per cube (``python bench/train.py
--stems --width 1`` measures both; ``docs/performance.md``). Use a GPU or a smaller
``width`` for full runs on a CPU. ``width`` multiplies every channel count (1.0: 64-128-256-512, the
paper's ResNet-18; 1/8 for CPU tests and the demo).

Parameter names follow the common 3D ResNet checkpoints (``conv1``, ``bn1``,
``layerK.B.conv1``, ``layerK.B.downsample.0``; Hara et al.'s 3D-ResNets and
MedicalNet), so an external state dict matches by name and only the stem
differs in shape (see :mod:`tcpc_train.models.weights`). ``medicalnet18`` is the
ResNet-18 of MedicalNet (Chen et al. 2019) itself: the 7³ stride-2 stem and
max-pool, shortcut A (parameter-free: subsample, then zero channels, so a
stage's first block has no ``downsample`` weights) and stages 3 and 4
dilated 2 and 4 instead of strided; every tensor of a MedicalNet
``resnet_18.pth`` backbone loads into it.

Any ``nn.Module`` can be the encoder from Python (:func:`adopt_encoder`): its
``forward`` (or ``forward_features``) gives features (N, F), or a feature map
(N, F, ...) that is averaged over its spatial axes (:func:`encoder_features`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("resnet18", "vgg", "medicalnet18")

# (channels at width 1, number of 3^3 convs) per VGG stage; max-pool 2 between stages.
_VGG_STAGES = ((64, 1), (128, 1), (256, 2), (512, 2))


def _ch(base: int, width: float) -> int:
    return max(1, int(round(base * width)))


class ZeroPadShortcut(nn.Module):
    """Shortcut A of He et al. (MedicalNet's ``downsample_basic_block``): every ``stride``-th voxel,
    channels ``cin`` .. ``cout`` zero. No parameters. (N, cin, D, H, W) -> (N, cout, ⌈D/s⌉, ⌈H/s⌉, ⌈W/s⌉)."""

    def __init__(self, cout: int, stride: int):
        super().__init__()
        self.cout, self.stride = cout, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        return F.pad(x[:, :, ::s, ::s, ::s], (0, 0, 0, 0, 0, 0, 0, self.cout - x.shape[1]))


class BasicBlock3d(nn.Module):
    """Two 3³ convolutions with a residual connection (ResNet-18's block).

    ``shortcut`` "B": a 1³ convolution + batch norm where the shape changes (``downsample.0/1``);
    "A": :class:`ZeroPadShortcut`. ``dilation`` dilates both convolutions (padding keeps the size).
    """

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str = "B", dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = ZeroPadShortcut(cout, stride) if shortcut == "A" else \
                nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18_3d(nn.Module):
    """3D ResNet-18 with a small-cube stem; ``forward`` returns features (N, ``out_dim``).

    Parameters
    ----------
    width : float
        Channel multiplier (1.0 = 64, 128, 256, 512 channels per stage).
    stem_stride : int
        Stride of the 3³ stem convolution (1 or 2).
    stage_strides : tuple of int
        Strides of the four stages.
    video_stem : bool
        Use the classic 7³ stride-2 stem and a stride-2 max-pool instead (for comparison, MedicalNet).
    shortcut : {"B", "A"}
        Where a block changes shape: a 1³ convolution + batch norm (B) or :class:`ZeroPadShortcut` (A).
    stage_dilations : tuple of int
        Dilation of the four stages' convolutions.
    """

    def __init__(self, width: float = 1.0, stem_stride: int = 2,
                 stage_strides: tuple[int, ...] = (1, 2, 2, 1), video_stem: bool = False,
                 shortcut: str = "B", stage_dilations: tuple[int, ...] = (1, 1, 1, 1)):
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        chans = [_ch(c, width) for c in (64, 128, 256, 512)]
        if video_stem:
            self.conv1 = nn.Conv3d(1, chans[0], 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv3d(1, chans[0], 3, stride=stem_stride, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm3d(chans[0])
        self.relu = nn.ReLU(inplace=True)
        cin = chans[0]
        for i, (cout, stride, dil) in enumerate(zip(chans, stage_strides, stage_dilations), start=1):
            self.add_module(f"layer{i}", nn.Sequential(BasicBlock3d(cin, cout, stride, shortcut, dil),
                                                       BasicBlock3d(cout, cout, 1, shortcut, dil)))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.out_dim = cin
        _init_weights(self)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, D, H, W) -> (N, out_dim) by adaptive average pooling."""
        return torch.flatten(self.avgpool(self.feature_map(x)), 1)

    forward = forward_features


class VGG3d(nn.Module):
    """3D VGG (stages of 1, 1, 2, 2 convs of 3³ with BN), 3 max-pools: 16³ cubes end at 2³."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for s, (base, n) in enumerate(_VGG_STAGES):
            if s > 0:
                layers.append(nn.MaxPool3d(2, ceil_mode=True))
            for _ in range(n):
                cout = _ch(base, width)
                layers += [nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout),
                           nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.out_dim = cin
        _init_weights(self)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, D, H, W) -> (N, out_dim) by adaptive average pooling."""
        return torch.flatten(self.avgpool(self.features(x)), 1)

    forward = forward_features


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_encoder(arch: str = "resnet18", width: float = 1.0) -> nn.Module:
    """Build an encoder; ``encoder.out_dim`` is its feature length.

    Parameters
    ----------
    arch : {"resnet18", "vgg", "medicalnet18"}
        ``medicalnet18``: MedicalNet's ResNet-18 (7³ stem + max-pool, shortcut A, stages 3-4
        dilated), whose pretrained ``resnet_18.pth`` loads completely (width 1).
    width : float
        Channel multiplier, > 0 (1/8 runs a training step in well under a second on a CPU).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    if arch == "medicalnet18":
        return ResNet18_3d(width, video_stem=True, stage_strides=(1, 2, 1, 1), shortcut="A",
                           stage_dilations=(1, 1, 2, 4))
    return ResNet18_3d(width) if arch == "resnet18" else VGG3d(width)


def encoder_features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Features (N, F) of a batch (N, 1, D, H, W): ``encoder.forward_features`` when it has one, else
    its ``forward``; an output with spatial axes (N, F, d, h, w) is averaged over them."""
    f = encoder.forward_features(x) if hasattr(encoder, "forward_features") else encoder(x)
    return f.flatten(2).mean(2) if f.dim() > 2 else f


def adopt_encoder(encoder: nn.Module, sample_shape: tuple[int, ...]) -> nn.Module:
    """Check a user's module as an encoder for samples of ``sample_shape`` (D, H, W); give it ``out_dim``.

    The module's forward is probed once on zeros (2, 1, D, H, W) in eval mode
    (no batch-norm statistics change); ``out_dim``, when the module lacks one,
    is set to the feature length found. The module itself is returned.

    Raises
    ------
    TypeError
        ``encoder`` is not an ``nn.Module``.
    ValueError
        The forward fails on such a batch or gives no (N, F[, ...]) features.
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    name = type(encoder).__name__
    was_training = encoder.training
    x = torch.zeros(2, 1, *sample_shape, device=next(encoder.parameters(), torch.zeros(())).device)
    try:
        with torch.no_grad():
            f = encoder_features(encoder.eval(), x)
    except Exception as exc:  # whatever the module raises, the caller gets one line naming it
        raise ValueError(f"encoder {name} fails on a batch of shape {tuple(x.shape)}: {exc}") from None
    finally:
        encoder.train(was_training)
    if f.dim() != 2 or f.shape[0] != 2:
        raise ValueError(f"encoder {name} maps {tuple(x.shape)} to {tuple(f.shape)}; it must give features (N, F) "
                         "(e.g. MONAI's ResNet with feed_forward=False)")
    if getattr(encoder, "out_dim", None) != f.shape[1]:
        if hasattr(encoder, "out_dim"):
            raise ValueError(f"encoder {name} says out_dim {encoder.out_dim} but gives {f.shape[1]} features")
        encoder.out_dim = int(f.shape[1])
    return encoder


class Classifier(nn.Module):
    """Encoder + linear head for fine-tuning: (N, 1, S, S, S) -> logits (N, n_classes)."""

    def __init__(self, encoder: nn.Module, n_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(encoder_features(self.encoder, x))
