"""What the numbers were measured on: cores, CPU model, memory, Python and the versions that matter."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

from inferno_jobs.redis_server import redis_binary


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> str:
    try:
        import psutil

        return f"{psutil.virtual_memory().total / 1024 ** 3:.1f} GiB"
    except ImportError:
        return "unknown"


def _redis_version() -> str:
    try:
        out = subprocess.run([redis_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip() or "unknown"


def describe() -> dict[str, str]:
    """The machine and software versions, as label -> value."""
    return {
        "cores": str(os.cpu_count()),
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min; other work on the machine)",
        "cpu": _cpu_model(),
        "memory": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "celery": _version("celery"),
        "kombu": _version("kombu"),
        "redis-py": _version("redis"),
        "redis-server": _redis_version(),
        "onnxruntime": _version("onnxruntime"),
        "gunicorn": _version("gunicorn"),
        "flask": _version("flask"),
    }
