"""Property-based fuzzing of the API from its own /openapi.json (schemathesis): whatever the generated
request, valid (positive mode) or not (negative mode), the answer is never a 5xx.

In-process over WSGI against a real Redis and a real Celery producer (no worker: accepted jobs just wait).
Every operation of the document gets its own Hypothesis run; the test fails if fewer than 1,000 requests
were made in all, so a document that loses operations cannot pass quietly.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

pytestmark = pytest.mark.integration

MIN_REQUESTS = 1000
TARGET_REQUESTS = 1200  # spread over the operations; a few (GET /health) have nothing to vary


def test_no_generated_request_gets_a_server_error(live_app, live_settings, live_redis):
    # A live worker heartbeat, as the reconciler writes it: /ready answers 200 (its 503 means "no worker").
    live_redis.hset(f"{live_settings.key_prefix}:workers", "fuzz@test",
                    json.dumps({"hostname": "fuzz@test", "pool": "cpu", "queues": [], "last_seen": time.time() + 3600}))
    schema = schemathesis.openapi.from_wsgi("/openapi.json", live_app)
    results = list(schema.get_all_operations())
    problems = [str(r.err()) for r in results if not isinstance(r, Ok)]
    assert not problems, f"schemathesis could not use these parts of /openapi.json: {problems}"
    operations = [r.ok() for r in results]
    assert len(operations) >= 9, [op.label for op in operations]
    per_operation = max(20, math.ceil(TARGET_REQUESTS / len(operations)))
    calls: dict[str, int] = {}
    statuses: dict[int, int] = {}
    timing: dict[str, float] = {}
    for operation in operations:
        strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                             operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=strategy)
        @settings(max_examples=per_operation, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            calls[operation.label] = calls.get(operation.label, 0) + 1
            response = case.call_and_validate(checks=[not_a_server_error])
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        t0 = time.perf_counter()
        fuzz()
        timing[operation.label] = round(time.perf_counter() - t0, 1)
    total = sum(calls.values())
    print(f"\n{total} requests: {calls}\nstatuses: {dict(sorted(statuses.items()))}\nseconds: {timing}")
    assert total >= MIN_REQUESTS, calls
