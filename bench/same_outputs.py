"""Check that a change keeps tcpc's outputs: the stores, shards and training losses of a seeded demo,
byte for byte, at a base revision and in the working tree.

Both trees run the same small ``tcpc demo`` (seeded phantoms -> ingest -> SLIC supervoxels and
candidates -> U-path and labelled shards -> TCPC pretraining -> fine-tuning, on the CPU with fixed
threads and torch's deterministic algorithms), each in a fresh interpreter on the tree's own code,
and every output is compared:

- binary files (Zarr chunks, shard tars, archives, pictures): byte for byte;
- JSON files and JSON lines (Zarr metadata, manifests, logs, summaries): equal values once the
  output folder's own path is replaced by ``<out>`` and the timings (:data:`TIMINGS`) are left out,
  so the losses, learning rates and metrics of every logged step count;
- checkpoints (``.pt``): equal tensors and values, read with ``weights_only=True``.

Left out: TensorBoard event files and HTML reports, which carry wall times.

    python bench/same_outputs.py --base main          # the working tree against main
    python bench/same_outputs.py --base 1a2b3c4 --keep /tmp/outs

Exits 1 and names each file that differs (or exists on one side only).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A demo small enough for a minute on 2 cores that still runs every stage and both trainings.
DEMO = ["--cases", "6", "--lesions-per-case", "3", "--shape", "32,64,64", "--n-segments", "100", "--top-k", "4",
        "--pretrain-steps", "6", "--finetune-epochs", "1", "--finetune-seeds", "0", "--batch-size", "8",
        "--no-progress"]
# Members that measure time, not outcome.
TIMINGS = frozenset({"wall_time", "time_s", "samples_per_s", "step_time_s", "seconds"})
SKIPPED = (".html",)


def run_demo(tree: Path, out: Path) -> None:
    """``tcpc demo`` of ``tree``'s code into ``out``, in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, str(tree / "cli.py"), "demo", "--out", str(out), *DEMO], cwd=tree, env=env,
                   check=True, stdout=subprocess.DEVNULL)


def _plain(value, root: str):
    """``value`` with timings left out and ``root`` replaced by ``<out>`` in every string."""
    if isinstance(value, dict):
        return {k: _plain(v, root) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, (list, tuple)):
        return [_plain(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<out>")
    return value


def _same_checkpoint(a: Path, b: Path, roots: tuple[str, str]) -> bool:
    import torch

    def equal(x, y) -> bool:
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(equal(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return isinstance(y, (list, tuple)) and len(x) == len(y) and all(map(equal, x, y))
        return _plain(x, roots[0]) == _plain(y, roots[1])
    return equal(torch.load(a, weights_only=True), torch.load(b, weights_only=True))


def same(a: Path, b: Path, roots: tuple[str, str]) -> bool:
    """Whether output files ``a`` and ``b`` (of outputs under ``roots``) agree as the module docstring says."""
    if a.suffix == ".pt":
        return _same_checkpoint(a, b, roots)
    if a.suffix in (".json", ".jsonl"):
        rows = [a.read_text().splitlines(), b.read_text().splitlines()]
        if a.suffix == ".json":
            rows = [["".join(r)] for r in rows]
        return len(rows[0]) == len(rows[1]) and all(
            _plain(json.loads(x), roots[0]) == _plain(json.loads(y), roots[1]) for x, y in zip(*rows))
    return a.read_bytes() == b.read_bytes()


def compare(base: Path, new: Path) -> tuple[int, list[str]]:
    """(files compared, the differences) of two output folders."""
    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                and "tfevents" not in p.name and p.suffix not in SKIPPED}
    left, right = files(base), files(new)
    differ = [f"only in the base: {f}" for f in sorted(left - right)]
    differ += [f"only in the working tree: {f}" for f in sorted(right - left)]
    both = sorted(left & right)
    differ += [f"differs: {f}" for f in both if not same(base / f, new / f, (str(base), str(new)))]
    return len(both), differ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the git revision to compare the working tree with")
    ap.add_argument("--keep", type=Path, help="keep both outputs in this folder (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        tree = work / "base-tree"
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", args.base], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        # The same relative output path on both sides: the outputs name their own folder.
        run_demo(tree, work / "base")
        run_demo(ROOT, work / "new")
        n, differ = compare(work / "base", work / "new")
    print(f"{n} output files of a seeded demo compared with {args.base}: "
          + ("all the same" if not differ else f"{len(differ)} differ"))
    for line in differ:
        print(f"  {line}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
