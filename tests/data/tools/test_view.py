"""tcpc view: the layers of a case (always), and napari showing them on a virtual display (napari extra)."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from tcpc_data.store.volumes import commit_arrays
from tcpc_data.tools.view import ViewConfig, case_layers, placement
from tcpc_data.volume import index_to_world

SHAPE = (20, 30, 40)
SPACING = [2.5, 0.8, 0.7]
ORIGIN = [-40.0, 12.5, -7.0]
CANDIDATES = np.array([[10, 15, 20], [1, 2, 38], [18, 25, 5]], np.int32)  # the 2nd and 3rd reach past the border


def _write_case(store, case="c1", direction=np.eye(3), with_mask=True):
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, SHAPE).astype(np.float32)
    sv = (1 + np.indices(SHAPE).sum(0) // 7).astype(np.int32)
    arrays = {"image": image, "supervoxels": sv, "candidates": CANDIDATES,
              "candidate_scores": np.array([0.9, 0.5, 0.1], np.float32)}
    attrs = {"image": {"spacing_zyx": SPACING, "origin_zyx": ORIGIN, "direction": np.asarray(direction).tolist(),
                       "intensity_range": [-1024.0, 3071.0], "digest": "i"},
             "supervoxels": {"digest": "s"}, "candidates": {"crop_size": 8, "digest": "c"},
             "candidate_scores": {"digest": "c"}}
    if with_mask:
        arrays["mask"] = (sv % 3 == 0).astype(np.uint8)
        attrs["mask"] = {"digest": "m"}
    commit_arrays(store, case, arrays, attrs)
    return image, sv


@pytest.fixture
def store(tmp_path):
    url = tmp_path / "v.zarr"
    _write_case(url)
    return url


def _by_name(layers):
    return {kw["name"]: (data, kw, kind) for data, kw, kind in layers}


def test_layers_hold_the_case_in_world_millimetres(store, tmp_path):
    (tmp_path / "c.csv").write_text("case,z_mm,y_mm,x_mm\nc1,-15,20.5,0\nother,0,0,0\n")
    case, layers = case_layers(store, None, ViewConfig(window=(-1024, 3071), boxes=2), tmp_path / "c.csv")
    assert case == "c1"
    got = _by_name(layers)
    assert list(got) == ["image", "supervoxels", "mask", "candidates", "centres"]
    for data, kw, kind in layers:
        assert kw["scale"] == tuple(SPACING) and kw["translate"] == tuple(ORIGIN), kw["name"]
    image, kw, kind = got["image"]
    assert kind == "image" and image.shape == SHAPE and kw["contrast_limits"] == (-1.0, 1.0)
    assert got["supervoxels"][2] == got["mask"][2] == "labels"
    # boxes of side 8 on every slice they span inside the volume: 8 slices for the first, 5 for the second
    rects, kw, kind = got["candidates"]
    assert kind == "shapes" and kw["features"]["rank"].tolist() == [0] * 8 + [1] * 5
    assert rects[0].tolist() == [[6, 10.5, 15.5], [6, 10.5, 23.5], [6, 18.5, 23.5], [6, 18.5, 15.5]]
    assert [r[0, 0] for r in rects[8:]] == [0, 1, 2, 3, 4]
    # world (-15, 20.5, 0) mm = origin + index * spacing at index (10, 10, 10)
    points, kw, kind = got["centres"]
    np.testing.assert_allclose(points, [[10, 10, 10]])


def test_the_window_is_given_in_hu():
    """Stored values are 2 (hu - lo) / (hi - lo) - 1 with the case's intensity range."""
    from tcpc_data.tools.view import _window
    assert _window({"intensity_range": [-1000, 1000]}, (-1000, 0)) == (-1.0, 0.0)
    assert _window({"intensity_range": [-1000, 1000]}, (-3000, 3000)) == (-1.0, 1.0)


def test_a_turned_image_is_placed_by_its_full_geometry(tmp_path):
    flip = np.array([[-1.0, 0, 0], [0, 0, 1], [0, 1, 0]])  # z reversed, y and x swapped
    _write_case(tmp_path / "v.zarr", "t", direction=flip, with_mask=False)
    _, layers = case_layers(tmp_path / "v.zarr", "t")
    kw = _by_name(layers)["image"][1]
    assert "scale" not in kw and "translate" not in kw
    corner = np.array([3, 7, 11])
    world = kw["affine"] @ np.append(corner, 1.0)
    np.testing.assert_allclose(world[:3], index_to_world(corner, ORIGIN, SPACING, flip))
    assert placement({"spacing_zyx": SPACING, "origin_zyx": ORIGIN, "direction": np.eye(3).tolist()}) == {
        "scale": tuple(SPACING), "translate": tuple(ORIGIN)}


def test_bad_requests_fail_in_one_line(store, tmp_path):
    with pytest.raises(ValueError, match="has no complete case 'nope' \\(cases: c1\\)"):
        case_layers(store, "nope")
    with pytest.raises(ValueError, match="window must be two finite HU values"):
        ViewConfig(window=(400, -1000))
    with pytest.raises(ValueError, match="boxes must be a whole number"):
        ViewConfig(boxes=-1)
    res = CliRunner().invoke(main, ["view", str(store), "nope"])
    assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.count("\n") == 1


def test_without_napari_the_command_says_which_extra_to_install(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "napari", None)  # import napari now raises ImportError
    res = CliRunner().invoke(main, ["view", str(store)])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert res.output.startswith("error: tcpc view needs napari and a Qt binding: pip install 'tcpc[napari]'")


# ---------------------------------------------------------------------------------------------
# napari itself (the napari extra), on a virtual X display
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def display():
    """An X display with OpenGL: the one given, else a private Xvfb. (Qt's offscreen platform
    renders napari's canvas black with Mesa, so the test draws on a virtual display instead.)"""
    pytest.importorskip("napari", reason="napari is not installed: pip install '.[napari]'")
    os.environ.pop("QT_QPA_PLATFORM", None)
    if not os.environ.get("DISPLAY"):
        if shutil.which("Xvfb") is None:
            pytest.skip("napari needs an OpenGL display: no DISPLAY and no Xvfb (apt-get install xvfb)")
        # -terminate: the server ends when its last client, this process's Qt, disconnects at exit
        # (stopping it earlier would kill the process: Qt aborts when its X connection breaks)
        proc = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "1024x768x24", "-nolisten", "tcp",
                                 "-terminate"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        os.environ["DISPLAY"] = ":" + proc.stdout.readline().decode().strip()
    return os.environ["DISPLAY"]


def test_napari_shows_the_layers_in_world_mm_and_takes_a_screenshot(store, tmp_path, display, read_png):
    from tcpc_data.tools.view import open_viewer

    (tmp_path / "c.csv").write_text("case,z,y,x\nc1,10,15,20\n")
    viewer = open_viewer(store, "c1", ViewConfig(boxes=1), tmp_path / "c.csv")
    try:
        assert [layer.name for layer in viewer.layers] == ["image", "supervoxels", "mask", "candidates", "centres"]
        for layer in viewer.layers:
            np.testing.assert_allclose(layer.scale, SPACING)
            np.testing.assert_allclose(layer.translate, ORIGIN)
        image = viewer.layers["image"]
        assert image.data.shape == SHAPE
        np.testing.assert_array_equal(np.asarray(image.data[10]), np.asarray(store_image(store)[10]))
        assert viewer.layers["supervoxels"].contour == 1
        assert len(viewer.layers["candidates"].data) == 8
        # it opens on the centre's slice: world z of voxel 10
        assert viewer.dims.point[0] == pytest.approx(ORIGIN[0] + 10 * SPACING[0])
        shot = viewer.screenshot(path=str(tmp_path / "v.png"), canvas_only=True, size=(300, 300))
    finally:
        viewer.close()
    assert shot.shape == (300, 300, 4)
    rgb = read_png(tmp_path / "v.png")
    assert rgb.shape == (300, 300, 3) and rgb.std() > 10  # drawn, not a black canvas
    # the yellow box and the red ring are drawn
    assert np.any((rgb[..., 0] > 200) & (rgb[..., 1] > 200) & (rgb[..., 2] < 80))
    assert np.any((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60))


def test_napari_places_a_flipped_case_by_its_direction(tmp_path, display):
    """A NIfTI-like case (y and x reversed): every layer maps a voxel to its world position."""
    from tcpc_data.tools.view import open_viewer

    flip = np.diag([1.0, -1.0, -1.0])
    _write_case(tmp_path / "v.zarr", "t", direction=flip)
    viewer = open_viewer(tmp_path / "v.zarr", "t")
    try:
        for layer in viewer.layers:
            np.testing.assert_allclose(layer.data_to_world([3, 7, 11]),
                                       index_to_world([3, 7, 11], ORIGIN, SPACING, flip), err_msg=layer.name)
    finally:
        viewer.close()


def test_cli_view_writes_a_screenshot(store, tmp_path, display):
    res = CliRunner().invoke(main, ["view", str(store), "--boxes", "0", "--screenshot", str(tmp_path / "s.png")])
    assert res.exit_code == 0, res.output
    assert f"view of c1 written to {tmp_path / 's.png'}" in res.output
    assert (tmp_path / "s.png").stat().st_size > 1000


def store_image(store):
    from tcpc_data.store.volumes import open_store
    return open_store(store, "r")["c1"]["image"]
