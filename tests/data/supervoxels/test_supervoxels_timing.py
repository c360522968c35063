"""Where preprocess time goes: per-phase seconds of the supervoxels stage and the run's time line."""
import time

import numpy as np

from tcpc_data.phantom import make_phantom
from tcpc_data.pipeline import PreprocessReport, _process_age
from tcpc_data.runner import RunReport
from tcpc_data.store.volumes import commit_arrays
from tcpc_data.supervoxels.stage import SupervoxelConfig, supervoxels

PHASES = ["read", "body mask", "slic", "candidates", "write"]


def test_stage_reports_each_phase_of_a_computed_case_and_none_of_a_skipped_one(tmp_path):
    ph = make_phantom((24, 48, 48), seed=2, n_lesions=1, classes=(1,))
    img = ((np.clip(ph.hu, -1024, 3071) + 1024) / 4095 * 2 - 1).astype(np.float32)
    url = tmp_path / "volumes.zarr"
    commit_arrays(url, "p", {"image": img}, {"image": {"spacing_zyx": list(ph.spacing_zyx),
                                                       "intensity_range": [-1024, 3071], "digest": "x"}})
    cfg = SupervoxelConfig(n_segments=60, sigma=2.0, top_k=3, crop_size=16)
    t0 = time.perf_counter()
    rep = supervoxels(url, cfg, workers=1)
    wall = time.perf_counter() - t0
    sec = rep.results["p"]["seconds"]
    assert list(sec) == PHASES and all(v >= 0 for v in sec.values())
    assert sum(sec.values()) <= wall  # phases of one case, measured inside the stage
    again = supervoxels(url, cfg, workers=1)
    assert again.skipped == ["p"] and "seconds" not in again.results["p"]


def test_time_line_names_start_up_each_stage_its_phases_and_the_total():
    ingest = RunReport("ingest", done=["a", "b"], results={"a": {}, "b": {}}, seconds=2.25)
    sv = RunReport("supervoxels", done=["a", "b"], seconds=4.0,
                   results={"a": {"seconds": {"read": 0.25, "slic": 1.5}},
                            "b": {"seconds": {"read": 0.5, "slic": 1.25}}})
    shards = RunReport("shards", done=["a", "b"], results={"a": 3, "b": 4}, seconds=0.5)
    rep = PreprocessReport("out", {"ingest": ingest, "supervoxels": sv, "shards": shards}, {},
                           seconds={"start-up": 1.04, "total": 7.0})
    assert rep.timing() == ("time: start-up 1.0 s · ingest 2.2 s · supervoxels 4.0 s (read 0.8, slic 2.8) · "
                            "shards 0.5 s · total 7.0 s")
    assert rep.summary().splitlines()[-1] == rep.timing()
    no_proc = PreprocessReport("out", {}, {}, seconds={"start-up": None, "total": 0.5})
    assert no_proc.timing() == "time: total 0.5 s"


def test_process_age_is_the_time_since_this_process_started():
    a = _process_age()
    time.sleep(0.05)
    b = _process_age()
    assert a is not None and 0 < a <= b < 86400  # /proc on Linux; clock ticks of 10 ms
    assert b - a < 5


def test_numba_cache_falls_back_to_a_temp_folder_only_when_nothing_is_writable(tmp_path):
    from tcpc_data._numba_cache import fallback_cache_dir

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = blocker / "numba"  # under a file: can never be created
    assert fallback_cache_dir(tmp_path, unwritable, {}) is None  # beside the sources
    assert fallback_cache_dir(unwritable, tmp_path / "cache" / "numba", {}) is None  # user-wide
    assert fallback_cache_dir(unwritable, unwritable, {"NUMBA_CACHE_DIR": "/x"}) is None  # the user's choice
    chosen = fallback_cache_dir(unwritable, unwritable, {})
    assert chosen is not None and "tcpc-numba-cache" in chosen
