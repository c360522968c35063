"""Encoders, the InfoNCE loss and the proxy-task puzzles: shapes and known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tcpc_train.models.encoders import (BasicBlock3d, Classifier, ResNet18_3d, ZeroPadShortcut, adopt_encoder, build_encoder,
                               encoder_features)
from tcpc_train.models.weights import load_encoder_weights
from tcpc_train.tasks.proxy import BlockPuzzle, canonical_order, permutation_set, shuffle_block
from tcpc_train.tasks.contrastive import ContrastivePredictiveCoding, info_nce


@pytest.mark.parametrize("arch", ["resnet18", "vgg"])
@pytest.mark.parametrize("side,final", [(16, 2), (28, 4)])
def test_encoder_shapes_small_cube_stem(arch, side, final):
    torch.manual_seed(0)
    enc = build_encoder(arch, width=1 / 16).eval()
    x = torch.randn(2, 1, side, side, side)
    assert tuple(enc.feature_map(x).shape[2:]) == (final,) * 3  # 16^3 cubes never collapse to 1^3
    assert enc.forward_features(x).shape == (2, enc.out_dim)
    assert enc.out_dim == 32  # 512 / 16


def test_video_stem_collapses_cubes_to_one_voxel():
    assert tuple(ResNet18_3d(1 / 16, video_stem=True, stage_strides=(1, 2, 2, 2))
                 .eval().feature_map(torch.randn(2, 1, 16, 16, 16)).shape[2:]) == (1, 1, 1)


def test_build_encoder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown architecture 'resnet50'"):
        build_encoder("resnet50")
    with pytest.raises(ValueError, match="width must be > 0"):
        build_encoder("vgg", 0)


def test_classifier_head_only_when_finetuning():
    enc = build_encoder("resnet18", 1 / 16)
    assert not any(k.startswith("head") for k in enc.state_dict())
    assert Classifier(enc, 3).eval()(torch.randn(2, 1, 16, 16, 16)).shape == (2, 3)


def test_info_nce_aligned_features_give_low_loss():
    torch.manual_seed(0)
    z = torch.randn(32, 128)
    assert info_nce(z, z, temperature=0.1).item() < 0.01  # vs. log(32) = 3.47 by chance


def test_info_nce_unrelated_features_give_log_batch():
    torch.manual_seed(0)
    b = 64
    losses = [info_nce(torch.randn(b, 512), torch.randn(b, 512), temperature=1.0).item() for _ in range(5)]
    assert np.mean(losses) == pytest.approx(math.log(b), rel=0.03)
    z = torch.randn(b, 512)
    assert info_nce(z, z[torch.randperm(b)], temperature=1.0).item() == pytest.approx(math.log(b), rel=0.1)


def test_info_nce_own_negatives_add_candidates():
    torch.manual_seed(0)
    p, t = torch.randn(8, 64), torch.randn(8, 64)
    extra = torch.randn(8, 7, 64)
    assert info_nce(p, t, 1.0, extra).item() == pytest.approx(math.log(15), rel=0.15)
    with pytest.raises(ValueError, match="both be"):
        info_nce(p, t[:4])
    with pytest.raises(ValueError, match="temperature"):
        info_nce(p, t, 0.0)


def test_cpc_model_loss_near_chance_at_init_and_trains():
    torch.manual_seed(0)
    model = ContrastivePredictiveCoding(build_encoder("vgg", 1 / 16), temperature=0.5, own_negatives=True)
    cubes = torch.randn(4, 8, 8, 8, 8)
    loss = model(cubes)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    assert model.encoder.features[0].weight.grad is not None


def test_permutation_set_is_seeded_distinct_and_far_apart():
    p = permutation_set(20, seed=0)
    assert p.shape == (20, 8)
    assert np.array_equal(p, permutation_set(20, seed=0))
    assert len({tuple(r) for r in p.tolist()}) == 20
    assert all(sorted(r) == list(range(8)) for r in p.tolist())
    ham = (p[:, None, :] != p[None, :, :]).sum(-1) + 8 * np.eye(20, dtype=int)
    assert ham.min() >= 6  # greedy max-min keeps permutations far apart
    with pytest.raises(ValueError, match="number of permutations"):
        permutation_set(1)


def test_shuffle_block_inverts_to_canonical_order():
    rng = np.random.default_rng(0)
    pos = np.array([(z, y, x) for z in (3, 4) for y in (0, 1) for x in (5, 6)])[rng.permutation(8)]
    cubes = np.stack([np.full((4, 4, 4), 100 * z + 10 * y + x, np.float32) for z, y, x in pos])
    cubes[:, 0, 0, 0] += 0.5  # a corner marker shows rotations
    perms = permutation_set(10)
    shuffled, label, rot = shuffle_block(cubes, pos, perms, rotate=True, rng=rng)
    canon = cubes[canonical_order(pos)]
    assert [c[1, 1, 1] for c in canon] == sorted(c[1, 1, 1] for c in canon)
    for i in range(8):
        expect = canon[perms[label][i]]
        if rot[i, 0]:
            expect = expect[::-1, :, ::-1]
        if rot[i, 1]:
            expect = expect[::-1, ::-1, :]
        np.testing.assert_array_equal(shuffled[i], expect)
    with pytest.raises(ValueError, match="2x2x2"):
        canonical_order(np.zeros((8, 3), int))


@pytest.mark.parametrize("rotate", [False, True])
def test_block_puzzle_loss(rotate):
    torch.manual_seed(0)
    model = BlockPuzzle(build_encoder("resnet18", 1 / 16), n_perms=10, rotate=rotate)
    loss = model(torch.randn(2, 8, 8, 8, 8), torch.tensor([1, 7]), torch.zeros(2, 8, 2))
    assert math.isfinite(loss.item()) and loss.item() > 0


def test_a_medicalnet_resnet18_checkpoint_loads_completely(medicalnet_state_dict):
    src = medicalnet_state_dict()
    enc = build_encoder("medicalnet18", 1.0)
    rep = load_encoder_weights(enc, src)
    assert rep["missing"] == [] and rep["mismatched"] == [] and rep["adapted"] == []
    assert rep["matched"] == sorted(enc.state_dict()) and len(rep["matched"]) == 102  # 6 stem + 8 blocks x 12
    assert rep["unexpected"] and all(k.startswith("conv_seg.") for k in rep["unexpected"])  # the segmentation head
    for k, v in enc.state_dict().items():
        assert torch.equal(v, src["state_dict"][f"module.{k}"]), k
    # The small-cube ResNet-18 keeps its 3^3 stem and 1^3 projection shortcuts fresh.
    small = load_encoder_weights(build_encoder("resnet18", 1.0), src)
    assert small["mismatched"] == ["conv1.weight"] and "layer2.0.downsample.0.weight" in small["missing"]


def test_medicalnet18_geometry_on_cubes_and_volumes():
    enc = build_encoder("medicalnet18", 1 / 16).eval()
    assert tuple(enc.feature_map(torch.randn(2, 1, 16, 16, 16)).shape[2:]) == (2, 2, 2)  # /4 stem, /2 stage 2
    assert enc(torch.randn(2, 1, 28, 28, 28)).shape == (2, enc.out_dim) == (2, 32)
    assert isinstance(enc.layer2[0].downsample, ZeroPadShortcut) and enc.layer1[0].downsample is None
    assert enc.layer4[0].conv1.dilation == (4, 4, 4) and enc.layer3[1].conv2.dilation == (2, 2, 2)


def test_shortcut_a_subsamples_and_pads_channels_with_zeros():
    x = torch.randn(2, 4, 5, 6, 7)
    y = ZeroPadShortcut(10, 2)(x)
    assert y.shape == (2, 10, 3, 3, 4)
    assert torch.equal(y[:, :4], x[:, :, ::2, ::2, ::2]) and not y[:, 4:].any()
    # A block whose convolutions give zero passes its input through shortcut A, then the ReLU.
    block = BasicBlock3d(4, 10, 2, shortcut="A").eval()
    for conv in (block.conv1, block.conv2):
        torch.nn.init.zeros_(conv.weight)
    with torch.no_grad():
        assert torch.equal(block(x), torch.relu(y))
    assert not any("downsample" in k for k in block.state_dict())


class BareEncoder(torch.nn.Module):
    """A user's encoder without out_dim or forward_features: its forward gives a feature map."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 5, 3, padding=1)
        self.bn = torch.nn.BatchNorm3d(5)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def test_any_module_is_adopted_as_an_encoder():
    enc = BareEncoder()
    before = enc.bn.running_mean.clone()
    assert adopt_encoder(enc, (8, 8, 8)) is enc and enc.out_dim == 5 and enc.training
    assert torch.equal(enc.bn.running_mean, before)  # probed in eval mode
    x = torch.randn(3, 1, 8, 8, 8)
    assert torch.allclose(encoder_features(enc, x), enc(x).mean((2, 3, 4)))
    assert Classifier(enc, 3)(x).shape == (3, 3)
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        adopt_encoder(lambda x: x, (8, 8, 8))
    with pytest.raises(ValueError, match=r"encoder Linear fails on a batch of shape \(2, 1, 8, 8, 8\)"):
        adopt_encoder(torch.nn.Linear(3, 4), (8, 8, 8))
    flat = torch.nn.Sequential(torch.nn.Flatten(0))
    with pytest.raises(ValueError, match=r"maps \(2, 1, 8, 8, 8\) to \(1024,\); it must give features"):
        adopt_encoder(flat, (8, 8, 8))
