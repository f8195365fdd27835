"""A small asyncio HTTP/1.1 load client: C keep-alive connections, each sending its next request as soon as
the previous answer arrived (a closed loop), recording every latency.

Hand-written on raw streams on purpose: the client shares the machine's cores with the server, and a
requests/httpx client costs several times more CPU per request than the server work it measures.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    """What a load run saw: latencies in seconds, statuses, the parsed bodies it was asked to keep."""

    started: float  # time.time() when the first request went out
    elapsed_s: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    bodies: list[dict] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.latencies_s)

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.count / self.elapsed_s if self.elapsed_s else 0.0

    @classmethod
    def combined(cls, *runs: "LoadResult") -> "LoadResult":
        """Several runs as one: their requests together, their times added."""
        out = cls(started=runs[0].started, elapsed_s=sum(r.elapsed_s for r in runs))
        for run in runs:
            out.latencies_s += run.latencies_s
            out.bodies += run.bodies
            for status, n in run.statuses.items():
                out.statuses[status] = out.statuses.get(status, 0) + n
        return out

    def percentile(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the latencies, in milliseconds."""
        values = sorted(self.latencies_s)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))] * 1000


def _request(method: str, path: str, host: str, port: int, body: dict | None) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + payload


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("server closed the connection")
    status = int(status_line.split()[1])
    length, close = 0, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    body = await reader.readexactly(length) if length else b""
    return status, body, close


async def _load(host: str, port: int, path: str, body_for, total: int, concurrency: int, keep_bodies: bool,
                result: LoadResult) -> None:
    issued = 0

    async def connection() -> None:
        nonlocal issued
        reader = writer = None
        while issued < total:
            n = issued
            issued += 1
            request = _request("POST", path, host, port, body_for(n))
            for attempt in range(3):
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                t0 = time.perf_counter()
                try:
                    writer.write(request)
                    status, raw, close = await _read_response(reader)
                except (ConnectionError, asyncio.IncompleteReadError):
                    writer.close()
                    reader = writer = None
                    if attempt == 2:
                        raise
                    continue
                break
            result.latencies_s.append(time.perf_counter() - t0)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if keep_bodies:
                result.bodies.append(json.loads(raw))
            if close:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))


def post_many(port: int, path: str, body_for, total: int, concurrency: int = 32, keep_bodies: bool = False,
              host: str = "127.0.0.1") -> LoadResult:
    """POST ``body_for(i)`` for i in range(total) over ``concurrency`` keep-alive connections."""
    result = LoadResult(started=time.time(), elapsed_s=0.0)
    t0 = time.perf_counter()
    asyncio.run(_load(host, port, path, body_for, total, concurrency, keep_bodies, result))
    result.elapsed_s = time.perf_counter() - t0
    return result


def post_one(port: int, path: str, body: dict, host: str = "127.0.0.1") -> tuple[int, dict]:
    """One POST on a fresh connection; returns (status, JSON body)."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()
