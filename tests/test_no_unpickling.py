"""Nothing from a data file is ever unpickled: one test per entry point, each with a payload that
would leave a trace (a marker file) if it were executed."""
import io
import pathlib
import tarfile

import numpy as np
import pytest


class Payload:
    """Unpickling this creates the marker file: the trace an executed payload leaves."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "EXECUTED"
    yield m
    assert not m.exists(), "a pickled payload was executed"


def _object_array(marker) -> np.ndarray:
    a = np.empty(1, dtype=object)
    a[0] = Payload(marker)
    return a


def test_ingest_of_a_pickled_npy_or_npz(tmp_path, marker):
    from tcpc_data.ingest.readers import read_numpy
    np.save(tmp_path / "x.npy", _object_array(marker), allow_pickle=True)
    np.savez(tmp_path / "x.npz", image=_object_array(marker))
    for name in ("x.npy", "x.npz"):
        with pytest.raises(ValueError, match=rf"case: cannot read NumPy file .*{name}"):
            read_numpy(tmp_path / name, spacing_zyx=(1, 1, 1), max_voxels=1000, case="case")


def test_a_medmnist_npz_with_pickled_images(tmp_path, marker):
    from tcpc_data.shards.labelled import load_npz_split
    np.savez(tmp_path / "m.npz", train_images=_object_array(marker), train_labels=np.zeros(1, np.int64))
    with pytest.raises(ValueError, match=r"m.npz: cannot read train_images/train_labels: Object arrays"):
        load_npz_split(tmp_path / "m.npz", "train")


def test_a_shard_member_holding_a_pickle(tmp_path, marker):
    from tcpc_data.shards.tario import read_npy, tar_samples
    buf = io.BytesIO()
    np.save(buf, _object_array(marker), allow_pickle=True)
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        info = tarfile.TarInfo("k0.cubes.npy")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    (key, members), = list(tar_samples(tmp_path / "s.tar"))
    with pytest.raises(ValueError, match="Object arrays cannot be loaded"):
        read_npy(members["cubes.npy"])


def test_a_checkpoint_or_external_weights_holding_a_pickle(tmp_path, marker):
    import torch

    from tcpc_train.loops.checkpoint import load_checkpoint
    from tcpc_train.models.encoders import build_encoder
    from tcpc_train.models.weights import load_encoder_weights
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a weights-only torch checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a weights-only torch checkpoint"):
        load_encoder_weights(build_encoder("resnet18", width=0.125), tmp_path / "evil.pt")
