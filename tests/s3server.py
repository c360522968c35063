"""A local S3-compatible server (moto's server mode) on 127.0.0.1, for the object-storage and cluster tests.

Endpoint and credentials reach s3fs through the standard AWS environment variables, as they would
for a user; :func:`s3_environment` gives them.
"""
from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from typing import Iterator


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    """Return once something accepts connections on ``port``; RuntimeError when ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start on port {port}") from None
            time.sleep(0.2)


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Run moto's S3 server on a free port of 127.0.0.1; yields its endpoint URL, stops it after."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, "the local S3 server (moto)")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def s3_environment(endpoint: str) -> dict[str, str]:
    """The standard AWS variables that point every s3:// URL at ``endpoint``."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1"}
