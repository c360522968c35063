"""Pretraining shards: contents against direct crops, byte-identical reruns, resume, failures, stock reader."""
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest

from tcpc_data.outputs import MARKER, OutputError
from tcpc_data.shards import cubepaths as P
from tcpc_data.crops import crop
from tcpc_data.shards.pretrain import ShardConfig, path_sample, write_shards
from tcpc_data.store.volumes import commit_arrays, open_store

CFG = ShardConfig(crop_size=32, cube_size=8, targets_per_crop=3, shard_size=7, name="pre")


@pytest.fixture(scope="module")
def store(tmp_path_factory, phantom_store):
    url = tmp_path_factory.mktemp("s") / "v.zarr"
    phantom_store(url)
    return url


def _bytes(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def _only_listed(d):
    """The directory holds its tcpc marker, the manifest, the shards it lists and their cases' records, nothing
    else."""
    man = json.loads((d / "manifest.json").read_text())
    records = {f"{s['name'].rsplit('-', 1)[0]}.case.json" for s in man["shards"]}
    assert sorted(p.name for p in d.iterdir()) == sorted({MARKER, "manifest.json", *records,
                                                          *(s["name"] for s in man["shards"])})
    return man


def test_samples_are_the_cubes_of_the_crop(store, tmp_path):
    rep, man = write_shards(store, tmp_path / "o", CFG, workers=1)
    assert rep.ok and rep.done == ["ph-00", "ph-01"]
    assert man["totals"] == {"samples": 2 * 4 * 3, "shards": 4, "cases": 2}
    # one case per shard, shard_size samples at most: 12 samples a case -> 7 + 5
    assert [(s["case"], s["samples"]) for s in man["shards"]] == [("ph-00", 7), ("ph-00", 5), ("ph-01", 7),
                                                                   ("ph-01", 5)]
    assert all(s["name"].startswith(f"pre-{s['case']}-") and s["name"].endswith(("-00000.tar", "-00001.tar"))
               for s in man["shards"])
    _only_listed(tmp_path / "o")
    assert man["members"]["cubes.npy"]["shape"] == [8, 8, 8, 8]
    root = open_store(store, "r")
    seen = 0
    for shard in man["shards"]:
        with tarfile.open(tmp_path / "o" / shard["name"]) as tar:
            names = tar.getnames()
            assert all(n.split(".", 1)[1] in ("cubes.npy", "path.npy", "json") for n in names)
            assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
            for key in dict.fromkeys(n.split(".", 1)[0] for n in names):
                meta = json.loads(tar.extractfile(f"{key}.json").read())
                assert meta["case"] == shard["case"]
                cubes = np.load(io.BytesIO(tar.extractfile(f"{key}.cubes.npy").read()), allow_pickle=False)
                path = np.load(io.BytesIO(tar.extractfile(f"{key}.path.npy").read()), allow_pickle=False)
                assert cubes.dtype == np.float16 and path.dtype == np.int16
                image = root[meta["case"]]["image"][...]
                cr, box = crop(image, meta["centre"], 32, -1.0)
                assert box.tolist() == meta["crop_box"]
                for o, cube in zip(meta["origins"], cubes):
                    np.testing.assert_array_equal(cube, cr[P.cube_slices((0, 0, 0), 0, 8, o)].astype(np.float16))
                # grid of 3 cubes, stride 10 (gap 2) from voxel 2: origins follow the path
                assert (np.asarray(meta["origins"]) == 2 + 10 * path).all()
                assert path[-1].tolist() == meta["target"]
                assert np.abs(path[-1] - 1).max() <= 1  # near the crop centre
                assert path.tolist() == P.path_positions("u", path[-1], meta["plane"], meta["opening"]).tolist()
                seen += 1
    assert seen == 24


def test_border_candidate_is_padded_with_background(store):
    image = open_store(store, "r")["ph-00"]["image"][...]
    cr, box = crop(image, (1, 2, 62), 32, -1.0)
    assert box[0].tolist() == [-15, -14, 46] and np.all(cr[:15] == -1.0)


def test_rerun_is_byte_identical_and_independent_of_workers(store, tmp_path):
    write_shards(store, tmp_path / "a", CFG, workers=1)
    first = _bytes(tmp_path / "a")
    rep, _ = write_shards(store, tmp_path / "a", CFG, workers=1)
    assert rep.skipped == ["ph-00", "ph-01"] and not rep.done
    assert _bytes(tmp_path / "a") == first
    write_shards(store, tmp_path / "b", CFG, workers=2)
    assert _bytes(tmp_path / "b") == first
    _, man = write_shards(store, tmp_path / "c", ShardConfig(**{**CFG.__dict__, "seed": 1}), workers=1)
    # other draws: other bytes, other names (the folders' tcpc markers alike)
    assert not set(_bytes(tmp_path / "c").values()) & set(first.values()) - {first[MARKER]}
    assert not {s["name"] for s in man["shards"]} & set(first)


def test_a_bad_case_is_reported_the_rest_written_and_a_rerun_resumes(tmp_path, phantom_store):
    url = tmp_path / "v.zarr"
    phantom_store(url)
    good = np.asarray(open_store(url, "r")["ph-01"]["candidates"][...])
    commit_arrays(url, "ph-01", {"candidates": np.array([[500, 500, 500]], np.int32)},
                  {"candidates": {"digest": "bad"}})
    rep, man = write_shards(url, tmp_path / "o", CFG, workers=1, failures_path=tmp_path / "f.jsonl")
    assert rep.done == ["ph-00"] and [f["case"] for f in rep.failures] == ["ph-01"]
    assert "outside the volume" in rep.failures[0]["error"]
    assert man["failed_cases"] == ["ph-01"] and man["totals"]["samples"] == 12
    assert json.loads((tmp_path / "f.jsonl").read_text())["case"] == "ph-01"
    commit_arrays(url, "ph-01", {"candidates": good}, {"candidates": {"digest": "cand-1"}})
    rep, man = write_shards(url, tmp_path / "o", CFG, workers=1)
    assert rep.skipped == ["ph-00"] and rep.done == ["ph-01"] and rep.ok
    _only_listed(tmp_path / "o")
    fresh = tmp_path / "fresh"
    write_shards(url, fresh, CFG, workers=1)
    assert _bytes(tmp_path / "o") == _bytes(fresh)


def test_bad_inputs_are_clear_errors(store, tmp_path):
    with pytest.raises(FileNotFoundError, match="no volume store"):
        write_shards(tmp_path / "missing.zarr", tmp_path / "o", CFG)
    with pytest.raises(ValueError, match="fit the crop"):
        write_shards(store, tmp_path / "o", ShardConfig(crop_size=6, cube_size=8))
    with pytest.raises(ValueError, match="no target fits"):
        write_shards(store, tmp_path / "o", ShardConfig(crop_size=32, cube_size=8, path_size=2))
    with pytest.raises(ValueError, match="unknown path kind"):
        write_shards(store, tmp_path / "o", ShardConfig(path="zigzag"))
    with pytest.raises(ValueError, match="ph-99"):
        write_shards(store, tmp_path / "o", CFG, cases=["ph-99"])
    with pytest.raises(ValueError, match="shard name"):
        write_shards(store, tmp_path / "o", ShardConfig(**{**CFG.__dict__, "name": "a.b"}))
    assert not list((tmp_path / "o").glob("*.tar"))


@pytest.mark.parametrize("kind, n", [("straight", 8), ("block", 8)])
def test_other_path_kinds_and_fixed_variants(kind, n):
    cfg = ShardConfig(crop_size=32, cube_size=8, path=kind, plane="coronal" if kind == "straight" else None,
                      opening="down" if kind == "straight" else None, target_radius=None)
    cr = np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32)
    s = path_sample(cr, cfg, np.random.default_rng(0))
    assert s["cubes"].shape == (n, 8, 8, 8) and s["path"].shape == (n, 3)
    if kind == "straight":
        assert (s["plane"], s["opening"]) == ("coronal", "down")
        assert np.all(np.diff(s["path"][:, 0]) == 1)  # open at +z: the line comes from -z


def test_stock_webdataset_reads_the_shards_without_tcpc(store, tmp_path):
    write_shards(store, tmp_path / "o", CFG, workers=1)
    code = textwrap.dedent("""
        import sys, numpy as np, webdataset as wds
        ds = wds.WebDataset(sys.argv[1], shardshuffle=False).decode()
        n = 0
        for s in ds:
            assert s["cubes.npy"].shape == (8, 8, 8, 8) and s["cubes.npy"].dtype == np.float16
            assert s["path.npy"].shape == (8, 3) and isinstance(s["json"], dict)
            n += 1
        assert not [m for m in sys.modules if m.startswith("tcpc")]
        print(n)
    """)
    shards = json.loads((tmp_path / "o" / "manifest.json").read_text())["shards"]
    out = subprocess.run([sys.executable, "-I", "-c", code.replace("sys.argv[1]", "sys.argv[1:]"),
                          *(str(tmp_path / "o" / s["name"]) for s in shards)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "24"


def test_real_ct_torso_end_to_end(shared_data, tmp_path):
    """A real CT (torso NIfTI, 3 mm): crops at the border and inside, read back by stock webdataset."""
    import nibabel as nib
    import webdataset as wds

    img = nib.load(str(shared_data / "ct" / "robustness" / "torso-3mm.nii.gz"))
    hu = np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)  # (x, y, z) -> (z, y, x)
    unit = ((np.clip(hu, -1024, 3071) + 1024) / 4095 * 2 - 1).astype(np.float32)
    cands = np.array([np.array(unit.shape) // 2, (0, 0, 0), (unit.shape[0] - 1, 10, 50)], np.int32)
    url = tmp_path / "v.zarr"
    commit_arrays(url, "torso", {"image": unit, "candidates": cands},
                  {"image": {"spacing_zyx": [3.0, 3.0, 3.0], "digest": "torso"},
                   "candidates": {"crop_size": 64, "source": "csv", "digest": "c"}})
    rep, man = write_shards(url, tmp_path / "o", ShardConfig(targets_per_crop=2), workers=1)
    assert rep.ok and man["totals"]["samples"] == 6
    ds = wds.WebDataset(str(tmp_path / "o" / man["shards"][0]["name"]), shardshuffle=False).decode()
    for s in ds:
        cubes, meta = s["cubes.npy"], s["json"]
        assert cubes.shape == (8, 16, 16, 16) and cubes.min() >= -1 and cubes.max() <= 1
        cr, _ = crop(unit, meta["centre"], 64, -1.0)
        o = meta["origins"][-1]
        np.testing.assert_array_equal(cubes[-1], cr[P.cube_slices((0, 0, 0), 0, 16, o)].astype(np.float16))


def test_a_kill_mid_run_keeps_the_previous_set_valid_and_the_rerun_reuses_finished_cases(store, tmp_path,
                                                                                          monkeypatch):
    import tcpc_data.shards.shardset as sio
    from tcpc_data.tools.verify import verify

    write_shards(store, tmp_path / "o", CFG, workers=1)
    before = (tmp_path / "o" / "manifest.json").read_bytes()
    put = sio._put_tar

    def killed(out, shard, samples):
        if "ph-01" in shard:
            raise KeyboardInterrupt  # the process dies while the second case's shards are written
        return put(out, shard, samples)

    changed = ShardConfig(**{**CFG.__dict__, "seed": 3})
    monkeypatch.setattr(sio, "_put_tar", killed)
    with pytest.raises(KeyboardInterrupt):
        write_shards(store, tmp_path / "o", changed, workers=1)
    monkeypatch.undo()
    # the old manifest still vouches for the old set, every shard it lists intact
    assert (tmp_path / "o" / "manifest.json").read_bytes() == before and verify(tmp_path / "o").ok
    rep, man = write_shards(store, tmp_path / "o", changed, workers=1)
    assert rep.skipped == ["ph-00"] and rep.done == ["ph-01"]  # ph-00 finished before the kill: reused
    assert man["config"]["seed"] == 3 and man["totals"]["samples"] == 24
    _only_listed(tmp_path / "o")  # the seed-0 shards went once the new manifest was written
    write_shards(store, tmp_path / "fresh", changed, workers=1)
    assert _bytes(tmp_path / "o") == _bytes(tmp_path / "fresh")


def test_a_store_behind_an_fsspec_url(tmp_path, phantom_store):
    url = f"memory://shards-{tmp_path.name}/v.zarr"
    phantom_store(url, n_cases=1)
    rep, man = write_shards(url, tmp_path / "o", CFG, workers=1)
    assert rep.ok and man["totals"]["samples"] == 12 and man["source"] == url


def test_shards_written_to_an_fsspec_url_equal_a_local_write(store, tmp_path):
    import fsspec

    from tcpc_data.shards.tario import tar_samples

    mem, url = fsspec.filesystem("memory"), f"memory://out-{tmp_path.name}/pre"
    try:
        write_shards(store, tmp_path / "local", CFG, workers=1)
        rep, man = write_shards(store, url, CFG, workers=1)
        assert rep.done == ["ph-00", "ph-01"] and man["totals"]["shards"] == 4
        remote = {p.rsplit("/", 1)[-1]: hashlib.sha256(mem.cat_file(p)).hexdigest() for p in mem.ls(url, detail=False)}
        assert remote == _bytes(tmp_path / "local")  # the same bytes, manifest and case records included
        assert len(list(tar_samples(f"{url}/{man['shards'][0]['name']}"))) == 7
        rep, _ = write_shards(store, url, CFG, workers=1)
        assert rep.skipped == ["ph-00", "ph-01"] and not rep.done  # current remote set: nothing redone
        mem.pipe(f"{url.split('://')[1]}/pre-ph-09-0123456789abcdef-00000.tar", b"stale")
        _, seed5 = write_shards(store, url, ShardConfig(**{**CFG.__dict__, "seed": 5}), workers=1)
        names = {p.rsplit("/", 1)[-1] for p in mem.ls(url, detail=False)}
        assert names == {MARKER, "manifest.json", *(s["name"] for s in seed5["shards"]),
                         *(n for n in names if n.endswith(".case.json"))}  # stale and seed-0 shards gone
        assert len([n for n in names if n.endswith(".case.json")]) == 2
    finally:
        mem.rm(f"/out-{tmp_path.name}", recursive=True)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        write_shards(store, tmp_path / "afile", CFG, workers=1)


def test_adding_or_changing_cases_writes_only_those_and_reads_no_existing_shard(tmp_path, monkeypatch,
                                                                             phantom_store):
    import tcpc_data.shards.pretrain as shards_mod
    import tcpc_data.shards.tario as tario

    url = tmp_path / "v.zarr"
    phantom_store(url, n_cases=2)
    write_shards(url, tmp_path / "o", CFG, workers=1)
    old = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o").glob("*.tar")}
    phantom_store(url, n_cases=3)  # a new case arrives; the first two are unchanged
    computed = []
    make = shards_mod.crop_samples

    def counting(*args, **kwargs):
        computed.append(args)
        return make(*args, **kwargs)

    def no_read(path):
        raise AssertionError(f"an existing shard was read: {path}")
    monkeypatch.setattr(shards_mod, "crop_samples", counting)
    monkeypatch.setattr(tario, "tar_members", no_read)
    rep, man = write_shards(url, tmp_path / "o", CFG, workers=1)
    monkeypatch.undo()
    assert rep.done == ["ph-02"] and rep.skipped == ["ph-00", "ph-01"]
    assert {args[2] for args in computed} == {"ph-02"}  # crops cut for the new case only
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "o").glob("*.tar") if p.name in old} == old
    write_shards(url, tmp_path / "fresh", CFG, workers=1)
    assert _bytes(tmp_path / "o") == _bytes(tmp_path / "fresh")
    # A changed case gets new shards; its old ones go. A missing shard of a listed case redoes that case.
    cands = np.asarray(open_store(url, "r")["ph-01"]["candidates"][...])
    commit_arrays(url, "ph-01", {"candidates": cands[:2]}, {"candidates": {"digest": "cand-1-changed"}})
    (tmp_path / "o" / man["shards"][0]["name"]).unlink()  # ph-00's first shard lost
    rep, man = write_shards(url, tmp_path / "o", CFG, workers=1)
    assert rep.done == ["ph-00", "ph-01"] and rep.skipped == ["ph-02"]
    _only_listed(tmp_path / "o")
    write_shards(url, tmp_path / "fresh2", CFG, workers=1)
    assert _bytes(tmp_path / "o") == _bytes(tmp_path / "fresh2")


def test_paper_block_cubes_touch_without_overlap():
    cfg = ShardConfig.preset("paper", crop_size=32, cube_size=8, path="block")
    assert cfg.size() == 2 and ShardConfig(path="block", overlap=0.0).size() == 1
    s = path_sample(np.zeros((32, 32, 32), np.float32), cfg, np.random.default_rng(1))
    starts = s["path"].astype(int) * 4  # stride 4 voxels; cubes of 8 voxels starting 8 apart
    assert {tuple(v) for v in starts - starts.min(0)} == {(a, b, c) for a in (0, 8) for b in (0, 8) for c in (0, 8)}


def test_a_set_of_the_older_format_is_rewritten_and_its_files_removed(store, tmp_path):
    from tcpc_data.shards.manifest import read_manifest

    _, man = write_shards(store, tmp_path / "o", CFG, workers=1)
    old = json.loads((tmp_path / "o" / "manifest.json").read_text())
    old["format_version"] = 1  # as tcpc wrote it before shards held one case each: packed shards, no records
    for f in (tmp_path / "o").iterdir():
        f.unlink()
    (tmp_path / "o" / "manifest.json").write_text(json.dumps(old))
    (tmp_path / "o" / "pre-000000.tar").write_bytes(b"old packed shard")
    (tmp_path / "o" / ".parts").mkdir()
    (tmp_path / "o" / ".parts" / "ph-00-0123.tar").write_bytes(b"old part")
    with pytest.raises(ValueError, match="format version 1; this tcpc reads version 2 \\(rerun the command"):
        read_manifest(tmp_path / "o")
    rep, again = write_shards(store, tmp_path / "o", CFG, workers=1)
    assert rep.done == ["ph-00", "ph-01"] and again == man
    _only_listed(tmp_path / "o")  # the old packed shard and parts are gone


def test_temporary_files_of_killed_writers_are_swept(store, tmp_path):
    _, man = write_shards(store, tmp_path / "o", CFG, workers=1)
    (tmp_path / "o" / "manifest.json").unlink()  # the client was killed while writing it
    for name in (".manifest.json.0123abcd.tmp", f".{man['shards'][0]['name']}.4567.tmp",
                 ".pre-ph-00-0123456789abcdef.case.json.89ab.tmp"):
        (tmp_path / "o" / name).write_bytes(b"half")
    (tmp_path / "o" / "notes.txt").write_text("the user's")
    rep, again = write_shards(store, tmp_path / "o", CFG, workers=1)
    assert rep.skipped == ["ph-00", "ph-01"] and again == man  # the case records vouch for the shards
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if p.name.startswith(".")) == [MARKER]
    assert (tmp_path / "o" / "notes.txt").exists()  # not a file of the set: left alone
