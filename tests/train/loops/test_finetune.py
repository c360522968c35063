"""Fine-tuning and evaluation: a separable set reaches high ACC, label fractions are stratified and
seeded, any state dict initialises the encoder with an exact key report, the cascade works, and bad
input fails clearly."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from sklearn.metrics import roc_auc_score

from tcpc_train.loops.checkpoint import load_checkpoint, save_checkpoint
from tcpc_train.loops.finetuning import FinetuneConfig, VolumeSample, evaluate, finetune, predict, stratified_fraction
from tcpc_train.input.loader import ShardStream, open_shards
from tcpc_train.evaluation.metrics import classification_metrics
from tcpc_train.models.encoders import ResNet18_3d, build_encoder
from tcpc_train.loops.pretraining import PretrainConfig, pretrain
from tcpc_train.loops.runtime import RuntimeConfig
from tcpc_train.models.weights import load_encoder_weights

TINY = dict(width=1 / 16, batch_size=8, runtime=RuntimeConfig(workers=0, shuffle_buffer=512))


def test_finetune_reaches_high_accuracy_on_a_separable_set(labelled, tmp_path):
    s = finetune(labelled, tmp_path, FinetuneConfig(arch="vgg", epochs=3, **TINY))
    m = s["metrics"]
    assert m["acc"] >= 0.9 and m["auc"] >= 0.95 and m["n"] == 16
    assert sum(map(sum, m["confusion"])) == 16
    for name in ("metrics.json", "roc.png", "curves.png", "best.pt", "last.pt", "log.jsonl", "init_report.json"):
        assert (tmp_path / name).is_file()
    assert json.loads((tmp_path / "metrics.json").read_text())["acc"] == m["acc"]
    assert len(s["val"]) == 3 and s["init_report"] is None
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert {r["epoch"] for r in rows if "loss" in r} == {1, 2, 3} and all(math.isfinite(x) for x in losses)
    again = evaluate(tmp_path / "best.pt", labelled, tmp_path / "eval")
    assert again["acc"] == m["acc"] and again["confusion"] == m["confusion"]
    assert (tmp_path / "eval" / "roc.png").is_file()


def test_stratified_fraction_is_seeded_nested_and_keeps_every_class():
    labels = {f"k{i:03d}": int(i % 10 == 0) for i in range(200)}  # 20 of class 1, 180 of class 0
    one = stratified_fraction(labels, 0.01, seed=0)
    assert sorted(labels[k] for k in one) == [0, 1, 1][:len(one)] or {labels[k] for k in one} == {0, 1}
    ten = stratified_fraction(labels, 0.1, seed=0)
    assert sum(labels[k] for k in ten) == 2 and len(ten) == 20
    assert one <= ten <= stratified_fraction(labels, 1.0, seed=0)
    assert ten == stratified_fraction(labels, 0.1, seed=0) != stratified_fraction(labels, 0.1, seed=1)


def test_label_fraction_trains_on_the_selected_samples(labelled, tmp_path):
    s = finetune(labelled, tmp_path, FinetuneConfig(arch="vgg", epochs=1, label_fraction=0.25, **TINY))
    assert s["n_train"] == 8 and s["metrics"]["n_train"] == 8


def _external_state_dict(width, in_channels=1, video_stem=True):
    """A Hara / MedicalNet style 3D ResNet-18 state dict: 'module.' prefix, 7^3 stem, an fc head."""
    model = ResNet18_3d(width, video_stem=video_stem)
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    if in_channels != 1:
        sd["module.conv1.weight"] = sd["module.conv1.weight"].repeat(1, in_channels, 1, 1, 1) / in_channels
    sd["module.fc.weight"], sd["module.fc.bias"] = torch.zeros(400, model.out_dim), torch.zeros(400)
    return {"state_dict": sd, "arch": "resnet-18"}


def test_external_state_dict_reports_exact_missing_and_unexpected_keys(tmp_path):
    torch.save(_external_state_dict(1 / 16), tmp_path / "ext.pth")
    enc = build_encoder("resnet18", 1 / 16)
    rep = load_encoder_weights(enc, tmp_path / "ext.pth")
    assert rep["missing"] == ["conv1.weight"] and rep["mismatched"] == ["conv1.weight"]
    assert rep["unexpected"] == ["fc.bias", "fc.weight"] and rep["adapted"] == []
    assert len(rep["matched"]) == len(enc.state_dict()) - 1
    ext = torch.load(tmp_path / "ext.pth", weights_only=True)["state_dict"]
    assert torch.equal(enc.state_dict()["layer4.1.conv2.weight"], ext["module.layer4.1.conv2.weight"])


def test_rgb_stem_is_summed_over_input_channels():
    src = _external_state_dict(1 / 16, in_channels=3, video_stem=False)
    enc = build_encoder("resnet18", 1 / 16)
    rep = load_encoder_weights(enc, src)
    assert rep["adapted"] == ["conv1.weight"] and rep["missing"] == []
    assert torch.allclose(enc.conv1.weight, src["state_dict"]["module.conv1.weight"].sum(1, keepdim=True))


def test_torchvision_video_resnet_names_are_mapped():
    """torchvision r3d_18 layout (no download: its key names and stem shape, built here)."""
    ours = build_encoder("resnet18", 1 / 16).state_dict()
    tv = {}
    for k, v in ours.items():
        k2 = k.replace("conv1.", "stem.0.", 1) if k.startswith("conv1.") else \
            k.replace("bn1.", "stem.1.", 1) if k.startswith("bn1.") else k
        for i in "12":
            k2 = k2.replace(f".conv{i}.", f".conv{i}.0.").replace(f".bn{i}.", f".conv{i}.1.")
        tv[k2] = v.clone()
    tv["stem.0.weight"] = torch.zeros(ours["conv1.weight"].shape[0], 3, 3, 7, 7)  # RGB, (3, 7, 7) kernel
    tv["fc.weight"], tv["fc.bias"] = torch.zeros(400, 32), torch.zeros(400)
    assert "layer1.0.conv1.0.weight" in tv and "layer1.0.conv1.1.running_mean" in tv
    rep = load_encoder_weights(build_encoder("resnet18", 1 / 16), tv)
    assert rep["missing"] == ["conv1.weight"] and rep["unexpected"] == ["fc.bias", "fc.weight"]


def test_unrelated_state_dict_is_refused(tmp_path):
    with pytest.raises(ValueError, match="none of its 1 tensors matches"):
        load_encoder_weights(build_encoder("vgg", 1 / 16), {"bert.embeddings": torch.zeros(3)})
    # Batch-norm step counters (shape ()) match any encoder: not enough to count as a match.
    other = {k: v for k, v in build_encoder("resnet18", 1 / 8).state_dict().items()}
    with pytest.raises(ValueError, match="none of its"):
        load_encoder_weights(build_encoder("resnet18", 1 / 16), other)


def test_cascade_external_then_tcpc_then_finetune(u_shards, labelled, tmp_path):
    torch.save(_external_state_dict(1 / 16), tmp_path / "ext.pth")
    p = pretrain(u_shards, tmp_path / "tcpc", PretrainConfig(steps=1, width=1 / 16, batch_size=4,
                                                              runtime=RuntimeConfig(workers=0),
                                                              init=str(tmp_path / "ext.pth")))
    assert p["init_report"]["missing"] == ["conv1.weight"]
    s = finetune(labelled, tmp_path / "ft", FinetuneConfig(epochs=1, init=str(tmp_path / "tcpc" / "last.pt"), **TINY))
    rep = s["init_report"]
    assert rep["missing"] == [] and rep["mismatched"] == []
    assert rep["unexpected"] and all(k.startswith("head.") for k in rep["unexpected"])  # GRU + predictor
    assert load_checkpoint(tmp_path / "ft" / "best.pt")["kind"] == "classifier"


def test_finetune_bad_input(labelled, tmp_path, u_shards, shard_manifest):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        finetune(tmp_path / "none", tmp_path / "o", FinetuneConfig(**TINY))
    with pytest.raises(FileNotFoundError, match="train not found"):
        finetune(u_shards, tmp_path / "o", FinetuneConfig(**TINY))
    broken = tmp_path / "broken"
    shutil.copytree(labelled, broken)
    shard_manifest(broken / "test", [], kind="finetune")
    with pytest.raises(ValueError, match="empty manifest"):
        finetune(broken, tmp_path / "o", FinetuneConfig(**TINY))
    with pytest.raises(ValueError, match="label fraction"):
        finetune(labelled, tmp_path / "o", FinetuneConfig(label_fraction=0, **TINY))
    other = tmp_path / "wrong_layout"
    (other / "train").mkdir(parents=True)
    shutil.copytree(u_shards, other / "train", dirs_exist_ok=True)
    shutil.copytree(u_shards, other / "test")
    with pytest.raises(ValueError, match="no 'volume.npy' member"):
        finetune(other, tmp_path / "o", FinetuneConfig(**TINY))


def test_init_with_the_wrong_width_is_a_clear_error(labelled, tmp_path):
    s = finetune(labelled, tmp_path / "a", FinetuneConfig(arch="vgg", epochs=1, **TINY))
    with pytest.raises(ValueError, match=r"trained with width 0.0625; use the same --width \(asked for 0.125\)"):
        finetune(labelled, tmp_path / "b", FinetuneConfig(arch="vgg", epochs=1, init=s["checkpoint"],
                                                          **{**TINY, "width": 1 / 8}))
    save_checkpoint(tmp_path / "pre.pt", {"kind": "pretrain", "model": {}, "config": {}})
    with pytest.raises(ValueError, match="not a fine-tuned classifier"):
        evaluate(tmp_path / "pre.pt", labelled)
    with pytest.raises(ValueError, match="not a weights-only torch checkpoint"):
        evaluate(tmp_path / "a" / "init_report.json", labelled)


def test_metrics_known_answers():
    m = classification_metrics([0, 0, 1, 1], [[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    assert m["acc"] == 0.75 and m["auc"] == 1.0 and m["confusion"] == [[1, 1], [0, 2]]
    assert classification_metrics([1, 1], [[0.2, 0.8], [0.6, 0.4]])["auc"] is None
    three = classification_metrics([0, 1, 2], [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    assert three["acc"] == 1.0 and three["auc"] == 1.0


def test_a_confident_model_keeps_its_auc(labelled):
    """Logits far apart: float32 probabilities are all exactly 1 for class 1 and would tie at
    AUC 0.5; predict's log-probabilities keep the ranking, so the AUC is that of the logits."""
    class Confident(torch.nn.Module):
        def forward(self, x):
            m = x.mean((1, 2, 3, 4))
            return torch.stack([torch.zeros_like(m), 2000 * m + 100], 1)

    data = open_shards(labelled / "test")
    labels, scores = predict(Confident(), data, 4, torch.device("cpu"))
    stream = ShardStream(data, VolumeSample(False, 0), 4, shuffle_buffer=1, epoch=0, rank=0, world=1)
    logits = torch.cat([Confident()(b["volume"]) for b in stream])
    assert (torch.softmax(logits, 1)[:, 1] == 1.0).all()  # saturated in float32
    expected = roc_auc_score(labels, logits[:, 1].numpy())
    m = classification_metrics(labels, scores)
    assert expected > 0.5 and m["auc"] == pytest.approx(expected) and m["acc"] == pytest.approx((labels == 1).mean())


def test_killed_finetune_resumes_at_the_epoch_with_the_same_losses(labelled, tmp_path, killed_after):
    cfg = FinetuneConfig(arch="vgg", epochs=2, **TINY)
    whole = finetune(labelled, tmp_path / "whole", cfg)
    with killed_after(lambda row: row.get("epoch") == 2 and "loss" in row):  # last.pt holds epoch 1
        finetune(labelled, tmp_path / "killed", cfg)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 1
    again = finetune(labelled, tmp_path / "killed", cfg)

    def losses(run):
        return [json.loads(x).get("loss") for x in (run / "log.jsonl").read_text().splitlines()]
    assert losses(tmp_path / "killed") == pytest.approx(losses(tmp_path / "whole"), abs=1e-5)
    assert again["val"] == whole["val"] and again["metrics"]["confusion"] == whole["metrics"]["confusion"]
    with pytest.raises(ValueError, match="holds another run .*lr"):
        finetune(labelled, tmp_path / "killed", FinetuneConfig(arch="vgg", epochs=3, **{**TINY, "lr": 0.1}))


class MyEncoder(torch.nn.Module):
    """A user's encoder: no out_dim, no forward_features; its forward ends in a feature map."""

    def __init__(self, channels=6):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, channels, 3, padding=1)
        self.bn = torch.nn.BatchNorm3d(channels)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def test_pretrain_and_finetune_take_your_own_encoder(u_shards, labelled, tmp_path):
    torch.manual_seed(0)
    p = pretrain(u_shards, tmp_path / "pre", PretrainConfig(steps=2, batch_size=4, runtime=RuntimeConfig(workers=0)),
                 encoder=MyEncoder())
    name = f"{MyEncoder.__module__}.MyEncoder"
    assert p["encoder"] == name and math.isfinite(p["final_loss"])
    ck = load_checkpoint(tmp_path / "pre" / "last.pt")
    assert ck["encoder"] == name and {"encoder.conv.weight", "encoder.bn.running_mean"} <= set(ck["model"])
    enc = MyEncoder()
    s = finetune(labelled, tmp_path / "ft", FinetuneConfig(epochs=2, init=str(tmp_path / "pre" / "last.pt"), **TINY),
                 encoder=enc)
    rep = json.loads((tmp_path / "ft" / "init_report.json").read_text())
    assert rep["missing"] == [] and rep["matched"] == sorted(MyEncoder().state_dict())
    assert s["encoder"] == name and s["metrics"]["n"] == 16 and enc.out_dim == 6
    again = evaluate(tmp_path / "ft" / "best.pt", labelled, encoder=MyEncoder())
    assert again["acc"] == s["metrics"]["acc"] and again["confusion"] == s["metrics"]["confusion"]
    with pytest.raises(ValueError, match=rf"fine-tuned with the encoder '{name}'; pass that encoder \(got none\)"):
        evaluate(tmp_path / "ft" / "best.pt", labelled)
    finetune(labelled, tmp_path / "scratch", FinetuneConfig(arch="vgg", epochs=1, **TINY), encoder=MyEncoder())
    with pytest.raises(ValueError, match=rf"holds another run \(encoder: '{name}'\)"):
        finetune(labelled, tmp_path / "scratch", FinetuneConfig(arch="vgg", epochs=2, **TINY))
    with pytest.raises(ValueError, match=rf"trained with the encoder '{name}', not 'resnet18'"):
        pretrain(u_shards, tmp_path / "pre", PretrainConfig(steps=3, batch_size=4, runtime=RuntimeConfig(workers=0)))


@pytest.fixture
def medicalnet_file(tmp_path, medicalnet_state_dict):
    torch.save(medicalnet_state_dict(4), tmp_path / "resnet_18.pth")  # width 4 = 64 / 16
    return str(tmp_path / "resnet_18.pth")


def test_a_medicalnet_checkpoint_initialises_every_encoder_tensor(labelled, tmp_path, medicalnet_file):
    init = medicalnet_file
    s = finetune(labelled, tmp_path / "ft", FinetuneConfig(arch="medicalnet18", epochs=1, init=init, **TINY))
    rep = json.loads((tmp_path / "ft" / "init_report.json").read_text())
    assert rep == s["init_report"] and rep["missing"] == [] and rep["mismatched"] == []
    assert len(rep["matched"]) == 102 and all(k.startswith("conv_seg.") for k in rep["unexpected"])


def test_a_monai_resnet_with_a_medicalnet_checkpoint(labelled, tmp_path, medicalnet_file):
    nets = pytest.importorskip("monai.networks.nets", reason="monai not installed (pip install 'tcpc[monai]')")
    enc = nets.resnet18(spatial_dims=3, n_input_channels=1, feed_forward=False, shortcut_type="A",
                        widen_factor=1 / 16)
    s = finetune(labelled, tmp_path / "ft", FinetuneConfig(epochs=1, init=medicalnet_file, **TINY),
                 encoder=enc)
    rep = s["init_report"]
    assert rep["missing"] == [] and len(rep["matched"]) == 102 and s["encoder"] == "monai.networks.nets.resnet.ResNet"
    assert enc.out_dim == 32 and s["metrics"]["n"] == 16 and math.isfinite(s["metrics"]["acc"])
