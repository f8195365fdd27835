"""The model repository: ``MODEL_DIR/<name>/`` holds ``model.onnx`` and ``config.json``.

``config.json`` describes what the model serves, on which pool it runs and how to batch it::

    {"type": "predict", "device": "cpu", "max_batch_size": 64, "max_batch_wait_ms": 5,
     "task": "classification", "n_features": 4, "input_name": "float_input",
     "labels": ["setosa", "versicolor", "virginica"]}

``type`` is one job type (``predict``, ``embedding``, ``completion``); a ``completion`` model also serves
``chat`` jobs. Reading the repository needs no ONNX Runtime, so the API can validate against it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from inferno_jobs.errors import InvalidRequest, ModelNotFound
from inferno_jobs.job import JobType

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# Which job types a model of each configured type serves.
SERVES = {
    "predict": {JobType.PREDICT, JobType.FEATURE_IMPORTANCE},
    "embedding": {JobType.EMBEDDING},
    "completion": {JobType.COMPLETION, JobType.CHAT},
}


@dataclass(frozen=True)
class ModelConfig:
    """One model of the repository, as its ``config.json`` describes it."""

    name: str
    path: Path
    type: str
    device: str = "cpu"
    max_batch_size: int = 32
    max_batch_wait_ms: int = 5
    options: dict = field(default_factory=dict)

    @property
    def onnx_path(self) -> Path:
        """The ONNX file the workers load."""
        return self.path / self.options.get("file", "model.onnx")

    @property
    def pool(self) -> str:
        """The worker pool that runs this model: ``gpu`` for GPU models, ``cpu`` otherwise."""
        return "gpu" if self.device in {"gpu", "cuda"} else "cpu"

    @property
    def job_types(self) -> set[JobType]:
        """The job types this model serves."""
        return SERVES.get(self.type, set())

    @property
    def size_bytes(self) -> int:
        """Bytes on disk of the model directory."""
        return sum(size for _, size, _ in _stamps(self.path, ""))

    @property
    def version(self) -> str:
        """Changes whenever a file of the model changes: the names, sizes and modification times of every file in
        its directory (the ONNX file, its tokenizer, config.json). The result cache keys on it and a worker process
        loads a model again when it moves."""
        return hashlib.sha256(json.dumps(sorted(_stamps(self.path, ""))).encode()).hexdigest()[:16]

    def describe(self) -> dict:
        """The model as ``GET /models`` lists it (``loaded`` is filled in by the caller)."""
        return {
            "id": self.name,
            "type": self.type,
            "device": self.device,
            "size_bytes": self.size_bytes,
            "max_batch_size": self.max_batch_size,
            "capabilities": sorted(t.value for t in self.job_types),
        }

    def check_serves(self, job_type: JobType) -> None:
        """Raise :class:`InvalidRequest` unless this model serves ``job_type``."""
        if job_type not in self.job_types:
            raise InvalidRequest(
                f"model {self.name!r} is {'an' if self.type[:1] in 'aeiou' else 'a'} {self.type} model and does not "
                f"serve {job_type.value} jobs",
                details={"field": "type", "serves": sorted(t.value for t in self.job_types)})

    @classmethod
    def load(cls, path: Path) -> "ModelConfig":
        """Read ``path/config.json``; raises :class:`ModelNotFound` naming the problem when it cannot be used (not
        JSON, not an object, no ``type``, a value out of its range: :func:`check_config`)."""
        try:
            raw = json.loads((path / "config.json").read_text())
            check_config(raw)
            known = {"type", "device", "max_batch_size", "max_batch_wait_ms"}
            return cls(name=path.name, path=path, type=raw["type"], device=raw.get("device", "cpu"),
                       max_batch_size=int(raw.get("max_batch_size", 32)),
                       max_batch_wait_ms=int(raw.get("max_batch_wait_ms", 5)),
                       options={k: v for k, v in raw.items() if k not in known})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelNotFound(f"model {path.name!r} cannot be used: its config.json is broken "
                                f"({exc.__class__.__name__}: {str(exc)[:200]})", details={"field": "model"}) from None


DEVICES = ("cpu", "gpu", "cuda")
TEMPLATE_EXTENSION = "jinja2.ext.loopcontrols"  # chat templates are read with it (workers/tokenizer.py)
_POSITIVE = ("max_batch_size", "n_features", "context_length", "max_tokens", "default_max_tokens", "dim",
             "num_layers", "num_heads", "head_dim", "hidden_size", "vocab_size", "max_input_chars", "max_input_items")
_CHOICES = {"pooling": ("mean", "cls"), "task": ("classification", "regression")}


def check_config(raw: dict) -> None:
    """Raise ``ValueError`` naming the first value of a ``config.json`` that no worker could serve: an unknown
    ``type``, ``device``, ``pooling`` or ``task``, a size that is not a whole number >= 1, a ``file`` outside the
    model's directory, a ``chat_template`` that is not valid Jinja. So a broken model is refused where it is read,
    not by a job that fails blaming its input."""
    if raw.get("type") not in SERVES:
        raise ValueError(f"type must be one of {', '.join(SERVES)}, not {raw.get('type')!r}")
    if raw.get("device", "cpu") not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {raw.get('device')!r}")
    for name in _POSITIVE:
        value = raw.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a whole number >= 1, not {value!r}")
    wait = raw.get("max_batch_wait_ms", 0)
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
        raise ValueError(f"max_batch_wait_ms must be a number >= 0, not {wait!r}")
    for name, choices in _CHOICES.items():
        if raw.get(name) is not None and raw[name] not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, not {raw[name]!r}")
    file = raw.get("file", "model.onnx")
    if not isinstance(file, str) or Path(file).is_absolute() or ".." in Path(file).parts:
        raise ValueError(f"file must be a path inside the model's directory, not {file!r}")
    if raw.get("chat_template") is not None:
        import jinja2  # Flask's dependency; the worker renders with a sandbox of the same syntax

        try:
            jinja2.Environment(extensions=[TEMPLATE_EXTENSION]).parse(raw["chat_template"])
        except (jinja2.TemplateSyntaxError, TypeError) as exc:
            raise ValueError(f"chat_template is not a valid Jinja template: {exc}") from None


def _stamps(directory: Path, prefix: str) -> list[tuple[str, int, int]]:
    """``(relative name, size, mtime_ns)`` of every file under ``directory`` (one ``stat`` a file)."""
    out = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):  # a linked file counts; a linked folder could loop
                out += _stamps(Path(entry.path), f"{prefix}{entry.name}/")
            elif entry.is_file():
                stat = entry.stat()
                out.append((prefix + entry.name, stat.st_size, stat.st_mtime_ns))
    return out


class ModelRepository:
    """The models under one directory. New and changed models appear without a restart: each lookup checks the
    config file's modification time and re-reads it only when it changed (one ``stat`` per submit, not a parse)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._cache: dict[str, tuple[int, ModelConfig, str]] = {}  # name -> (mtime, config, config file)
        self._reported: set[tuple[str, str]] = set()  # broken configs already logged: (name, problem)

    def get(self, name: str) -> ModelConfig:
        """The model called ``name``; raises :class:`ModelNotFound`."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ModelNotFound(f"model {name!r} not found")
        cached = self._cache.get(name)
        try:
            mtime = os.stat(cached[2] if cached else os.path.join(self.root, name, "config.json")).st_mtime_ns
        except OSError:
            self._cache.pop(name, None)
            raise ModelNotFound(f"model {name!r} not found", details={"available": self.names()}) from None
        if cached is None or cached[0] != mtime:
            path = self.root / name
            cached = (mtime, ModelConfig.load(path), str(path / "config.json"))
            self._cache[name] = cached
        return cached[1]

    def names(self) -> list[str]:
        """The names of every model in the repository."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "config.json").is_file())

    def all(self) -> list[ModelConfig]:
        """Every usable model in the repository: one with a broken config.json is left out (and logged), so the
        others are still listed; asking for it by name says what is wrong with it."""
        out = []
        for name in self.names():
            try:
                out.append(self.get(name))
            except ModelNotFound as exc:
                if (name, exc.message) not in self._reported:  # once per problem, not once per listing
                    self._reported.add((name, exc.message))
                    # Named in the message too: the CLI's plain log lines show no extras.
                    log.warning("model %s left out of the listing: %s", name, exc.message,
                                extra={"model": name, "error": exc.message})
        return out
