"""Benchmark: pretraining fed from shards vs. the same batches already in memory.

Goal: ratio (shard samples/s ÷ in-memory samples/s) >= 0.95, i.e. the
streaming loader is never the bottleneck. Runs on the CPU and, when there is
one, on the GPU (same script, same batches). With ``--stems`` it instead
times one training step of the encoder alone with the small-cube stem against
the classic video stem (7³ stride 2 + max-pool), the choice documented in
``tcpc_train/models.py``.

    python bench/train.py                        # synthetic U-path shards, width 1/8
    python bench/train.py --shards DIR --width 1 --batch-size 32 --workers 4
    python bench/train.py --device cuda --width 1 --batch-size 32 --workers 8
    python bench/train.py --stems --cubes 686 --width 1
    python bench/train.py --loader-stages        # where the loader's time goes, per sample
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcpc_train.loader import ShardStream, make_loader, open_shards, raw_samples  # noqa: E402
from tcpc_train.models import ResNet18_3d  # noqa: E402
from tcpc_train.pretraining import PretrainConfig, TaskSample, build_task_model, train_steps  # noqa: E402
from tcpc_train.runtime import RuntimeConfig  # noqa: E402
from tcpc_train.synthetic import write_synthetic_paths  # noqa: E402


def _run(cfg: PretrainConfig, batches, steps: int, warmup: int, device: torch.device) -> list[float]:
    """Per-step wall times (s) of ``steps`` training steps (the pretraining loop's own) after ``warmup``."""
    torch.manual_seed(cfg.runtime.seed)
    model = build_task_model(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    run = dataclasses.replace(cfg, steps=warmup + steps)
    return [dt for i, (_, _, _, dt) in enumerate(train_steps(model, opt, batches, run, device)) if i >= warmup]


def bench_loader(shards: Path, cfg: PretrainConfig, steps: int, warmup: int, device: torch.device) -> dict:
    data = open_shards(shards)
    pin = device.type == "cuda"

    def loader():
        stream = ShardStream(data, TaskSample(cfg), cfg.batch_size, seed=cfg.runtime.seed,
                             shuffle_buffer=cfg.runtime.shuffle_buffer)
        return iter(make_loader(stream, cfg.runtime.workers, pin_memory=pin))
    cached = list(batch for _, batch in zip(range(warmup + steps), loader()))
    if pin:
        cached = [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in cached]
    # Alternate the two sources (twice each) so a load change on a shared machine hits both alike.
    streamed, in_memory = [], []
    for _ in range(2):
        streamed += _run(cfg, loader(), steps, warmup, device)
        in_memory += _run(cfg, iter(cached), steps, warmup, device)
    steps *= 2
    s_med, m_med = statistics.median(streamed), statistics.median(in_memory)
    s_sps, m_sps = cfg.batch_size * steps / sum(streamed), cfg.batch_size * steps / sum(in_memory)
    return {"device": str(device), "shards_step_s": s_med, "memory_step_s": m_med,
            "shards_samples_s": s_sps, "memory_samples_s": m_sps, "ratio": s_sps / m_sps}


def bench_loader_stages(shards: Path, cfg: PretrainConfig, repeat: int = 3) -> dict:
    """In-process loader cost per sample (µs): tar reading, sample preparation (decode, RNG,
    augmentation, path check) and the rest of a batch (shuffle buffer, collate), over every sample."""
    data = open_shards(shards)
    prepare = TaskSample(cfg)
    t_tar = t_prep = 0.0
    for _ in range(repeat):
        for url in data.urls:
            t0 = time.perf_counter()
            raws = list(raw_samples(url))
            t1 = time.perf_counter()
            for raw in raws:
                prepare(raw, 0)
            t_tar, t_prep = t_tar + t1 - t0, t_prep + time.perf_counter() - t1
    n = repeat * data.total
    stream = iter(ShardStream(data, prepare, cfg.batch_size, seed=cfg.runtime.seed,
                              shuffle_buffer=cfg.runtime.shuffle_buffer,
                              rank=0, world=1))
    batches = n // cfg.batch_size
    t0 = time.perf_counter()
    for _ in range(batches):
        next(stream)
    total = (time.perf_counter() - t0) / (batches * cfg.batch_size)
    tar, prep = t_tar / n, t_prep / n
    return {"tar_us": tar * 1e6, "prepare_us": prep * 1e6, "batching_us": max(0.0, total - tar - prep) * 1e6,
            "batch_ms": total * cfg.batch_size * 1e3}


def bench_stems(cubes: int, width: float, repeats: int) -> dict:
    """Forward + backward of the encoder on ``cubes`` 16³ cubes: small-cube stem vs. video stem."""
    x = torch.randn(cubes, 1, 16, 16, 16)
    out = {}
    for name, model in (("small-cube stem (3^3/2, strides 1,2,2,1)", ResNet18_3d(width)),
                        ("video stem (7^3/2 + max-pool, strides 1,2,2,2)",
                         ResNet18_3d(width, video_stem=True, stage_strides=(1, 2, 2, 2)))):
        final = tuple(model.feature_map(x[:2]).shape[2:])
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            model(x).sum().backward()
            times.append(time.perf_counter() - t0)
        out[name] = {"step_s": min(times[1:]), "final_map": final}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=Path, help="pretraining shard dir (default: synthetic U paths)")
    ap.add_argument("--samples", type=int, default=256, help="synthetic samples to write")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                    help="where to train (all: the CPU, then the GPU when there is one)")
    ap.add_argument("--stems", action="store_true", help="time the stem choice instead")
    ap.add_argument("--loader-stages", action="store_true",
                    help="time the in-process loader's stages per sample instead")
    ap.add_argument("--cubes", type=int, default=98, help="cubes per step for --stems")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.stems:
        print(f"encoder forward+backward on {args.cubes} cubes of 16^3, width {args.width}, "
              f"{torch.get_num_threads()} CPU threads:")
        for name, r in bench_stems(args.cubes, args.width, 2).items():
            print(f"  {name:<48} {r['step_s']:7.2f} s/step, final map {r['final_map']}")
        return
    cfg = PretrainConfig(arch=args.arch, width=args.width, batch_size=args.batch_size, warmup=0,
                         runtime=RuntimeConfig(workers=args.workers, shuffle_buffer=64))
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or write_synthetic_paths(Path(tmp) / "u", args.samples, "u", per_shard=16)
        if args.loader_stages:
            r = bench_loader_stages(Path(shards), cfg)
            print(f"loader, in-process, per sample: tar {r['tar_us']:.0f} us, decode + augment + checks "
                  f"{r['prepare_us']:.0f} us, shuffle + collate {r['batching_us']:.0f} us; "
                  f"{r['batch_ms']:.1f} ms per batch of {cfg.batch_size}")
            return
        devices = [torch.device(d) for d in ("cpu", "cuda") if args.device in ("all", d)
                   and (d == "cpu" or torch.cuda.is_available())]
        if not devices:
            sys.exit("--device cuda: no CUDA GPU here")
        print(f"pretraining tcpc {args.arch} width {args.width}, batch {args.batch_size}, "
              f"{args.workers} loader workers, {torch.get_num_threads()} torch threads, {args.steps} timed steps")
        for dev in devices:
            r = bench_loader(Path(shards), cfg, args.steps, args.warmup, dev)
            print(f"  {r['device']:>5}: shards {r['shards_samples_s']:8.1f} samples/s "
                  f"({r['shards_step_s'] * 1e3:7.1f} ms/step)"
                  f" | in memory {r['memory_samples_s']:8.1f} samples/s ({r['memory_step_s'] * 1e3:7.1f} ms/step)"
                  f" | ratio {r['ratio']:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
