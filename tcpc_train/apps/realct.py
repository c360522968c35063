"""Real CT end to end: LIDC chest CTs → TCPC on candidate crops → the paper's Fig. 3.

Preprocess the series at 1 mm with an HU window, pretrain TCPC on the U-path
samples of their SLIC candidate crops (no labels), fine-tune the TCPC encoder
to tell nodule crops (``nodules.csv``, jittered) from candidate crops far
from any nodule, and render the deep-layer feature maps of a nodule crop for
a random, the TCPC-pretrained and the fine-tuned encoder.

With a handful of nodules there is no held-out evaluation here: the
fine-tuning only produces the third encoder of the figure, and its
train/val/test splits are the same crops (said in ``results.json``).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import field
from pathlib import Path

import numpy as np
import torch

from tcpc_data.crops import crop
from tcpc_data.ingest.stage import IngestConfig
from tcpc_data.shards.labelled import LabelledConfig, write_labelled_shards
from tcpc_data.outputs import claim_dir, has_files
from tcpc_data.pipeline import preprocess
from tcpc_data.shards.pretrain import ShardConfig
from tcpc_data.store.volumes import open_store, sanitize_case_id
from tcpc_data.supervoxels.stage import SupervoxelConfig
from tcpc_data.volume import world_to_index
from tcpc_train.loops.checkpoint import load_checkpoint
from tcpc_train.apps.featuremaps import render_feature_maps
from tcpc_train.loops.finetuning import FINETUNE_RUNTIME, FinetuneConfig, finetune
from tcpc_train.models.encoders import Classifier, build_encoder
from tcpc_train.loops.pretraining import PretrainConfig, pretrain
from tcpc_train.loops.runtime import RuntimeConfig
from tcpc_train.models.weights import load_encoder_weights


@dataclasses.dataclass(frozen=True)
class RealCTConfig:
    """Settings of the real-CT run (saved as ``realct.json``)."""

    spacing: float = field(default=1.0, metadata={"help": "Isotropic voxel size in mm after ingest."})
    # LIDC pads outside the scan field with -2048/-3024 HU.
    clip: tuple[float, float] = field(default=(-1024.0, 3071.0), metadata={
        "help": "HU window applied before normalisation.", "metavar": "LO,HI"})
    crop_size: int = field(default=64, metadata={"help": "Pretraining crop side in voxels (64 mm at 1 mm)."})
    cube_size: int = field(default=16, metadata={"help": "Cube side in voxels (16 mm at 1 mm)."})
    top_k: int = field(default=32, metadata={"help": "SLIC candidate crops per case."})
    label_crop: int = field(default=48, metadata={"help": "Side in voxels of the labelled crops for fine-tuning."})
    jitter: int = field(default=3, metadata={"help": "Positive crops' centres are shifted up to this many voxels."})
    per_nodule: int = field(default=6, metadata={"help": "Positive crops per nodule."})
    negative_distance_mm: float = field(default=25.0, metadata={
        "help": "Negatives are candidates at least this far in mm from every nodule."})
    width: float = field(default=0.125, metadata={"help": "Channel multiplier of the encoder."})
    pretrain_steps: int = field(default=200, metadata={"help": "TCPC pretraining steps."})
    finetune_epochs: int = field(default=4, metadata={"help": "Fine-tuning epochs."})
    batch_size: int = field(default=8, metadata={"help": "Fine-tuning samples per step."})
    seed: int = field(default=0, metadata={"help": "Seed of the draws and the training."})
    figure_nodule: str | None = field(default=None, metadata={
        "help": "Nodule drawn in the feature-map figure and never used in fine-tuning, as CASE:K (the K-th "
                "nodule of CASE in the CSV, from 0); None: the largest nodule."})


def nodule_voxels(store, nodules_csv: str | Path) -> dict[str, list[tuple[np.ndarray, dict]]]:
    """Nodule centres of ``nodules.csv`` as voxels of each stored image.

    The CSV gives pixel ``row``/``col`` of the native slices and the slice's
    z in mm; world = (z_mm, origin_y + row·dy, origin_x + col·dx) on the
    native grid, then mapped through the stored ``origin_zyx``, ``spacing_zyx``
    and ``direction``, so it holds after resampling too.
    """
    root = open_store(store, mode="r")
    out: dict[str, list] = {}
    with open(nodules_csv, newline="") as f:
        for row in csv.DictReader(f):
            case = sanitize_case_id(row["patient_id"])
            if case not in root:
                continue
            a = root[case]["image"].attrs
            src = a["source_spacing_zyx"]
            origin = np.asarray(a["origin_zyx"], float)
            world = np.array([float(row["z_position_mm"]), origin[1] + float(row["row"]) * src[1],
                              origin[2] + float(row["col"]) * src[2]])
            idx = np.round(world_to_index(world, origin, a["spacing_zyx"], a["direction"])).astype(int)
            out.setdefault(case, []).append((idx, row))
    return out


def figure_nodule(nodules: dict, name: str | None = None) -> tuple[str, int]:
    """(case, k) of the figure's nodule: ``name`` 'CASE:K' (K-th nodule of CASE, from 0), or the largest."""
    if name is None:
        return max(((c, k) for c, items in nodules.items() for k in range(len(items))),
                   key=lambda ck: float(nodules[ck[0]][ck[1]][1]["diameter_mm"]))
    case, _, k = name.rpartition(":")
    if case not in nodules or not k.isdigit() or int(k) >= len(nodules[case]):
        raise ValueError(f"figure_nodule {name!r} names no nodule; known: "
                         f"{', '.join(f'{c}:{i}' for c, items in nodules.items() for i in range(len(items)))}")
    return case, int(k)


def _labelled_rows(store, nodules: dict, cfg: RealCTConfig,
                   leave_out: tuple[str, int] | None = None) -> list[tuple[str, int, int, int, int]]:
    """Jittered nodule centres (label 1), except the nodule ``leave_out``, and candidates far from
    every nodule, that one included (label 0)."""
    rng = np.random.default_rng(cfg.seed)
    root = open_store(store, mode="r")
    rows = []
    for case, items in sorted(nodules.items()):
        spacing = np.asarray(root[case]["image"].attrs["spacing_zyx"], float)
        for k, (idx, _) in enumerate(items):
            if (case, k) == leave_out:
                continue
            for j in range(cfg.per_nodule):
                shift = np.zeros(3, int) if j == 0 else rng.integers(-cfg.jitter, cfg.jitter + 1, 3)
                rows.append((case, *(int(v) for v in idx + shift), 1))
        centres = np.stack([idx for idx, _ in items])
        for cand in root[case]["candidates"][...]:
            dist = np.sqrt((((centres - cand) * spacing) ** 2).sum(1)).min()
            if dist >= cfg.negative_distance_mm:
                rows.append((case, *(int(v) for v in cand), 0))
    return rows


def run_realct(sources, nodules_csv, out, config: RealCTConfig = RealCTConfig(), *, progress: bool = False,
               log=print) -> dict:
    """Preprocess, pretrain TCPC, fine-tune and draw the feature-map figure; see the module docstring.

    Returns
    -------
    dict: ``figure`` (PNG), ``pretrain`` and ``finetune`` summaries, ``labelled`` counts,
    ``nodule`` (case and voxel of the crop drawn), ``seconds``.
    """
    nodules_csv = Path(nodules_csv)
    if not nodules_csv.is_file():
        raise FileNotFoundError(f"nodules CSV not found: {nodules_csv}")
    out = Path(out)
    claim_dir(out, "realct", inputs=(*sources, nodules_csv), what="output folder", legacy=has_files("realct.json"))
    (out / "realct.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    t0 = time.perf_counter()
    rep = preprocess(list(map(str, sources)), out / "pre", progress=progress,
                     ingest_config=IngestConfig(clip=config.clip, spacing_zyx=config.spacing),
                     supervoxel_config=SupervoxelConfig(top_k=config.top_k, crop_size=config.crop_size),
                     shard_config=ShardConfig(crop_size=config.crop_size, cube_size=config.cube_size,
                                              targets_per_crop=4, seed=config.seed))
    log(rep.summary())
    if not rep.ok:
        raise RuntimeError(f"preprocessing failed:\n{rep.summary()}")
    store = out / "pre" / "volumes.zarr"
    nodules = nodule_voxels(store, nodules_csv)
    if not nodules:
        raise ValueError(f"no case of {nodules_csv} is among the preprocessed cases")
    fig_case, fig_k = figure_nodule(nodules, config.figure_nodule)  # checked before any training
    rows = _labelled_rows(store, nodules, config, leave_out=(fig_case, fig_k))
    labels_csv = out / "labelled.csv"
    with open(labels_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "z", "y", "x", "label"])
        w.writerows(rows)
    for split in ("train", "val", "test"):  # the same crops: no held-out evaluation (module docstring)
        write_labelled_shards(store, labels_csv, out / "labelled" / split,
                              LabelledConfig(crop_size=config.label_crop), workers=1)

    pcfg = PretrainConfig(task="tcpc", width=config.width, steps=config.pretrain_steps, batch_size=16,
                          runtime=RuntimeConfig(workers=0, seed=config.seed),
                          warmup=min(50, config.pretrain_steps // 5),
                          checkpoint_every=config.pretrain_steps)
    pre = pretrain(out / "pre" / "shards", out / "runs" / "tcpc", pcfg, progress=progress)
    log(f"TCPC on LIDC candidate crops: InfoNCE {pre['final_loss']:.3f} (chance {pre['chance_loss']:.3f})")
    fcfg = FinetuneConfig(width=config.width, epochs=config.finetune_epochs, batch_size=config.batch_size,
                          init=pre["checkpoint"],
                          runtime=dataclasses.replace(FINETUNE_RUNTIME, workers=0, seed=config.seed))
    fin = finetune(out / "labelled", out / "runs" / "finetune", fcfg, progress=progress)
    log(f"fine-tuned nodule vs candidate on {fin['n_train']} crops (training fit ACC {fin['metrics']['acc']:.3f})")

    torch.manual_seed(config.seed)
    random_enc = build_encoder("resnet18", config.width)
    tcpc_enc = build_encoder("resnet18", config.width)
    load_encoder_weights(tcpc_enc, pre["checkpoint"], {"arch": "resnet18", "width": config.width})
    clf = Classifier(build_encoder("resnet18", config.width), fin["n_classes"])
    clf.load_state_dict(load_checkpoint(fin["checkpoint"])["model"])
    case, (idx, row) = fig_case, nodules[fig_case][fig_k]  # not seen in fine-tuning
    nodule_crop, _ = crop(open_store(store, mode="r")[case]["image"], idx, config.crop_size, -1.0)
    figure = render_feature_maps({"random": random_enc, "TCPC-pretrained": tcpc_enc, "fine-tuned": clf.encoder},
                                 nodule_crop, out / "featuremaps.png",
                                 title=f"{case} nodule ({float(row['diameter_mm']):.0f} mm, not used in "
                                       "fine-tuning): deep-layer feature maps, central axial slice")
    result = {"figure": str(figure), "pretrain": pre, "finetune": {k: fin[k] for k in ("metrics", "n_train")},
              "labelled": {"nodule_crops": sum(r[-1] for r in rows), "candidate_crops": sum(1 - r[-1] for r in rows),
                           "note": "train = val = test: fine-tuning only makes the figure's third encoder"},
              "nodule": {"case": case, "index": fig_k, "voxel": idx.tolist(), "in_finetuning": False},
              "seconds": time.perf_counter() - t0}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    return result
