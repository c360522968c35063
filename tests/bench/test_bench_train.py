"""``bench/train.py`` runs end to end on the CPU at a tiny size and prints every figure it promises:
the loader's rates (in-process, and one of two loader processes), the loop's shards/in-memory
ratio and the encoder step against MONAI's."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~20 CPU seconds, mostly importing torch and MONAI in a fresh interpreter
@pytest.mark.timeout(600)
def test_bench_train_runs_on_the_cpu():
    pytest.importorskip("monai", reason="the encoder comparison needs MONAI (pip install monai --no-deps)")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "train.py"), "--device", "cpu", "--samples", "8",
                          "--batch-size", "2", "--steps", "1", "--warmup", "0", "--workers", "0",
                          "--width", "0.03125", "--loader-batches", "2"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    rates = [float(v) for v in re.findall(r"(\d+) samples per CPU second", out)]
    assert len(rates) == 3 and min(rates) > 0  # in-process augmented and plain, one of two workers
    ratio = re.search(r"cpu loop, 0 loader processes: .* ratio (\d+\.\d+)", out)
    assert ratio and float(ratio[1]) > 0
    step = re.search(r"cpu encoder step, float32, 2 x 8 cubes of 16\^3: tcpc resnet18 +([\d.]+) samples/s.*"
                     r"MONAI resnet18 +([\d.]+) samples/s.* ratio tcpc/MONAI (\d+\.\d+)", out)
    assert step and float(step[1]) > 0 and float(step[2]) > 0
    assert float(step[3]) == pytest.approx(float(step[1]) / float(step[2]), rel=0.1)  # printed to 0.1
