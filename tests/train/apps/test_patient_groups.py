"""The bootstrap's unit is the patient: a sample's group is its first patient field that has a value."""
import json

import numpy as np

from tcpc_data.shards.tario import encode_npy
from tcpc_train.apps.experiment import _KeyedVolume


def _raw(meta: dict) -> dict:
    return {"__key__": "k0", "__url__": "s.tar", "volume.npy": encode_npy(np.zeros((4, 4, 4), np.float16)),
            "cls": b"1", "json": json.dumps(meta).encode()}


def test_a_null_patient_falls_back_to_the_case_never_to_one_group_for_all():
    assert _KeyedVolume()(_raw({"case": "ph-03", "patient": None}), 0)["key"] == ("k0", "ph-03")
    assert _KeyedVolume()(_raw({"case": "c", "patient": "P7"}), 0)["key"] == ("k0", "P7")
    assert _KeyedVolume()(_raw({}), 0)["key"] == ("k0", "k0")
