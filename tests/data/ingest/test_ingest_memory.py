"""Ingest's peak memory stays within 5x the float32 size of the volume it reads (+ 16 MiB of buffers),
and within 7x while one case's writes overlap the next case's reads.

The bounds are what the README documents; they are measured in a fresh process as the
growth of peak RSS while one case (then two) is ingested, after a warm-up case has loaded and
compiled everything.
"""
import subprocess
import sys

import pytest

SCRIPT = r"""
import resource, sys
import numpy as np
from tcpc_data.ingest.stage import ingest
from tcpc_data.phantom import write_nifti
d = sys.argv[1]
shape = (64, 256, 256)
n = int(sys.argv[2])
for i in range(n):
    hu = np.random.default_rng(i).integers(-1000, 1000, size=shape).astype(np.int16)
    write_nifti(f"{d}/c{i}.nii.gz", hu, (1.0,) * 3)
write_nifti(f"{d}/w.nii.gz", np.arange(512, dtype=np.int16).reshape(8, 8, 8), (1.0,) * 3)
ingest([f"{d}/w.nii.gz"], f"{d}/w.zarr", workers=1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
report = ingest([f"{d}/c{i}.nii.gz" for i in range(n)], f"{d}/v.zarr", workers=1)
assert report.ok, report.failures
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base), np.prod(shape) * 4)
"""


@pytest.mark.parametrize("cases, bound", [(1, 5), (2, 7)])
def test_ingest_peak_memory_is_within_five_volumes_and_seven_with_an_overlap(tmp_path, cases, bound):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(cases)], capture_output=True, text=True,
                         check=True)
    growth, volume = (int(v) for v in out.stdout.split()[-2:])
    print(f"{cases} case(s): peak grew {growth / volume:.2f}x the float32 volume")
    assert growth <= bound * volume + (16 << 20), f"peak grew {growth / volume:.2f}x the float32 volume"
