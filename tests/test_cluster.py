"""A cluster standing in for several hosts: a dask scheduler and two workers started from the command line.

Each worker and the client run in a directory of their own with their own TMPDIR, so nothing
can pass through a shared local disk: sources, store and shards live on a local S3-compatible
server (moto on 127.0.0.1). One worker is killed (SIGKILL, a lost host) while it runs one of the
shards stage's cases; the run still completes and its outputs equal those of one process writing alone.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcpc_data.phantom import write_archive
from tests.s3server import free_port, moto_server, s3_environment, wait_for_port

s3fs = pytest.importorskip("s3fs", reason="the s3 extra (pip install 'tcpc[s3]') is not installed")
distributed = pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[1]
DASK = [sys.executable, "-m", "dask"]  # the `dask` command of this interpreter
ARGS = ["--clip", "-1024,3071", "--n-segments", "200", "--top-k", "3", "--crop-size", "32",
        "--cube-size", "8", "--targets-per-crop", "2", "--shard-size", "4", "--no-progress"]


def _start(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "tmp").mkdir(exist_ok=True)
    return subprocess.Popen(args, cwd=cwd, env={**env, "TMPDIR": str(cwd / "tmp")}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _shard_set(fs, url: str) -> tuple[dict, dict]:
    """(manifest without its ``source``, name -> SHA-256 of every other object) of a shard set on S3."""
    fs.invalidate_cache()
    manifest = json.loads(fs.cat(f"{url}/manifest.json"))
    manifest.pop("source")  # where the store was: the two runs wrote different ones
    files = {p.rsplit("/", 1)[-1]: hashlib.sha256(fs.cat(p)).hexdigest() for p in fs.ls(url, detail=False)
             if not p.endswith("/manifest.json")}
    return manifest, files


def _kill_while_writing_shards(scheduler: str, worker: str, proc: subprocess.Popen, client_proc) -> str:
    """SIGKILL ``proc`` (the worker named ``worker``) as soon as the scheduler has a shard task on it;
    returns that task's key."""
    from distributed import Client

    with Client(scheduler, timeout=60) as client:
        while client_proc.poll() is None:
            info = client.scheduler_info()["workers"]
            address = next((a for a, w in info.items() if worker in (w.get("name"), w.get("id"))), None)
            keys = [str(k) for k in client.processing().get(address, ())] if address else []
            shard_keys = [k for k in keys if k.startswith("shards-")]
            if shard_keys:
                proc.send_signal(signal.SIGKILL)
                return shard_keys[0]
            time.sleep(0.01)
    raise AssertionError("the run ended before a shard task reached the worker to kill:\n"
                         + client_proc.communicate()[0])


@pytest.mark.timeout(900)
def test_two_workers_one_killed_write_on_s3_what_one_process_writes(tmp_path):
    with moto_server() as endpoint:
        env = {**os.environ, **s3_environment(endpoint), "PYTHONPATH": str(ROOT)}
        fs = s3fs.S3FileSystem(skip_instance_cache=True, endpoint_url=endpoint, key="test", secret="test")
        bucket = "tcpc-cluster"
        fs.mkdir(bucket)
        write_archive(tmp_path / "arch", n_cases=3, shape=(32, 64, 64))
        fs.put(str(tmp_path / "arch"), f"{bucket}/arch", recursive=True)

        port = free_port()
        scheduler = f"tcp://127.0.0.1:{port}"
        procs = {"scheduler": _start([*DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                      "--dashboard-address", "127.0.0.1:0"], tmp_path / "scheduler", env)}
        try:
            wait_for_port(port, procs["scheduler"], "the dask scheduler")
            for name in ("w0", "w1"):  # no nanny: a killed worker stays dead, as a lost host would
                procs[name] = _start([*DASK, "worker", scheduler, "--name", name, "--nthreads", "1", "--no-nanny",
                                      "--host", "127.0.0.1", "--local-directory", str(tmp_path / name)],
                                     tmp_path / name, env)
            from distributed import Client
            with Client(scheduler, timeout=60) as client:
                client.wait_for_workers(2, timeout=120)
            procs["client"] = _start([sys.executable, "-c", "from cli import main; main()", "preprocess",
                                      f"s3://{bucket}/arch", "--out", f"s3://{bucket}/run", "--scheduler", scheduler,
                                      *ARGS], tmp_path / "client", {**env, "PYTHONPATH": str(ROOT)})
            killed = _kill_while_writing_shards(scheduler, "w0", procs["w0"], procs["client"])
            output, _ = procs["client"].communicate(timeout=600)
            assert procs["w0"].wait(timeout=30) == -signal.SIGKILL
            assert procs["client"].returncode == 0, f"killed during {killed}\n{output}"
            assert "shards: 3 done" in output and "shards: dask dashboard at http://" in output, output
        finally:
            for proc in procs.values():
                _stop(proc)

        # One process alone, from the same sources, to another prefix of the same server.
        ref = subprocess.run([sys.executable, "-c", "from cli import main; main()", "preprocess",
                              f"s3://{bucket}/arch", "--out", f"s3://{bucket}/ref", "--workers", "1", *ARGS],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert ref.returncode == 0, ref.stdout + ref.stderr
        got, want = _shard_set(fs, f"{bucket}/run/shards"), _shard_set(fs, f"{bucket}/ref/shards")
        assert got == want and got[0]["totals"]["cases"] == 3
        # Nothing went to a local disk: no 's3:' folder in any process's directory, no leftovers in a TMPDIR.
        assert not [p for p in tmp_path.rglob("s3:*")]
        assert not [p for d in ("client", "w1") for p in (tmp_path / d / "tmp").rglob("tcpc-*")]
