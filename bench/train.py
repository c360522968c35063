"""Benchmark: the pretraining loader, the loop fed from shards vs. from memory, and the encoder step.

Three parts, each on the same shards and batches (``--only`` picks one):

1. loader: U-path samples/s of one loader process (the trainer's own
   ``ShardStream`` + ``TaskSample``, in-process, batches ready for the step),
   with augmentation (flips/rotations + per-cube intensity) and without;
   per CPU second of the process and per wall second. Goal: >= 20,000/s with
   augmentation.
2. loop: pretraining fed from shards vs. the same batches already in memory,
   through the pretraining loop's own step. Goal: ratio (shard samples/s ÷
   in-memory samples/s) >= 0.95, i.e. the loader is never the bottleneck.
3. encoder: one optimiser step of the encoder alone (bfloat16 autocast on
   CUDA, float32 on the CPU) on the batch's cubes, tcpc's ResNet-18 against
   MONAI's ``resnet18(spatial_dims=3)`` at the same width on the same input
   (MONAI: ``pip install monai --no-deps``, the ``monai`` extra).

Parts 2-3 run on the CPU and, when there is one, on the GPU. With ``--stems``
it instead times one training step of the encoder alone with the small-cube
stem against the classic video stem (7³ stride 2 + max-pool), the choice
documented in ``tcpc_train/models/encoders.py``.

    python bench/train.py                        # synthetic U-path shards, width 1/8
    python bench/train.py --shards DIR --width 1 --batch-size 32 --workers 4
    python bench/train.py --device cuda --width 1 --batch-size 128 --workers 8
    python bench/train.py --only loader --shards DIR --batch-size 128
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

from tcpc_data.store.malloc import retain_freed_memory  # noqa: E402
from tcpc_train.input.loader import ShardStream, make_loader, open_shards, raw_samples  # noqa: E402
from tcpc_train.models.encoders import ResNet18_3d, build_encoder  # noqa: E402
from tcpc_train.loops.pretraining import PretrainConfig, TaskSample, build_task_model, train_steps  # noqa: E402
from tcpc_train.loops.runtime import RuntimeConfig, autocast, loader_workers  # noqa: E402
from tcpc_train.input.synthetic import write_synthetic_paths  # noqa: E402


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
        return iter(make_loader(stream, loader_workers(cfg.runtime.workers, device), pin_memory=pin))
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
    return {"device": str(device), "workers": loader_workers(cfg.runtime.workers, device),
            "shards_step_s": s_med, "memory_step_s": m_med,
            "shards_samples_s": s_sps, "memory_samples_s": m_sps, "ratio": s_sps / m_sps, "median_ratio": m_med / s_med}


def bench_loader_rate(shards: Path, cfg: PretrainConfig, batches: int, repeats: int = 3) -> dict:
    """U-path samples/s of the in-process loader (one loader process's work), with augmentation as
    ``cfg`` sets it and without, and of one of two loader processes (which reads every sample and
    prepares every other batch): per CPU second of the process and per wall second, ``repeats``
    measurements of ``batches`` batches each, the configurations alternating so a load change
    on a shared machine hits all. Returns per configuration the lists of rates."""
    data = open_shards(shards)
    streams = {}
    for name, c, share in (("augmented", cfg, (0, 1)),
                           ("plain", dataclasses.replace(cfg, augment=False, cube_intensity=0.0), (0, 1)),
                           ("augmented, worker 1 of 2", cfg, (0, 2))):
        streams[name] = ShardStream(data, TaskSample(c), c.batch_size, seed=c.runtime.seed,
                                    shuffle_buffer=c.runtime.shuffle_buffer, rank=0, world=1).batches(*share)
        next(streams[name])  # the compiled kernels' load, the first shard's open
    out = {name: {"cpu_samples_s": [], "wall_samples_s": []} for name in streams}
    for _ in range(repeats):
        for name, stream in streams.items():
            c0, w0 = time.process_time(), time.perf_counter()
            n = sum(len(next(stream)["key"]) for _ in range(batches))
            out[name]["cpu_samples_s"].append(n / (time.process_time() - c0))
            out[name]["wall_samples_s"].append(n / (time.perf_counter() - w0))
    return out


def _monai_resnet18(width: float) -> torch.nn.Module | None:
    """MONAI's 3D ResNet-18 for one input channel at ``width`` (its ``widen_factor``), returning
    pooled features; None when MONAI is not installed."""
    try:
        from monai.networks.nets import resnet18
    except ImportError:
        return None
    return resnet18(spatial_dims=3, n_input_channels=1, widen_factor=width, feed_forward=False)


def bench_encoders(width: float, batch: int, cubes: int, cube: int, steps: int, warmup: int,
                   device: torch.device) -> dict:
    """Samples/s of one optimiser step (forward, backward, AdamW) of the encoder alone on a batch of
    ``batch`` samples of ``cubes`` cubes of ``cube``³, bfloat16 autocast on CUDA: tcpc's ResNet-18
    and MONAI's on the same input. The two alternate step by step, so load changes hit both."""
    torch.manual_seed(0)
    x = torch.randn(batch * cubes, 1, cube, cube, cube, device=device)
    models = {"tcpc resnet18": build_encoder("resnet18", width)}
    monai = _monai_resnet18(width)
    if monai is not None:
        models["MONAI resnet18"] = monai
    opts = {}
    for name, m in models.items():
        models[name] = m.to(device).train()
        opts[name] = torch.optim.AdamW(m.parameters(), lr=1e-4)
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(warmup + steps):
        for name, m in models.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with autocast(device, True):
                loss = m(x).float().pow(2).mean()
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: {"step_s": statistics.median(t), "samples_s": batch / statistics.median(t)}
            for name, t in times.items()}


def bench_loader_stages(shards: Path, cfg: PretrainConfig, repeat: int = 3) -> dict:
    """In-process loader cost per sample (µs of this process's CPU time): tar reading, decoding
    (.npy headers, path check, random key), the batch's augmentation and assembly (one compiled
    gather + intensity pass) and the rest (shuffle buffer, batching)."""
    data = open_shards(shards)
    prepare = TaskSample(cfg)
    retain_freed_memory()  # as in a loader process
    prepare(next(raw_samples(data.urls[0])), 0)  # untimed: loads the compiled kernels
    t_tar = t_decode = t_collate = 0.0
    for _ in range(repeat):
        for url in data.urls:
            t0 = time.process_time()
            raws = list(raw_samples(url))
            t_tar += time.process_time() - t0
            for i in range(0, len(raws), cfg.batch_size):  # decode per sample, augment per batch
                t0 = time.process_time()
                items = [prepare.decode(raw, 0) for raw in raws[i:i + cfg.batch_size]]
                t1 = time.process_time()
                prepare.collate(items)
                t_decode, t_collate = t_decode + t1 - t0, t_collate + time.process_time() - t1
    n = repeat * data.total
    stream = iter(ShardStream(data, prepare, cfg.batch_size, seed=cfg.runtime.seed,
                              shuffle_buffer=cfg.runtime.shuffle_buffer,
                              rank=0, world=1))
    batches = n // cfg.batch_size
    t0 = time.process_time()
    for _ in range(batches):
        next(stream)
    total = (time.process_time() - t0) / (batches * cfg.batch_size)
    tar, decode, collate = t_tar / n, t_decode / n, t_collate / n
    return {"tar_us": tar * 1e6, "decode_us": decode * 1e6, "collate_us": collate * 1e6,
            "batching_us": max(0.0, total - tar - decode - collate) * 1e6, "batch_ms": total * cfg.batch_size * 1e3}


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
    ap.add_argument("--workers", type=int, help="loader processes (default: tcpc's, 0 on the CPU, up to 4 on a GPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                    help="where to train (all: the CPU, then the GPU when there is one)")
    ap.add_argument("--stems", action="store_true", help="time the stem choice instead")
    ap.add_argument("--loader-stages", action="store_true",
                    help="time the in-process loader's stages per sample instead")
    ap.add_argument("--cubes", type=int, default=98, help="cubes per step for --stems")
    ap.add_argument("--only", choices=("loader", "loop", "encoder"), help="run one part (default: all three)")
    ap.add_argument("--loader-batches", type=int,
                    help="batches timed per loader measurement (default: 8192 samples' worth, at least 20)")
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
    parts = (args.only,) if args.only else ("loader", "loop", "encoder")
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(args.shards or write_synthetic_paths(Path(tmp) / "u", args.samples, "u", per_shard=16))
        if args.loader_stages:
            r = bench_loader_stages(shards, cfg)
            print(f"loader, in-process, CPU time per sample: tar {r['tar_us']:.0f} us, decode + checks "
                  f"{r['decode_us']:.0f} us, batch augmentation + assembly {r['collate_us']:.0f} us, shuffle + "
                  f"batching {r['batching_us']:.0f} us; {r['batch_ms']:.1f} ms per batch of {cfg.batch_size}")
            return
        devices = [torch.device(d) for d in ("cpu", "cuda") if args.device in ("all", d)
                   and (d == "cpu" or torch.cuda.is_available())]
        if not devices:
            sys.exit("--device cuda: no CUDA GPU here")
        print(f"shards {args.shards or 'synthetic U paths'}; tcpc {args.arch} width {args.width}, batch "
              f"{args.batch_size}, loader workers {'auto' if args.workers is None else args.workers}, "
              f"{torch.get_num_threads()} torch threads")
        if "loader" in parts:
            r = bench_loader_rate(shards, cfg, args.loader_batches or max(20, -(-8192 // args.batch_size)))
            for name in r:
                cpu, wall = r[name]["cpu_samples_s"], r[name]["wall_samples_s"]
                print(f"  loader, one process, {name:>24}: {statistics.median(cpu):8.0f} samples per CPU second "
                      f"(median of {len(cpu)}: {' / '.join(f'{v:.0f}' for v in cpu)}), "
                      f"{statistics.median(wall):8.0f} per wall second (goal with augmentation >= 20000)")
        sample = next(raw_samples(open_shards(shards).urls[0]))
        n_cubes, cube = TaskSample(cfg).decode(sample, 0)["cubes"].shape[:2]
        for dev in devices:
            if "loop" in parts:
                r = bench_loader(shards, cfg, args.steps, args.warmup, dev)
                print(f"  {r['device']:>5} loop, {r['workers']} loader processes: "
                      f"shards {r['shards_samples_s']:8.1f} samples/s "
                      f"({r['shards_step_s'] * 1e3:7.1f} ms/step)"
                      f" | in memory {r['memory_samples_s']:8.1f} samples/s ({r['memory_step_s'] * 1e3:7.1f} ms/step)"
                      f" | ratio {r['ratio']:.3f} (goal >= 0.95; of the median steps {r['median_ratio']:.3f}, "
                      "which a load spike from another job moves less)")
            if "encoder" in parts:
                r = bench_encoders(args.width, args.batch_size, n_cubes, cube, args.steps, args.warmup, dev)
                precision = "bf16 autocast" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
                line = " | ".join(f"{name} {v['samples_s']:8.1f} samples/s ({v['step_s'] * 1e3:7.1f} ms/step)"
                                  for name, v in r.items())
                ratio = (f" | ratio tcpc/MONAI {r['tcpc resnet18']['samples_s'] / r['MONAI resnet18']['samples_s']:.3f}"
                         if "MONAI resnet18" in r else " | MONAI not installed (pip install monai --no-deps)")
                print(f"  {dev.type:>5} encoder step, {precision}, {args.batch_size} x {n_cubes} cubes of {cube}^3: "
                      f"{line}{ratio}")


if __name__ == "__main__":
    main()
