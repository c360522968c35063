"""The supervoxels stage: body mask, SLIC, per-supervoxel table and ranked crop centres for every case.

For each complete case of a volume store it writes ``supervoxels`` (int32,
0 = outside the body), ``supervoxel_table`` (N, 13) float32 with attr
``columns``, ``candidates`` (K, 3) int32 best first and ``candidate_scores``
(K,) float32 (``docs/design.md``, Store contract). Each output records
``digest(image digest, config, CSV rows of the case, ALGORITHM_VERSION)``; a
rerun skips cases whose outputs carry that digest.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import field

import numba
import numpy as np

from tcpc_data.supervoxels.bodymask import body_mask
from tcpc_data.supervoxels.candidates import (TABLE_COLUMNS, csv_centres, read_candidates_csv, score_table,
                                  supervoxel_table, top_candidates)
from tcpc_data.digest import digest
from tcpc_data.runner import DONE, SKIPPED, RunReport, Task, run_cases
from tcpc_data.supervoxels.slic import slic
from tcpc_data.store.volumes import (array_digest, claim_store, commit_arrays, list_cases, open_store, sanitize_case_id,
                             sweep_staging)

OUTPUTS = ("supervoxels", "supervoxel_table", "candidates", "candidate_scores")
# Part of every digest: bump when the algorithm changes its outputs for the same config.
# 2: lesion-score Gaussians below 2 voxels summed in float32 (parallel FIR);
# 3: Gaussians with explicit FMAs (the same bits on a cold and a warm Numba cache).
ALGORITHM_VERSION = 3


@dataclasses.dataclass(frozen=True)
class SupervoxelConfig:
    """Settings of the supervoxels stage (saved with its outputs)."""

    # 2000 gives about 10 mL (a 21 mm cube) per supervoxel in a chest and 2-3 mL in a head:
    # the size of the 3-30 mm lesions to find and a third of a 64 mm crop.
    n_segments: int = field(default=2000, metadata={"help": "Approximate number of supervoxels inside the body."})
    # 0.1 lets tissue boundaries (lung, soft tissue, bone differ by 0.2-0.5 of the [0, 1] range) win over cubes.
    compactness: float = field(default=0.1, metadata={"help": "SLIC's balance of intensity against space."})
    max_num_iter: int = field(default=10, metadata={"help": "k-means iterations (TCPC paper: at most 10)."})
    # scikit-image divides a scalar sigma by the spacing when use_spacing is on.
    sigma: float = field(default=10.0, metadata={
        "help": "Gaussian smoothing before clustering (TCPC paper: 10), in mm when --use-spacing is on."})
    use_spacing: bool = field(default=True, metadata={"help": "Weight distances and sigma by the voxel spacing."})
    enforce_connectivity: bool = field(default=True, metadata={"help": "Make every supervoxel one connected piece."})
    min_size_factor: float = field(default=0.5, metadata={
        "help": "Pieces smaller than this times the mean supervoxel size merge into a neighbour."})
    max_size_factor: float = field(default=3.0, metadata={
        "help": "Connected pieces are cut at this times the mean supervoxel size."})
    body_threshold_hu: float = field(default=-500.0, metadata={
        "help": "HU above which a voxel is tissue when finding the body mask."})
    body_opening_mm: float = field(default=3.0, metadata={
        "help": "In-plane opening radius in mm that detaches the table from the body."})
    top_k: int = field(default=32, metadata={"help": "Crop centres kept per case (best first)."})
    crop_size: int = field(default=64, metadata={
        "help": "Crop side in voxels, for non-maximum suppression of the centres and the shards."})

    def validate(self) -> None:
        """Raise ValueError naming the first field outside its range."""
        for name, lo in (("n_segments", 1), ("max_num_iter", 1), ("top_k", 1), ("crop_size", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        for name, lo, strict in (("compactness", 0.0, True), ("sigma", 0.0, False),
                                 ("min_size_factor", 0.0, False), ("max_size_factor", 0.0, True),
                                 ("body_opening_mm", 0.0, False)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not np.isfinite(v) or (v <= lo if strict else v < lo):
                raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {lo}, got {v!r}")
        if self.min_size_factor >= self.max_size_factor:
            raise ValueError(f"min_size_factor must be below max_size_factor, got "
                             f"{self.min_size_factor} >= {self.max_size_factor}")
        if not np.isfinite(self.body_threshold_hu):
            raise ValueError(f"body_threshold_hu must be finite, got {self.body_threshold_hu!r}")


def supervoxels(store, config: SupervoxelConfig = SupervoxelConfig(), *, cases=None,
                candidates_csv=None, workers: int | None = None, scheduler: str | None = None,
                progress: bool = False, failures_path=None, memory_limit: str | None = None) -> RunReport:
    """Compute supervoxels and candidates for the cases of a volume store.

    Parameters
    ----------
    store
        Volume store path or fsspec URL (``volumes.zarr``).
    config
        :class:`SupervoxelConfig`.
    cases
        Case ids to process; default every case with a complete ``image``.
    candidates_csv
        CSV of crop centres (``case,z,y,x`` voxels or ``case,z_mm,y_mm,x_mm``
        world mm) used instead of the SLIC ranking, in file order; case names
        are sanitised like ingest does; cases absent from the CSV get no candidates.
    workers, scheduler, progress, failures_path, memory_limit
        As in :func:`tcpc_data.runner.run_cases`.

    Returns
    -------
    RunReport
        ``results[case]`` = {"supervoxels": N, "candidates": K, "seconds": {phase: wall s}}
        (phases read, body mask, slic, candidates, write; absent when the case was skipped).
    """
    config.validate()
    claim_store(store, inputs=[candidates_csv], create=False)  # adds arrays only to a store tcpc wrote
    available = list_cases(store, require=("image",))
    if cases is None:
        todo = available
    else:
        missing = sorted(set(cases) - set(available))
        if missing:
            raise ValueError(f"cases not found (or image incomplete) in {store}: {missing}")
        todo = sorted(set(cases))
    csv_rows = None
    if candidates_csv is not None:
        csv_rows = {}
        for name, rows in read_candidates_csv(candidates_csv, store).items():
            csv_rows.setdefault(sanitize_case_id(name), []).extend(rows)
    url = os.fspath(store)
    tasks = []
    for case in todo:
        rows = None if csv_rows is None else csv_rows.get(case, [])
        tasks.append(Task(case, f"{url}/{case}", (url, case, config, rows)))
    swept = sweep_staging(store)
    report = run_cases("supervoxels", tasks, _process_case, workers=workers, scheduler=scheduler,
                       progress=progress, failures_path=failures_path, memory_limit=memory_limit)
    if swept:
        report.notes.append(f"removed {len(swept)} staging folder(s) that killed runs left beside {store}")
    return report


def image_hu(image: np.ndarray, attrs, case: str) -> np.ndarray:
    """HU of a stored [-1, 1] image through its ``intensity_range`` attr ([lo, hi] -> [-1, 1])."""
    rng = attrs.get("intensity_range")
    if rng is None or len(rng) != 2 or not float(rng[1]) > float(rng[0]):
        raise ValueError(f"case {case}: image attr intensity_range must be [lo, hi] with hi > lo, got {rng!r}")
    lo, hi = float(rng[0]), float(rng[1])
    image = np.ascontiguousarray(image, dtype=np.float32)
    out = np.empty(image.shape, dtype=np.float32)
    _affine(image.reshape(-1), np.float32(lo), np.float32((hi - lo) / 2.0), out.reshape(-1))
    return out


@numba.njit(parallel=True, cache=True)
def _affine(x, lo, half_range, out):
    """out = lo + (x + 1) * half_range, in one parallel pass (numpy: three, with temporaries)."""
    for i in numba.prange(x.size):
        out[i] = lo + (x[i] + np.float32(1.0)) * half_range


def _process_case(payload) -> tuple[str, dict]:
    url, case, config, rows = payload
    group = open_store(url, mode="r")[case]
    image_digest = array_digest(group, "image")
    want = digest(image_digest, config, rows, ALGORITHM_VERSION)
    if all(array_digest(group, name) == want for name in OUTPUTS):
        return SKIPPED, {"supervoxels": int(group["supervoxel_table"].shape[0]),
                         "candidates": int(group["candidates"].shape[0])}
    t0 = time.perf_counter()
    seconds = {}
    arr = group["image"]
    attrs = dict(arr.attrs)
    image = np.asarray(arr[...], dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"case {case}: image must be 3D (Z, Y, X), got shape {image.shape}")
    spacing = attrs.get("spacing_zyx")
    if spacing is None or len(spacing) != 3 or not all(float(s) > 0 for s in spacing):
        raise ValueError(f"case {case}: image attr spacing_zyx must be 3 positive numbers, got {spacing!r}")
    spacing = tuple(float(s) for s in spacing)
    hu = image_hu(image, attrs, case)
    t0 = _lap(seconds, "read", t0)
    try:
        mask = body_mask(hu, spacing, threshold_hu=config.body_threshold_hu,
                         opening_mm=config.body_opening_mm)
        t0 = _lap(seconds, "body mask", t0)
        labels = slic(image, n_segments=config.n_segments, compactness=config.compactness,
                      max_num_iter=config.max_num_iter, sigma=config.sigma,
                      spacing=spacing if config.use_spacing else None, mask=mask,
                      enforce_connectivity=config.enforce_connectivity,
                      min_size_factor=config.min_size_factor,
                      max_size_factor=config.max_size_factor, start_label=1)
    except ValueError as exc:
        raise ValueError(f"case {case}: {exc}") from exc
    del mask
    t0 = _lap(seconds, "slic", t0)
    table, best_voxels = score_table(supervoxel_table(labels, hu), labels, hu, spacing)
    del hu
    score_col = TABLE_COLUMNS.index("score")
    if rows is None:
        cands, scores = top_candidates(best_voxels, table[:, score_col], k=config.top_k,
                                       crop_size=config.crop_size, shape=image.shape)
        source = "slic"
    else:
        cands = csv_centres(rows, case=case, shape=image.shape, spacing_zyx=spacing,
                            origin_zyx=attrs.get("origin_zyx", (0.0, 0.0, 0.0)),
                            direction=attrs.get("direction", np.eye(3)))
        # A CSV centre's score is that of the supervoxel holding it (0 outside the body).
        by_label = np.zeros(int(labels.max()) + 1, dtype=np.float32)
        by_label[table[:, 0].astype(np.int64)] = table[:, score_col]
        scores = by_label[labels[cands[:, 0], cands[:, 1], cands[:, 2]]] if len(cands) else \
            np.zeros(0, dtype=np.float32)
        source = "csv"
    t0 = _lap(seconds, "candidates", t0)
    cfg = dataclasses.asdict(config)
    commit_arrays(url, case,
                  {"supervoxels": labels, "supervoxel_table": table,
                   "candidates": np.asarray(cands, dtype=np.int32).reshape(-1, 3),
                   "candidate_scores": np.asarray(scores, dtype=np.float32).reshape(-1)},
                  {"supervoxels": {"config": cfg, "n_supervoxels": int(len(table)), "digest": want},
                   "supervoxel_table": {"columns": list(TABLE_COLUMNS), "mean_unit": "HU",
                                        "digest": want},
                   "candidates": {"crop_size": int(config.crop_size), "source": source,
                                  "digest": want},
                   "candidate_scores": {"digest": want}})
    _lap(seconds, "write", t0)
    return DONE, {"supervoxels": int(len(table)), "candidates": int(len(cands)), "seconds": seconds}


def _lap(seconds: dict, name: str, t0: float) -> float:
    """Record the wall seconds since ``t0`` under ``name``; return now."""
    now = time.perf_counter()
    seconds[name] = now - t0
    return now

