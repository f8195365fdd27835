"""Batch-file fuzzing: broken JSON, invalid UTF-8, very long lines, random bytes and a 100,000-line file give
per-line errors with their line numbers, never a crash, and every line is accounted for."""

from __future__ import annotations

import json
import random

import pytest

from inferno_jobs.batchfile import Limits, Reader
from inferno_jobs.errors import InfernoError
from inferno_jobs.job import JobType

BAD_LINES = [
    b'{"custom_id": "x", "prompt": ',                    # broken JSON
    b'{"prompt": "caf\xc3"}',                            # invalid UTF-8
    b'{"prompt": "' + b"a" * 300_000 + b'"}',            # a very long line
    b"\x00\x01\x02\xff\xfe",                             # binary garbage
    b'{"prompt": 42}',                                   # wrong type
    b'{"prompt": "x", "temperature": "hot"}',            # bad parameter
    b"[]",                                               # not an object
    b'{"messages": [{"role": "wizard", "content": 1}]}',  # bad chat message
    b'"just a string"',
    b'{"prompt": "x", "max_tokens": -5}',
]


def test_a_100k_line_file_of_good_and_bad_lines_is_read_line_by_line():
    rng = random.Random(7)
    lines, expected_bad = [], set()
    for number in range(1, 100_001):
        if rng.random() < 0.1:
            lines.append(rng.choice(BAD_LINES))
            expected_bad.add(number)
        else:
            lines.append(json.dumps({"custom_id": f"c{number}", "prompt": f"prompt {number}",
                                     "max_tokens": 4}).encode())
    data = b"\n".join(lines) + b"\n"
    limits = Limits(max_file_bytes=len(data) + 1, max_lines=100_000, max_line_bytes=64 * 1024)
    parsed = Reader(JobType.COMPLETION, limits=limits).file(data, "fuzz.jsonl")
    assert len(parsed.lines) == 100_000
    failed = {line.line for line in parsed.lines if line.error}
    assert failed == expected_bad
    assert all(line.error["message"] for line in parsed.lines if line.error)
    assert parsed.valid == 100_000 - len(expected_bad)


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_never_crash_the_reader(seed):
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20_000)))
    limits = Limits(max_file_bytes=1 << 20, max_lines=100_000, max_line_bytes=4096)
    for job_type in (JobType.COMPLETION, JobType.EMBEDDING, JobType.PREDICT):
        try:
            parsed = Reader(job_type, limits=limits).file(data, rng.choice(["f.jsonl", "f.txt", "f.csv", None]))
        except InfernoError as exc:  # a file-wide refusal (empty, no prompt column, ...) is a clear 4xx
            assert exc.status < 500 and exc.message
            continue
        assert all((line.error is None) != (line.input is None) for line in parsed.lines)
