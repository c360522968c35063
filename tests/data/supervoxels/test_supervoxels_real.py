"""End to end on real CT: LIDC-IDRI-0001 through ingest and supervoxels; SLIC vs scikit-image on a real crop."""
import csv

import numpy as np

from bench import segmetrics
from tcpc_data.supervoxels.slic import slic


def _read_hu(series_dir):
    from bench.lidc import read_series  # the repository root is on pytest's pythonpath
    return read_series(series_dir)


def test_slic_quality_within_two_percent_of_scikit_image_on_lidc(lidc_dir):
    from skimage.segmentation import slic as sk_slic

    hu, spacing, _ = _read_hu(lidc_dir / "LIDC-IDRI-0001")
    hu = hu[70:102, 150:342, 120:312]  # 32 x 192 x 192 around the nodule
    img = ((np.clip(hu, -1024, 3071) + 1024) / 4095 * 2 - 1).astype(np.float32)
    kw = dict(n_segments=40, compactness=0.1, sigma=10.0, spacing=spacing, max_num_iter=10)
    ours, theirs = slic(img, **kw), sk_slic(img, channel_axis=None, start_label=1, **kw)
    truth = segmetrics.reference_segmentation(hu, spacing)
    ev = [segmetrics.explained_variation(img, s) for s in (ours, theirs)]
    ue = [segmetrics.undersegmentation_error(truth, s) for s in (ours, theirs)]
    br = [segmetrics.boundary_recall(truth, s) for s in (ours, theirs)]
    assert ev[0] >= 0.98 * ev[1] and br[0] >= 0.98 * br[1] and ue[0] <= 1.02 * ue[1], (ev, ue, br)


def test_ingest_then_supervoxels_finds_the_lidc_nodule(lidc_dir, tmp_path):
    from tcpc_data.ingest.stage import IngestConfig, ingest
    from tcpc_data.store.volumes import open_store
    from tcpc_data.supervoxels.stage import SupervoxelConfig, supervoxels

    store = tmp_path / "volumes.zarr"
    rep = ingest(lidc_dir / "LIDC-IDRI-0001", store, IngestConfig(spacing_zyx=(2.0, 2.0, 2.0)), workers=1)
    assert rep.ok, rep.failures
    (case,) = rep.done
    config = SupervoxelConfig(crop_size=32)  # 64 mm at 2 mm
    sv = supervoxels(store, config, workers=1)
    assert sv.ok, sv.failures
    g = open_store(store, "r")[case]
    image = g["image"]
    labels = g["supervoxels"][...]
    assert labels[0, 0, 0] == 0 and labels.max() > 1000  # corner is outside the body
    with open(lidc_dir / "nodules.csv", newline="") as f:
        nod = next(r for r in csv.DictReader(f) if r["patient_id"] == "LIDC-IDRI-0001")
    hu, spacing, origin = _read_hu(lidc_dir / "LIDC-IDRI-0001")
    world = np.array(origin) + np.array([float(nod["slice_index"]), float(nod["row"]), float(nod["col"])]) \
        * np.array(spacing)
    centre = (world - np.array(image.attrs["origin_zyx"])) / np.array(image.attrs["spacing_zyx"])
    cands = g["candidates"][...]
    assert len(cands) == config.top_k and g["candidates"].attrs["source"] == "slic"
    assert np.abs(cands - centre).max(axis=1).min() <= config.crop_size / 2, (centre, cands[:5])
