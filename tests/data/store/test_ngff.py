"""OME-Zarr (NGFF 0.5) metadata of the volume store, read back by independent OME-Zarr readers."""
import numpy as np
import pytest
import zarr

from tcpc_data.ingest import IngestConfig, ingest
from tcpc_data.store import ngff
from tcpc_data.store.ngff import image_attrs, multiscales
from tcpc_data.store.volumes import commit_arrays, open_store
from tcpc_data.supervoxels import SupervoxelConfig, supervoxels

ome_zarr_reader = pytest.importorskip(
    "ome_zarr.reader", reason="ome-zarr (the independent OME-Zarr reader) is not installed: pip install '.[test]'")
from ome_zarr.io import parse_url  # noqa: E402

SV = SupervoxelConfig(n_segments=40, sigma=1.0, top_k=3, crop_size=8)


def _nodes(case_dir):
    """ome-zarr-py's view of a case group: {node path relative to the case: node}."""
    loc = parse_url(str(case_dir))
    assert loc is not None, f"ome-zarr finds no OME-Zarr group at {case_dir}"
    assert loc.version == "0.5"
    return {str(n.zarr.path)[len(str(case_dir)):].strip("/"): n for n in ome_zarr_reader.Reader(loc)()}


def _transforms(node):
    (scale, translation), = node.metadata["coordinateTransformations"]
    assert scale["type"] == "scale" and translation["type"] == "translation"
    return scale["scale"], translation["translation"]


@pytest.fixture
def dicom_store(tmp_path, dicom_factory):
    """A DICOM series (origin x=-10, y=20, z=-31.5 mm; 2.5 x 1 x 2 mm voxels) ingested and supervoxelled."""
    dicom_factory.write_series(tmp_path / "src" / "pat", dicom_factory.z_positions(np.arange(8) * 2.5 - 31.5),
                               rows=24, cols=20, pixel=(1.0, 2.0))
    store = tmp_path / "v.zarr"
    assert ingest(tmp_path / "src", store, workers=1).done == ["pat"]
    assert supervoxels(store, SV, workers=1).done == ["pat"]
    return store


def test_case_opens_in_ome_zarr_with_physical_scale_origin_and_supervoxel_labels(dicom_store):
    case = open_store(dicom_store, "r")["pat"]
    nodes = _nodes(dicom_store / "pat")
    assert set(nodes) == {"", "labels", "labels/supervoxels"}
    image = nodes[""]
    scale, translation = _transforms(image)
    assert scale == pytest.approx([2.5, 1.0, 2.0])
    assert translation == pytest.approx([-31.5, 20.0, -10.0])  # z, y, x of voxel 0 in LPS
    assert [a["name"] for a in image.metadata["axes"]] == ["z", "y", "x"]
    assert {a["unit"] for a in image.metadata["axes"]} == {"millimeter"}
    np.testing.assert_array_equal(np.asarray(image.data[0]), case["image"][...])

    label = nodes["labels/supervoxels"]
    assert label.metadata["name"] == "pat supervoxels"
    assert _transforms(label) == (scale, translation)  # the label lies on the image's grid
    labels = np.asarray(label.data[0])
    np.testing.assert_array_equal(labels, case["supervoxels"][...])
    assert labels.max() == case["supervoxels"].attrs["n_supervoxels"] > 1


def test_case_validates_against_the_ngff_05_models(dicom_store):
    models = pytest.importorskip("ome_zarr_models.v05.image", reason="ome-zarr-models is not installed")
    image = models.Image.from_zarr(zarr.open_group(str(dicom_store / "pat"), mode="r"))
    assert [d.path for d in image.ome_attributes.multiscales[0].datasets] == ["image"]
    assert image.labels.ome_attributes.labels == ["supervoxels"]


def test_a_mask_is_a_second_label_image(dicom_store):
    mask = np.zeros((8, 24, 20), np.uint8)
    mask[2:5, 3:9, 4:7] = 2
    commit_arrays(dicom_store, "pat", {"mask": mask}, {"mask": {"digest": "m"}})
    nodes = _nodes(dicom_store / "pat")
    np.testing.assert_array_equal(np.asarray(nodes["labels/mask"].data[0]), mask)
    assert open_store(dicom_store, "r")["pat"]["labels"].attrs["ome"]["labels"] == ["mask", "supervoxels"]
    assert open_store(dicom_store, "r")["pat"]["labels/mask/0"].attrs["digest"] == "m"


def test_a_new_image_drops_the_old_grids_labels_until_they_are_redone(dicom_store, tmp_path):
    """Re-ingest at another spacing: new scale, no stale label image; the supervoxels stage restores it."""
    assert ingest(tmp_path / "src", dicom_store, IngestConfig(spacing_zyx=(5.0, 2.0, 2.0)), workers=1).done == ["pat"]
    nodes = _nodes(dicom_store / "pat")
    assert set(nodes) == {"", "labels"}
    assert open_store(dicom_store, "r")["pat"]["labels"].attrs["ome"]["labels"] == []
    assert _transforms(nodes[""])[0] == pytest.approx([5.0, 2.0, 2.0])
    assert supervoxels(dicom_store, SV, workers=1).done == ["pat"]
    label = _nodes(dicom_store / "pat")["labels/supervoxels"]
    assert np.asarray(label.data[0]).shape == open_store(dicom_store, "r")["pat"]["image"].shape == (4, 12, 20)


def test_what_a_kill_after_a_commit_left_out_the_next_commit_restores(tmp_path, monkeypatch):
    """A new case's label copy is written just after its commit: killed there (simulated), the case has
    a complete mask but no label image; the case's next commit (its supervoxels) writes both."""
    from tcpc_data.store import ngff

    store, shape = tmp_path / "v.zarr", (4, 6, 5)
    mask = np.zeros(shape, np.uint8)
    mask[1:3, 2:4, 1:3] = 1
    geometry = {"spacing_zyx": [2.0, 1.0, 1.0], "origin_zyx": [5.0, -3.0, 7.0], "digest": "i"}
    with monkeypatch.context() as m:
        m.setattr(ngff, "after_commit", lambda case, arrays: None)  # the process dies here
        commit_arrays(store, "c", {"image": np.zeros(shape, np.float32), "mask": mask},
                      {"image": geometry, "mask": {"digest": "m"}})
    group = open_store(store, "r")["c"]
    assert group.attrs["ome"] == image_attrs("c", [2.0, 1.0, 1.0], [5.0, -3.0, 7.0])  # inside the commit
    assert "labels" not in group
    sv = np.arange(np.prod(shape), dtype=np.int32).reshape(shape) % 5
    commit_arrays(store, "c", {"supervoxels": sv}, {"supervoxels": {"digest": "s"}})
    nodes = _nodes(tmp_path / "v.zarr" / "c")
    np.testing.assert_array_equal(np.asarray(nodes["labels/mask"].data[0]), mask)
    np.testing.assert_array_equal(np.asarray(nodes["labels/supervoxels"].data[0]), sv)
    assert _transforms(nodes["labels/mask"]) == ([2.0, 1.0, 1.0], [5.0, -3.0, 7.0])


def test_a_kill_before_the_arrays_complete_leaves_the_copy_ahead_and_the_rerun_agrees(dicom_store, monkeypatch):
    """On an existing case the copy is written before the array's digest: killed in between (simulated),
    the copy shows the new labels while tcpc's array is still the old one; committing again agrees."""
    from tcpc_data.store import volumes as store_module

    new = open_store(dicom_store, "r")["pat"]["supervoxels"][...] + 1
    with monkeypatch.context() as m:
        m.setattr(store_module, "_commit", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            commit_arrays(dicom_store, "pat", {"supervoxels": new}, {"supervoxels": {"digest": "new"}})
    group = open_store(dicom_store, "r")["pat"]
    assert group["labels/supervoxels/0"].attrs["digest"] == "new" != group["supervoxels"].attrs["digest"]
    commit_arrays(dicom_store, "pat", {"supervoxels": new}, {"supervoxels": {"digest": "new"}})
    label = _nodes(dicom_store / "pat")["labels/supervoxels"]
    np.testing.assert_array_equal(np.asarray(label.data[0]), new)
    np.testing.assert_array_equal(open_store(dicom_store, "r")["pat"]["supervoxels"][...], new)


def test_a_case_whose_geometry_ngff_cannot_hold_commits_without_ngff_metadata(dicom_store):
    """A negative spacing: the commit succeeds (the stages report the geometry), the case is no NGFF image."""
    group = open_store(dicom_store, "r")["pat"]
    attrs = dict(group["image"].attrs, spacing_zyx=[2.5, -1.0, 2.0])
    commit_arrays(dicom_store, "pat", {"image": group["image"][...]}, {"image": attrs})
    group = open_store(dicom_store, "r")["pat"]
    assert group["image"].attrs["spacing_zyx"] == [2.5, -1.0, 2.0]
    assert "ome" not in group.attrs and group["labels"].attrs["ome"]["labels"] == []
    nodes = ome_zarr_reader.Reader(parse_url(str(dicom_store / "pat")))()
    assert not any(n.load(ome_zarr_reader.Multiscales) for n in nodes)  # nor an image for ome-zarr


def test_metadata_refuses_geometry_ngff_cannot_hold():
    assert image_attrs("c", [1, 2, 3], [-0.0, 0, 5])["multiscales"][0]["datasets"][0][
        "coordinateTransformations"][1]["translation"] == [0.0, 0.0, 5.0]
    for spacing, origin in (([1, 0, 1], [0, 0, 0]), ([1, 1], [0, 0, 0]), ([1, 1, 1], [0, np.nan, 0]),
                            (None, [0, 0, 0])):
        with pytest.raises(ValueError, match="NGFF needs 3 positive spacings"):
            multiscales("image", spacing, origin, "c")


@pytest.mark.slow
def test_a_real_lidc_case_opens_at_its_dicom_geometry(lidc_dir, tmp_path):
    """LIDC-IDRI-0001: scale and translation as the DICOM headers give them (read here with pydicom)."""
    import pydicom

    series = lidc_dir / "LIDC-IDRI-0001"
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.rglob("*.dcm"))]
    headers = [h for h in headers if h.get("Modality") == "CT"]
    first = min(headers, key=lambda h: float(h.ImagePositionPatient[2]))
    zs = sorted(float(h.ImagePositionPatient[2]) for h in headers)
    x0, y0, z0 = (float(v) for v in first.ImagePositionPatient)
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)

    store = tmp_path / "v.zarr"
    assert ingest(series, store, IngestConfig(clip=(-1024, 3071)), workers=1).done == ["LIDC-IDRI-0001"]
    assert supervoxels(store, SupervoxelConfig(n_segments=300), workers=1).ok
    nodes = _nodes(store / "LIDC-IDRI-0001")
    scale, translation = _transforms(nodes[""])
    assert scale == pytest.approx([np.median(np.diff(zs)), row_mm, col_mm])
    assert translation == pytest.approx([z0, y0, x0], abs=1e-4)
    assert np.asarray(nodes[""].data[0]).shape == (len(headers), first.Rows, first.Columns)
    label = nodes["labels/supervoxels"]
    assert _transforms(label) == (scale, translation)
    np.testing.assert_array_equal(np.asarray(label.data[0]),
                                  open_store(store, "r")["LIDC-IDRI-0001"]["supervoxels"][...])


def test_after_commit_leaves_a_case_another_process_is_swapping_in_to_that_process():
    # Two ingests of one store: the other writer's image is between its trash and its rename.
    class Swapping:
        basename = "case"

        def __contains__(self, name):
            return True

        def __getitem__(self, name):
            raise KeyError(name)

    assert ngff.after_commit(Swapping(), {}) is None
