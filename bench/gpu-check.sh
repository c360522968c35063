#!/usr/bin/env bash
# The trainer's GPU checks in one go, for a machine with a CUDA GPU (CI has none):
# the CUDA tests (bf16 autocast, resume, fine-tuning, DDP + SyncBatchNorm, DDP fine-tuning), then bench/train.py
# on the GPU with the default loader processes (up to 4): the loader's samples/s per process, the loop fed
# from shards vs from memory, and
# the bf16 encoder step against MONAI's resnet18(spatial_dims=3) (needs `pip install monai
# --no-deps`, the `monai` extra), at width 1/8 and at width 1 with batches of 32 and 128.
# Output goes to stdout and, when given, to the folder $1 (pytest.log, bench.log).
#   bash bench/gpu-check.sh [LOGDIR]
set -uo pipefail
log=${1:-$(mktemp -d)}
mkdir -p "$log"
export PYTHONUNBUFFERED=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
python3 -c "import monai; print('monai', monai.__version__)" || echo "MONAI missing: the encoder comparison prints tcpc alone"
python3 -m pytest -q -p no:cacheprovider tests/train/loops/test_gpu.py 2>&1 | tee "$log/pytest.log"
python3 -m pytest -q -p no:cacheprovider tests/train/loops/test_ddp.py -k one_gpu 2>&1 | tee -a "$log/pytest.log"
python3 bench/train.py --device cuda --steps 30 2>&1 | tee "$log/bench.log"
python3 bench/train.py --device cuda --steps 30 --width 1 --batch-size 32 --only loop 2>&1 | tee -a "$log/bench.log"
python3 bench/train.py --device cuda --steps 30 --width 1 --batch-size 128 2>&1 | tee -a "$log/bench.log"
