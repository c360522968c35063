"""tcpc preprocess: ingest → supervoxels → shards (+ labelled) in one command, rerun, and a bad source."""
import hashlib

from click.testing import CliRunner

from cli import main
from tcpc_data.phantom import write_archive
from tcpc_data.shards.manifest import read_manifest

ARGS = ["--clip", "-1024,3071", "--n-segments", "200", "--top-k", "3", "--crop-size", "32",
        "--cube-size", "8", "--targets-per-crop", "2", "--workers", "1", "--no-progress"]


def _digests(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("*.tar"))}


def test_preprocess_end_to_end_rerun_and_a_bad_file(tmp_path):
    arch = tmp_path / "arch"
    labels = write_archive(arch, n_cases=2, shape=(32, 64, 64))
    (arch / "broken.nii.gz").write_bytes(b"not a nifti file")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["preprocess", str(arch), "--out", str(out), "--labels", str(labels), *ARGS])
    assert r.exit_code == 1, r.output  # the broken file failed, the phantoms went through
    assert "broken" in (out / "failures-ingest.jsonl").read_text()
    man = read_manifest(out / "shards")  # the contract's reader: format, version and counts checked
    assert man["totals"]["cases"] == 2 and man["totals"]["samples"] > 0
    assert man["config"]["crop_size"] == 32
    n_lesions = len(labels.read_text().splitlines()) - 1
    lab = read_manifest(out / "labelled")
    assert lab["totals"]["samples"] == n_lesions and lab["kind"] == "finetune"
    first = _digests(out / "shards")

    (arch / "broken.nii.gz").unlink()
    r = CliRunner().invoke(main, ["preprocess", str(arch), "--out", str(out), "--labels", str(labels), *ARGS])
    assert r.exit_code == 0, r.output
    assert "shards: 0 done, 2 skipped" in r.output and "supervoxels: 0 done, 2 skipped" in r.output
    assert _digests(out / "shards") == first
