"""``bench/same_outputs.py`` tells outputs that differ only in timings and their own folder's path from
outputs that differ in a byte of data, a logged loss or a checkpoint's weights."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("same_outputs", ROOT / "bench" / "same_outputs.py")
same_outputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(same_outputs)


def _outputs(root: Path, loss: float = 2.5, chunk: bytes = b"\x01\x02", weight: float = 1.0, seconds=3.0) -> Path:
    (root / "store" / "c").mkdir(parents=True)
    (root / "store" / "c" / "0").write_bytes(chunk)
    (root / "store" / "zarr.json").write_text(json.dumps({"attributes": {"source": f"{root}/archive/a.nii.gz"}}))
    (root / "log.jsonl").write_text(json.dumps({"step": 1, "loss": loss, "wall_time": seconds}) + "\n")
    (root / "summary.json").write_text(json.dumps({"final_loss": loss, "step_time_s": seconds}))
    (root / "report.html").write_text(f"<p>{seconds} s</p>")
    (root / "events.out.tfevents.1.tcpc").write_bytes(str(seconds).encode())
    torch.save({"model": {"w": torch.full((2,), weight)}, "config": {"out": str(root)}}, root / "last.pt")
    return root


def test_outputs_that_differ_in_timings_and_their_folder_are_the_same(tmp_path):
    n, differ = same_outputs.compare(_outputs(tmp_path / "a"), _outputs(tmp_path / "b", seconds=9.0))
    assert (n, differ) == (5, [])


@pytest.mark.parametrize("change, name", [({"chunk": b"\x01\x03"}, "store/c/0"), ({"loss": 2.25}, "log.jsonl"),
                                          ({"weight": 1.5}, "last.pt")])
def test_a_changed_byte_loss_or_weight_is_named(tmp_path, change, name):
    n, differ = same_outputs.compare(_outputs(tmp_path / "a"), _outputs(tmp_path / "b", **change))
    assert f"differs: {name}" in differ


def test_a_file_on_one_side_only_is_named(tmp_path):
    a, b = _outputs(tmp_path / "a"), _outputs(tmp_path / "b")
    (b / "store" / "c" / "1").write_bytes(b"")
    assert same_outputs.compare(a, b)[1] == ["only in the working tree: store/c/1"]
