"""Reading prompt files into batch requests, line by line.

Formats (docs/batches.md):

- JSONL, native lines: ``{"custom_id", "prompt" | "messages" | "input" | "features", ...params}``;
- JSONL, OpenAI batch lines: ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}}``
  (``/v1/completions`` and ``/v1/embeddings`` too); both kinds may be mixed in one file. A ``body`` is validated
  with its endpoint's own schema (:mod:`inferno_jobs.openai_request`), so it accepts exactly what the endpoint
  accepts;
- ``.txt``: one prompt per line;
- ``.csv``: a header row with a ``prompt`` (or ``text``) column, optionally ``custom_id`` (or ``id``); for a
  ``predict`` batch every other column is a feature.

Every line (an OpenAI one once turned into a job input) is validated with the job input schemas
(:data:`inferno_jobs.schemas.INPUT_SCHEMAS`). A bad line (broken JSON, invalid UTF-8, no prompt, a bad parameter,
too long) becomes a :class:`Line` with an ``error`` and its line number; the others go on. Only file-wide problems
raise: over the size or line limits (:class:`PayloadTooLarge`), no requests at all, or a CSV without a prompt column
(:class:`InvalidRequest`).
Blank lines are skipped; line numbers are the file's physical lines, from 1. A physical line ends at ``\n``,
``\r\n`` or ``\r`` only, as the csv module and JSON have it: the other characters :meth:`str.splitlines` breaks
at (U+2028, U+0085, form feed...) are text inside a line.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from marshmallow import ValidationError

from inferno_jobs import codec
from inferno_jobs.config import Settings
from inferno_jobs.errors import InvalidRequest, PayloadTooLarge
from inferno_jobs.job import JobType
from inferno_jobs.model import ModelConfig
from inferno_jobs.openai_request import ENDPOINTS, REQUESTS, error_fields, job_input
from inferno_jobs.schemas import INPUT_SCHEMAS, GenerationParams, shared

FORMATS = ("jsonl", "txt", "csv")
MAX_CUSTOM_ID_CHARS = 256

# The top-level "custom_id" of a JSON line too long to parse, found in its first bytes when only plain members
# (strings, numbers, true/false/null) come before it, as OpenAI batch lines have custom_id, method and url before
# their body: the line's error then names the request its author gave it.
_JSON_STRING = rb'"(?:[^"\\]|\\.)*"'
_LEADING_CUSTOM_ID = re.compile(
    rb'\s*\{\s*(?:' + _JSON_STRING + rb'\s*:\s*(?:' + _JSON_STRING + rb'|[-+.\w]+)\s*,\s*)*'
    rb'"custom_id"\s*:\s*(' + _JSON_STRING + rb')')
_CUSTOM_ID_SEARCH_BYTES = 4096


def _leading_custom_id(raw: bytes) -> str | None:
    """The custom_id a long JSON line starts with, or None."""
    found = _LEADING_CUSTOM_ID.match(raw[:_CUSTOM_ID_SEARCH_BYTES])
    if found is None:
        return None
    try:
        value = codec.parse(found.group(1).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str) and 0 < len(value) <= MAX_CUSTOM_ID_CHARS else None

# OpenAI batch line ``url`` -> the job type it runs as.
OPENAI_ENDPOINTS = ENDPOINTS

# One physical line with its end: ``\r\n``, ``\r`` or ``\n``, where the csv module ends a line (never U+2028,
# U+0085, \f and the other breaks of str.splitlines), or the last line without one.
_PHYSICAL_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


@dataclass(frozen=True)
class Limits:
    """The file-wide limits, from settings."""

    max_file_bytes: int
    max_lines: int
    max_line_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        return cls(settings.batch_max_file_bytes, settings.batch_max_lines, settings.batch_max_line_bytes)


@dataclass
class Line:
    """One request of a batch: its input when valid, else its error (``{code, message}``)."""

    line: int
    custom_id: str
    input: dict | None = None
    error: dict | None = None
    model: str | None = None  # OpenAI lines name their model in the body

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ParsedFile:
    """The requests of a file, in file order."""

    format: str
    lines: list[Line] = field(default_factory=list)

    @property
    def valid(self) -> int:
        return sum(1 for line in self.lines if line.ok)

    @property
    def invalid(self) -> int:
        return len(self.lines) - self.valid

    def errors(self) -> list[dict]:
        """``[{line, custom_id, error}]`` of the invalid lines."""
        return [{"line": l.line, "custom_id": l.custom_id, "error": l.error} for l in self.lines if not l.ok]


class LineError(Exception):
    """Raised while reading one line; becomes that line's error, never the file's."""

    def __init__(self, message: str, code: str = "INVALID_REQUEST", field: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field  # the request field at fault, as the endpoint's own error names it (OpenAI's param)

    def to_dict(self) -> dict:
        """The line's stored error."""
        error = {"code": self.code, "message": self.message}
        if self.field:
            error["details"] = {"field": self.field}
        return error


def check_size(size: int, limits: Limits) -> None:
    """Raise :class:`PayloadTooLarge` for a file over ``max_file_bytes``."""
    if size > limits.max_file_bytes:
        raise PayloadTooLarge(f"the file is {size:,} bytes; the limit is {limits.max_file_bytes:,} bytes "
                              "(INFERNO_BATCH_MAX_FILE_BYTES)",
                              details={"bytes": size, "limit": limits.max_file_bytes})


def _check_count(count: int, limits: Limits) -> None:
    if count > limits.max_lines:
        raise PayloadTooLarge(f"the batch has {count:,} requests; the limit is {limits.max_lines:,} "
                              "(INFERNO_BATCH_MAX_LINES)", details={"lines": count, "limit": limits.max_lines})


# A CSV file's columns the reader knows, first match wins: a line's custom_id, and its text.
_ID_COLUMNS = ("custom_id", "id")
_TEXT_COLUMNS = ("prompt", "text", "input")


def _looks_like_csv(data: bytes) -> bool:
    """A header of two or more plain column names, one of them a column the CSV reader knows, and a next row of
    as many fields (so a text line such as ``prompt, please`` stays a prompt)."""
    text = data[:65536].decode("utf-8", "replace").lstrip("\ufeff")
    try:
        rows = csv.reader(line for line in text.splitlines(keepends=True) if line.strip())
        header, first = next(rows), next(rows, None)
    except (csv.Error, StopIteration):
        return False
    names = [h.strip().lower() for h in header]
    return (len(names) >= 2 and all(re.fullmatch(r"[a-z_][a-z0-9_ ]*", n) for n in names)
            and bool({*_ID_COLUMNS, *_TEXT_COLUMNS} & set(names)) and (first is None or len(first) == len(names)))


def detect_format(filename: str | None, data: bytes) -> str:
    """``jsonl``, ``txt`` or ``csv``: from the file name's extension, else from the content (JSON objects, a CSV
    header the reader knows, or else text)."""
    name = (filename or "").lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".txt"):
        return "txt"
    # bytes.splitlines breaks only at \n, \r and \r\n (unlike str.splitlines), as the readers below do.
    for raw in data[:65536].splitlines():
        if raw.strip():
            if raw.lstrip(b"\xef\xbb\xbf \t").startswith(b"{"):
                return "jsonl"
            return "csv" if _looks_like_csv(data) else "txt"
    return "txt"


def _schema_errors(messages: Any) -> str:
    """marshmallow's error dict as one readable sentence: ``temperature: Must be ... ; prompt: ...``."""
    if isinstance(messages, dict):
        parts = []
        for key, value in messages.items():
            text = _schema_errors(value)
            parts.append(text if key == "_schema" else f"{key}: {text}")
        return "; ".join(parts)
    if isinstance(messages, list):
        return " ".join(_schema_errors(m) for m in messages)
    return str(messages)


def _body_errors(messages: dict) -> str:
    """An OpenAI body's errors as one sentence, with OpenAI's wording for an unknown field."""
    parts = []
    for key, value in messages.items():
        text = _schema_errors(value)
        if text == "Unknown field.":
            parts.append(f"Unrecognized request argument supplied: {key}")
        else:
            parts.append(text if key == "_schema" or text.startswith(str(key)) else f"body.{key}: {text}")
    return "; ".join(parts)


class Reader:
    """Turns raw requests into validated :class:`Line` objects for one batch."""

    def __init__(self, job_type: JobType, *, model: ModelConfig | None = None, params: dict | None = None,
                 limits: Limits, endpoint: str | None = None):
        self.type = job_type
        self.model = model
        self.params = check_params(job_type, params or {})
        self.limits = limits
        self.endpoint = endpoint  # /v1/batches: every line must name this url
        self._seen: dict[str, int] = {}

    # -- one request ---------------------------------------------------------------------------------------

    def request(self, number: int, obj: Any, *, default_id: str | None = None) -> Line:
        """Validate one request object (a JSONL line, a ``requests`` item); never raises."""
        custom_id = default_id or f"line-{number}"
        model = None
        try:
            if not isinstance(obj, dict):
                raise LineError("the line must be a JSON object")
            obj = dict(obj)
            custom_id = self._custom_id(obj, number, default_id)
            if "body" in obj or "url" in obj or "method" in obj:
                model, data, job_type = self._openai(obj)
            else:
                if self.endpoint:
                    raise LineError("a /v1/batches line needs method, url and body")
                data, job_type = self._native(obj)
            self._validate(data, job_type)
            self._register(custom_id, number)
            return Line(number, custom_id, input=data, model=model)
        except LineError as exc:
            return Line(number, custom_id, error=exc.to_dict(), model=model)

    def _custom_id(self, obj: dict, number: int, default_id: str | None) -> str:
        value = obj.pop("custom_id", None)
        alias = obj.pop("id", None)
        value = alias if value is None else value
        if value is None:
            return default_id or f"line-{number}"
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise LineError("custom_id must be a string")
        value = str(value)
        if not value or len(value) > MAX_CUSTOM_ID_CHARS:
            raise LineError(f"custom_id must be 1 to {MAX_CUSTOM_ID_CHARS} characters")
        return value

    def _register(self, custom_id: str, number: int) -> None:
        first = self._seen.setdefault(custom_id, number)
        if first != number:
            raise LineError(f"duplicate custom_id {custom_id!r} (first used on line {first})")

    def _native(self, obj: dict) -> tuple[dict, JobType]:
        job_type = self.type
        text = None
        for key in ("prompt", "text"):
            if key in obj:
                text = obj.pop(key)
                break
        if job_type in (JobType.COMPLETION, JobType.CHAT):
            if "messages" in obj:
                job_type = JobType.CHAT
            elif text is not None:
                if job_type is JobType.CHAT:
                    if not isinstance(text, str):
                        raise LineError("prompt must be a string")
                    obj["messages"] = [{"role": "user", "content": text}]
                else:
                    obj["prompt"] = text
            else:
                raise LineError("the line has no prompt (or messages)")
        elif job_type is JobType.EMBEDDING:
            if "input" not in obj:
                if text is None:
                    raise LineError("the line has no input (or prompt)")
                obj["input"] = text
        elif job_type is JobType.PREDICT:
            if "features" not in obj:
                raise LineError("the line has no features")
            features = obj["features"]
            if isinstance(features, list) and features and not isinstance(features[0], list):
                obj["features"] = [features]  # one row
        return {**self.params, **obj}, job_type

    def _openai(self, obj: dict) -> tuple[str | None, dict, JobType]:
        method, url, body = obj.pop("method", None), obj.pop("url", None), obj.pop("body", None)
        if obj:
            raise LineError(f"unknown field(s) on an OpenAI batch line: {', '.join(sorted(obj))}")
        if method != "POST":
            raise LineError("method must be POST")
        if url not in OPENAI_ENDPOINTS:
            raise LineError(f"url must be one of {', '.join(OPENAI_ENDPOINTS)}")
        if self.endpoint and url != self.endpoint:
            raise LineError(f"url {url} is not this batch's endpoint {self.endpoint}")
        job_type = OPENAI_ENDPOINTS[url]
        if job_type not in _compatible(self.type):
            raise LineError(f"url {url} runs {job_type.value} requests; this is a {self.type.value} batch")
        if not isinstance(body, dict):
            raise LineError("body must be a JSON object")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise LineError("body.model must be a string")
        if model and self.model is not None and model != self.model.name:
            raise LineError(f"body.model {model!r} is not this batch's model {self.model.name!r}")
        try:
            # The endpoint's own schema; ``model`` may be left out (the batch names it).
            loaded = shared(REQUESTS[url]).load(body, partial=("model",))
        except ValidationError as exc:
            first = next((name for name, _ in error_fields(exc.messages)), None)
            raise LineError(_body_errors(exc.messages), field=first or None) from None
        if loaded.get("stream"):
            raise LineError("body.stream=true is not supported: a batch line's result is stored, not streamed")
        return model, {**self.params, **job_input(job_type, loaded)}, job_type

    def _validate(self, data: dict, job_type: JobType) -> None:
        try:
            loaded = shared(INPUT_SCHEMAS[job_type]).load(data)
        except ValidationError as exc:
            raise LineError(_schema_errors(exc.messages)) from None
        data.clear()
        data.update(loaded)  # as POST /jobs stores it: normalised, with the schema's defaults
        n_features = self.model.options.get("n_features") if self.model else None
        if n_features and job_type is JobType.PREDICT and len(loaded["features"][0]) != n_features:
            raise LineError(f"model {self.model.name!r} takes rows of {n_features} features, "
                            f"got {len(loaded['features'][0])}")

    # -- files ---------------------------------------------------------------------------------------------

    def file(self, data: bytes, filename: str | None = None, fmt: str | None = None) -> ParsedFile:
        """Read a whole file; raises only for file-wide problems."""
        check_size(len(data), self.limits)
        fmt = fmt or detect_format(filename, data)
        if fmt not in FORMATS:
            raise InvalidRequest(f"format must be one of {', '.join(FORMATS)}", details={"field": "format"})
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        parsed = ParsedFile(fmt, self._csv(data) if fmt == "csv" else list(self._lines(data, fmt)))
        if not parsed.lines:
            raise InvalidRequest("the file has no requests (every line is blank)")
        return parsed

    def requests(self, items: list) -> ParsedFile:
        """Read the ``requests`` list of a JSON body (``line`` is the 1-based position)."""
        _check_count(len(items), self.limits)
        if not items:
            raise InvalidRequest("requests must not be empty", details={"field": "requests"})
        return ParsedFile("json", [self.request(i, item) for i, item in enumerate(items, start=1)])

    def _lines(self, data: bytes, fmt: str) -> Iterable[Line]:
        raws = data.splitlines()  # bytes: breaks at \n, \r\n and \r only (module docstring)
        _check_count(sum(1 for raw in raws if raw.strip()), self.limits)
        for number, raw in enumerate(raws, start=1):
            if not raw.strip():
                continue
            if len(raw) > self.limits.max_line_bytes:
                yield Line(number, (fmt != "txt" and _leading_custom_id(raw)) or f"line-{number}", error={
                    "code": "PAYLOAD_TOO_LARGE",
                    "message": f"the line is {len(raw):,} bytes; the limit is {self.limits.max_line_bytes:,} "
                               "(INFERNO_BATCH_MAX_LINE_BYTES)"})
                continue
            try:
                text = raw.rstrip(b"\r").decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Line(number, f"line-{number}", error={
                    "code": "INVALID_REQUEST",
                    "message": f"the line is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start})"})
                continue
            if fmt == "txt":
                yield self.request(number, {"prompt": text})
                continue
            try:
                obj = codec.parse(text)
            except codec.UnstorableJSON as exc:
                yield Line(number, f"line-{number}", error={"code": "INVALID_REQUEST", "message": str(exc)})
                continue
            except ValueError as exc:
                yield Line(number, f"line-{number}", error={"code": "INVALID_REQUEST",
                                                            "message": f"the line is not valid JSON: {exc}"})
                continue
            yield self.request(number, obj)

    def _csv(self, data: bytes) -> list[Line]:
        text = data.decode("utf-8", errors="surrogateescape")
        physical = _PHYSICAL_LINE.findall(text)
        # No field can be longer than the file: the csv module's own cap (131,072 characters, process-wide) would
        # fail a long prompt as unreadable before the row's size is checked against max_line_bytes below.
        csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
        # strict: a stray quote (`"abc"def`) or a quote left open at the end of the file is an error, not text
        # silently changed or every later row swallowed into one field.
        reader = csv.reader(physical, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise InvalidRequest("the CSV file is empty") from None
        except csv.Error as exc:
            raise InvalidRequest(f"the CSV header cannot be read: {exc}") from None
        names = [h.strip().lstrip("\ufeff").lower() for h in header]
        id_col = next((names.index(n) for n in _ID_COLUMNS if n in names), None)
        text_col = next((names.index(n) for n in _TEXT_COLUMNS if n in names), None)
        if self.type is JobType.PREDICT:
            feature_cols = [i for i in range(len(names)) if i != id_col]
        elif text_col is None:
            raise InvalidRequest(f"the CSV file needs a prompt (or text) column; its columns are {', '.join(header)}")
        lines: list[Line] = []
        rows = 0
        offset = 0  # physical lines before the reader's first (a reader restarts after a quote left open)
        previous_end = reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                number = previous_end + 1
                message = f"the CSV row cannot be read: {exc}"
                if offset + reader.line_num >= len(physical) and offset + reader.line_num > number:
                    # A quote left open ran to the end of the file: this row fails, the lines after it are read
                    # again as rows of their own.
                    message += f" (a quote opened on line {number} is never closed)"
                    offset, reader = number, csv.reader(physical[number:], strict=True)
                    previous_end = number
                else:
                    previous_end = offset + reader.line_num
                lines.append(Line(number, f"line-{number}", error={"code": "INVALID_REQUEST", "message": message}))
                continue
            number, previous_end = previous_end + 1, offset + reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            rows += 1
            _check_count(rows, self.limits)
            record = "".join(physical[number - 1:previous_end])
            if len(record.encode("utf-8", errors="surrogateescape")) > self.limits.max_line_bytes:
                lines.append(Line(number, f"line-{number}", error={
                    "code": "PAYLOAD_TOO_LARGE",
                    "message": f"the row is longer than {self.limits.max_line_bytes:,} bytes "
                               "(INFERNO_BATCH_MAX_LINE_BYTES)"}))
                continue
            if any(_has_surrogates(cell) for cell in row):
                lines.append(Line(number, f"line-{number}", error={"code": "INVALID_REQUEST",
                                                                    "message": "the row is not valid UTF-8"}))
                continue
            if len(row) != len(names):
                lines.append(Line(number, f"line-{number}", error={
                    "code": "INVALID_REQUEST", "message": f"the row has {len(row)} columns; the header has {len(names)}"}))
                continue
            obj: dict = {}
            if id_col is not None and row[id_col].strip():
                obj["custom_id"] = row[id_col].strip()
            if self.type is JobType.PREDICT:
                try:
                    obj["features"] = [[float(row[i]) for i in feature_cols]]
                except ValueError:
                    lines.append(Line(number, obj.get("custom_id", f"line-{number}"), error={
                        "code": "INVALID_REQUEST", "message": "every feature column must be a number"}))
                    continue
            elif not row[text_col].strip():  # a cell left blank, not a prompt meant empty
                lines.append(Line(number, obj.get("custom_id", f"line-{number}"), error={
                    "code": "INVALID_REQUEST", "message": f"the {names[text_col]} cell is empty"}))
                continue
            else:
                obj["prompt"] = row[text_col]
            lines.append(self.request(number, obj))
        return lines


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _compatible(job_type: JobType) -> set[JobType]:
    if job_type in (JobType.COMPLETION, JobType.CHAT):
        return {JobType.COMPLETION, JobType.CHAT}
    return {job_type}


def check_params(job_type: JobType, params: dict) -> dict:
    """Validate batch-wide parameters once (a bad one is the request's error, not every line's)."""
    if not isinstance(params, dict):
        raise InvalidRequest("params must be a JSON object", details={"field": "params"})
    if not params:
        return {}
    if job_type not in (JobType.COMPLETION, JobType.CHAT):
        raise InvalidRequest(f"{job_type.value} batches take no params", details={"field": "params"})
    try:
        GenerationParams().load(params)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid params: {_schema_errors(exc.messages)}",
                             details={"params": exc.messages}) from None
    return dict(params)


def input_type(model: ModelConfig, requested: JobType | None) -> JobType:
    """The batch's job type: the one asked for (checked against the model), else the model's own."""
    if requested is not None:
        model.check_serves(requested)
        return requested
    return {"predict": JobType.PREDICT, "embedding": JobType.EMBEDDING}.get(model.type, JobType.COMPLETION)


def read_upload(stream: io.BufferedIOBase, limits: Limits) -> bytes:
    """Read an uploaded file, stopping with :class:`PayloadTooLarge` as soon as it passes the limit."""
    data = stream.read(limits.max_file_bytes + 1)
    check_size(len(data), limits)
    return data
