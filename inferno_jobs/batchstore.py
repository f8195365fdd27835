"""The Redis batch store: batch records, their requests, per-line results and chunk bookkeeping.

A batch is a few keys, not one job record per line (docs/batches.md):

- ``batch:<id>`` a hash: ``meta`` (JSON, never changes), ``status``, ``completed``, ``failed``, ``chunks``, times,
  and ``run:<chunk>`` (when it started) for each chunk running now;
- ``batch:<id>:items`` item index -> ``{"l": line, "c": custom_id, "i": input or null}``;
- ``batch:<id>:results`` item index -> ``S<result JSON>`` or ``F<error JSON>``: the JSON is spliced into the
  results file as it is, never parsed again;
- ``batch:<id>:chunks`` chunk index -> the item indexes one engine call runs; ``batch:<id>:done`` finished chunks.

A chunk's results, the counters, the chunk's "done" mark and, for the last chunk, the final status and its webhook
event are written by one Lua script: a chunk delivered twice (at-least-once) writes nothing the second time, and
results are ``HSETNX`` so a line is never counted twice. Results are encoded with ``orjson``
(inferno_jobs/codec.py): for embeddings, JSON float formatting would otherwise cost more than the model call.
"""

from __future__ import annotations

import json
from typing import Callable, Iterator

import redis

from inferno_jobs.batch import BATCH_EVENT_FOR_STATUS, Batch, BatchStatus, check_transition
from inferno_jobs import paging
from inferno_jobs.batchfile import Line
from inferno_jobs.codec import dumps, loads
from inferno_jobs.config import Settings
from inferno_jobs.errors import BatchNotFound, Conflict
from inferno_jobs.job import new_id, now
from inferno_jobs.keyspace import Keyspace
from inferno_jobs.webhooks import queue_body

# Mark a chunk started (its "run:<index>" field: when); moves the batch to running. 0: do not run it (done
# already, or the batch ended: a message of a chunk that was running comes back only once its worker is gone, so
# its mark goes).
_START = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'validating' or status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[2])
elseif status ~= 'running' then
  redis.call('HDEL', KEYS[1], 'run:' .. ARGV[1])
  return 0
end
redis.call('HSET', KEYS[1], 'run:' .. ARGV[1], ARGV[2])
return 1
"""

# Store one chunk's outcomes once; the last chunk ends the batch (completed if any line succeeded) and queues
# its webhook event. KEYS: batch, results, done, outbox, live, items, chunks.
# ARGV: chunk, now, retention_s, completed event, failed event, batch id, n, then n x (item, S|F + JSON,
# input tokens, output tokens): a line's tokens count in the batch's usage once, with its first stored result.
_FINISH = """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local ok, bad, input_tokens, output_tokens = 0, 0, 0, 0
local n = tonumber(ARGV[7])
for i = 0, n - 1 do
  local base = 8 + i * 4
  if redis.call('HSETNX', KEYS[2], ARGV[base], ARGV[base + 1]) == 1 then
    if string.sub(ARGV[base + 1], 1, 1) == 'S' then ok = ok + 1 else bad = bad + 1 end
    input_tokens = input_tokens + tonumber(ARGV[base + 2])
    output_tokens = output_tokens + tonumber(ARGV[base + 3])
  end
end
if ok > 0 then redis.call('HINCRBY', KEYS[1], 'completed', ok) end
if bad > 0 then redis.call('HINCRBY', KEYS[1], 'failed', bad) end
if input_tokens > 0 then redis.call('HINCRBY', KEYS[1], 'input_tokens', input_tokens) end
if output_tokens > 0 then redis.call('HINCRBY', KEYS[1], 'output_tokens', output_tokens) end
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[1], 'run:' .. ARGV[1])
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'canceled' or status == 'expired' then
  redis.call('HSET', KEYS[1], 'settled_at', ARGV[2])
  return 1
end
if redis.call('SCARD', KEYS[3]) < tonumber(redis.call('HGET', KEYS[1], 'chunks')) then return 1 end
if status ~= 'validating' and status ~= 'queued' and status ~= 'running' then return 1 end
local final, event = 'failed', ARGV[5]
if tonumber(redis.call('HGET', KEYS[1], 'completed')) > 0 then final, event = 'completed', ARGV[4] end
redis.call('HSET', KEYS[1], 'status', final, 'finished_at', ARGV[2])
if event ~= '' then redis.call('LPUSH', KEYS[4], event) end
redis.call('ZREM', KEYS[5], ARGV[6])
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[3], KEYS[6], KEYS[7]}) do redis.call('EXPIRE', key, ARGV[3]) end
return 2
"""


_CANCELED = {"code": "CANCELED", "message": "the batch was canceled before this line ran"}
_EXPIRED = {"code": "BATCH_EXPIRED", "message": "the batch's completion window ended before this line ran"}
# What a line that never ran reports, by the batch's end.
_NEVER_RAN = {BatchStatus.CANCELED: ("canceled", _CANCELED), BatchStatus.EXPIRED: ("expired", _EXPIRED)}


def _tokens(result) -> tuple[int, int]:
    """A line result's ``(input, output)`` tokens, from its ``usage`` (a predict result has none: 0, 0)."""
    usage = result.get("usage") if isinstance(result, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class BatchStore:
    """Creates, reads and advances batches in Redis."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.settings = settings
        self.keys = Keyspace(settings.key_prefix)
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)

    def _batch_keys(self, batch_id: str) -> list[str]:
        k = self.keys
        return [k.batch(batch_id), k.batch_items(batch_id), k.batch_results(batch_id), k.batch_chunks(batch_id),
                k.batch_done(batch_id)]

    def _event(self, batch: Batch, status: BatchStatus) -> str:
        """The outbox event of ``batch`` ending ``status`` ("" when its webhook did not ask for it)."""
        event = BATCH_EVENT_FOR_STATUS[status]
        if not batch.webhook or event not in (batch.webhook.get("events") or [event]):
            return ""
        return json.dumps({"id": new_id("msg"), "type": event, "batch_id": batch.id, "timestamp": now()})

    def _queue_event(self, pipe, batch: Batch, status: BatchStatus) -> None:
        """Queue on ``pipe`` the outbox event of ``batch`` (already moved to ``status``) with its body, the batch as
        it is now: its retries and replays send that, even once a chunk still running stores more results.

        The last chunk's event (``_FINISH``) is pushed by a script and has no body here: it is fixed at its first
        attempt (:class:`inferno_jobs.delivery.Deliverer`), and nothing moves a batch that every chunk finished."""
        event = self._event(batch, status)
        if event:
            queue_body(pipe, self.keys, batch.id, json.loads(event), batch.to_api(), self.settings.batch_retention_s)
            pipe.lpush(self.keys.outbox(), event)

    # -- reading ---------------------------------------------------------------------------------------------

    def get(self, batch_id: str, tenant: str | None = None) -> Batch:
        """The batch ``batch_id``; another tenant's batch raises :class:`BatchNotFound` as if it did not exist."""
        raw = self.redis.hgetall(self.keys.batch(batch_id)) if isinstance(batch_id, str) else None
        if not raw:
            raise BatchNotFound(f"batch {batch_id} not found")
        batch = Batch.from_hash(batch_id, raw)
        if tenant is not None and batch.tenant != tenant:
            raise BatchNotFound(f"batch {batch_id} not found")
        return batch

    def list(self, tenant: str, *, status: str | None = None, limit: int = 20,
             cursor: str | None = None) -> tuple[list[Batch], str | None]:
        """A tenant's batches, newest first; returns a page and the next page's cursor (or None)."""
        def load(ids: list[str]) -> list[Batch | None]:
            with self.redis.pipeline(transaction=False) as pipe:
                for batch_id in ids:
                    pipe.hgetall(self.keys.batch(batch_id))
                return [Batch.from_hash(i, raw) if raw else None for i, raw in zip(ids, pipe.execute())]

        page, more = paging.newest_first(self.redis, self.keys.tenant_batches(tenant), limit=limit, cursor=cursor,
                                         load=load, keep=lambda b: not status or b.status.value == status)
        return page, (page[-1].id if more and page else None)

    def chunk(self, batch_id: str, index: int) -> list[tuple[int, dict]]:
        """``[(item, input)]`` of one chunk."""
        raw = self.redis.hget(self.keys.batch_chunks(batch_id), index)
        if raw is None:
            return []
        items = json.loads(raw)
        raws = self.redis.hmget(self.keys.batch_items(batch_id), items) if items else []
        return [(item, loads(r)["i"]) for item, r in zip(items, raws) if r is not None]

    def lines(self, batch: Batch, *, only_failed: bool = False, with_input: bool = False, page: int = 1000,
              ) -> Iterator[dict]:
        """The results, one per request in input order: ``{custom_id, line, status, result | error}``, and its
        ``input`` with ``with_input``.

        Lines not run yet are ``pending``; in a canceled (expired) batch, lines that never ran are ``canceled``
        (``expired``).
        """
        for start in range(0, batch.total, page):
            items = list(range(start, min(batch.total, start + page)))
            metas = self.redis.hmget(self.keys.batch_items(batch.id), items)
            outcomes = self.redis.hmget(self.keys.batch_results(batch.id), items)
            for meta, outcome in zip(metas, outcomes):
                if meta is None:  # the batch left retention while being read
                    return
                meta = loads(meta)
                line = {"custom_id": meta["c"], "line": meta["l"]}
                if with_input:
                    line["input"] = meta["i"]
                if outcome is not None:
                    line["status"] = "succeeded" if outcome[:1] == b"S" else "failed"
                    line["result" if outcome[:1] == b"S" else "error"] = loads(outcome[1:])
                elif batch.status in _NEVER_RAN:
                    line["status"], line["error"] = _NEVER_RAN[batch.status]
                else:
                    line["status"] = "pending"
                if only_failed and line["status"] != "failed":
                    continue
                yield line

    def jsonl(self, batch: Batch, *, only_failed: bool = False, page: int = 1000) -> Iterator[bytes]:
        """:meth:`lines` as JSONL bytes; stored results are spliced in without being parsed again."""
        for start in range(0, batch.total, page):
            items = list(range(start, min(batch.total, start + page)))
            metas = self.redis.hmget(self.keys.batch_items(batch.id), items)
            outcomes = self.redis.hmget(self.keys.batch_results(batch.id), items)
            out, gone = [], False
            for meta, outcome in zip(metas, outcomes):
                if meta is None:  # the batch left retention while being read
                    gone = True
                    break
                meta = loads(meta)
                head = {"custom_id": meta["c"], "line": meta["l"]}
                if outcome is not None:
                    ok = outcome[:1] == b"S"
                    if only_failed and ok:
                        continue
                    head["status"] = "succeeded" if ok else "failed"
                    out.append(dumps(head)[:-1] + (b',"result":' if ok else b',"error":') + outcome[1:] + b"}\n")
                    continue
                if only_failed:
                    continue
                if batch.status in _NEVER_RAN:
                    head["status"], head["error"] = _NEVER_RAN[batch.status]
                else:
                    head["status"] = "pending"
                out.append(dumps(head) + b"\n")
            yield b"".join(out)
            if gone:
                return

    def failed_requests(self, batch: Batch) -> tuple[list[Line], int]:
        """The failed lines that can run again (as :class:`Line` with their input) and how many failed
        validation (those would fail the same way, so a retry leaves them out)."""
        retry, invalid = [], 0
        for start in range(0, batch.total, 1000):
            items = list(range(start, min(batch.total, start + 1000)))
            metas = self.redis.hmget(self.keys.batch_items(batch.id), items)
            outcomes = self.redis.hmget(self.keys.batch_results(batch.id), items)
            for meta, outcome in zip(metas, outcomes):
                if meta is None or outcome is None or outcome[:1] != b"F":
                    continue
                meta = loads(meta)
                if meta["i"] is None:
                    invalid += 1
                else:
                    retry.append(Line(meta["l"], meta["c"], input=meta["i"]))
        return retry, invalid

    # -- writing ---------------------------------------------------------------------------------------------

    def create(self, batch: Batch, lines: list[Line], chunk_size: int) -> tuple[Batch, list[int]]:
        """Store a new batch with its requests and chunks; returns it and the chunk indexes to enqueue.

        Invalid lines are stored failed at once. A batch with no valid line is stored ``failed`` (and its
        ``batch.failed`` event queued); otherwise it is ``validating`` until :meth:`mark_queued`.
        """
        chunk_size = max(1, chunk_size)
        valid = [i for i, line in enumerate(lines) if line.ok]
        chunks = [valid[i:i + chunk_size] for i in range(0, len(valid), chunk_size)]
        batch.total, batch.failed, batch.chunks = len(lines), len(lines) - len(valid), len(chunks)
        t = now()
        if not chunks:
            batch.status, batch.finished_at = BatchStatus.FAILED, t
            batch.errors = [{"code": "INVALID_REQUEST", "message": "no line of the batch is valid", "line": None}]
        k = self.keys
        live_s = self.settings.max_ttl_s + self.settings.batch_retention_s
        expiry = self.settings.batch_retention_s if batch.status.terminal else live_s
        with self.redis.pipeline() as pipe:
            if batch.retry_of:
                self._claim_retry(pipe, batch)
            pipe.hset(k.batch(batch.id), mapping={
                "meta": batch.meta_json(), "status": batch.status.value, "completed": 0, "failed": batch.failed,
                "chunks": len(chunks), "started_at": "", "finished_at": batch.finished_at or "",
                "errors": json.dumps(batch.errors)})
            for start in range(0, len(lines), 5000):
                part = lines[start:start + 5000]
                pipe.hset(k.batch_items(batch.id), mapping={
                    start + i: dumps({"l": l.line, "c": l.custom_id, "i": l.input}) for i, l in enumerate(part)})
            failed = {i: b"F" + dumps(l.error) for i, l in enumerate(lines) if not l.ok}
            if failed:
                pipe.hset(k.batch_results(batch.id), mapping=failed)
            if chunks:
                pipe.hset(k.batch_chunks(batch.id), mapping={i: json.dumps(c) for i, c in enumerate(chunks)})
                pipe.zadd(k.live_batches(), {batch.id: batch.created_at})
                if batch.expires_at is not None:
                    pipe.zadd(k.batch_deadlines(), {batch.id: batch.expires_at})
            else:
                self._queue_event(pipe, batch, BatchStatus.FAILED)
            pipe.zadd(k.tenant_batches(batch.tenant), {batch.id: 0})
            for key in self._batch_keys(batch.id):
                pipe.expire(key, expiry)
            try:
                pipe.execute()
            except redis.WatchError:  # the parent changed since it was read: look again
                return self.create(batch, lines, chunk_size)
        return batch, list(range(len(chunks)))

    def _claim_retry(self, pipe, batch: Batch) -> None:
        """Start ``pipe``'s transaction with the parent batch's ``retried_as`` set to ``batch``, so that a batch is
        retried once: a second retry (two clicks, two clients) would run the same failed lines again beside the
        first. :class:`Conflict` naming the first retry when there is one."""
        parent = self.keys.batch(batch.retry_of)
        pipe.watch(parent)
        earlier = pipe.hget(parent, "retried_as")
        if earlier:
            earlier = earlier.decode() if isinstance(earlier, bytes) else earlier
            raise Conflict(f"batch {batch.retry_of} was already retried as {earlier}; retry that batch instead",
                           details={"retried_as": earlier})
        pipe.multi()
        pipe.hset(parent, "retried_as", batch.id)

    def discard(self, batch: Batch) -> None:
        """Remove a batch that was never accepted (its chunks could not be enqueued)."""
        with self.redis.pipeline() as pipe:
            pipe.delete(*self._batch_keys(batch.id))
            if batch.retry_of:  # its parent may be retried again
                pipe.hdel(self.keys.batch(batch.retry_of), "retried_as")
            pipe.zrem(self.keys.tenant_batches(batch.tenant), batch.id)
            pipe.zrem(self.keys.live_batches(), batch.id)
            pipe.zrem(self.keys.batch_deadlines(), batch.id)
            pipe.execute()

    def _mutate(self, batch_id: str, change: Callable[[Batch], BatchStatus | None], tenant: str | None = None,
                ) -> Batch:
        """Apply a status move decided by ``change`` under WATCH/MULTI (None: nothing to write)."""
        key = self.keys.batch(batch_id)
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    raw = pipe.hgetall(key)
                    if not raw:
                        raise BatchNotFound(f"batch {batch_id} not found")
                    batch = Batch.from_hash(batch_id, raw)
                    if tenant is not None and batch.tenant != tenant:
                        raise BatchNotFound(f"batch {batch_id} not found")
                    to = change(batch)
                    if to is None:
                        pipe.unwatch()
                        return batch
                    check_transition(batch_id, batch.status, to)
                    batch.status = to
                    pipe.multi()
                    pipe.hset(key, "status", to.value)
                    if to.terminal:
                        batch.finished_at = now()
                        pipe.hset(key, "finished_at", batch.finished_at)
                        pipe.zrem(self.keys.live_batches(), batch_id)
                        pipe.zrem(self.keys.batch_deadlines(), batch_id)
                        self._queue_event(pipe, batch, to)
                        for k in self._batch_keys(batch_id):
                            pipe.expire(k, self.settings.batch_retention_s)
                    pipe.execute()
                    return batch
                except redis.WatchError:
                    continue

    def mark_queued(self, batch_id: str) -> Batch:
        """``validating -> queued`` once every chunk is enqueued (a worker may already have made it running)."""
        return self._mutate(batch_id, lambda b: BatchStatus.QUEUED if b.status is BatchStatus.VALIDATING else None)

    def cancel(self, batch_id: str, tenant: str | None = None) -> Batch:
        """Cancel a batch: chunks not started never run; finished results stay. 409 if it already ended."""
        def change(batch: Batch):
            if batch.status.terminal:
                raise Conflict(f"batch {batch_id} is already {batch.status.value}",
                               details={"status": batch.status.value})
            return BatchStatus.CANCELED
        return self._mutate(batch_id, change, tenant)

    def expire_due(self) -> list[str]:
        """Expire the live batches whose ``completion_window`` has ended; returns their ids. Called by the reconciler.

        Chunks not started never run; a chunk running at that moment still stores its results.
        """
        expired = []
        for batch_id in [_text(i) for i in self.redis.zrangebyscore(self.keys.batch_deadlines(), "-inf", now())]:
            try:
                batch = self._mutate(batch_id, lambda b: None if b.status.terminal else BatchStatus.EXPIRED)
            except BatchNotFound:
                batch = None
            self.redis.zrem(self.keys.batch_deadlines(), batch_id)  # ended either way
            if batch is not None and batch.status is BatchStatus.EXPIRED:
                expired.append(batch_id)
        return expired

    def start_chunk(self, batch_id: str, index: int) -> bool:
        """Whether chunk ``index`` should run now (False: it is done already or the batch ended)."""
        k = self.keys
        return bool(self._start(keys=[k.batch(batch_id), k.batch_done(batch_id)], args=[index, now()]))

    def finish_chunk(self, batch_id: str, index: int, outcomes: list[tuple[int, dict | None, dict | None]]) -> int:
        """Store chunk ``index``'s outcomes ``[(item, result, error)]`` once.

        Returns 0 if the chunk was stored before (a redelivery), 1 if stored, 2 if it also ended the batch,
        -1 if the batch is gone.
        """
        batch = self.get(batch_id)
        k = self.keys
        args: list = [index, now(), self.settings.batch_retention_s, self._event(batch, BatchStatus.COMPLETED),
                      self._event(batch, BatchStatus.FAILED), batch_id, len(outcomes)]
        for item, result, error in outcomes:
            if error is None:
                args += [item, b"S" + dumps(result), *_tokens(result)]
            else:
                args += [item, b"F" + dumps(error), 0, 0]
        keys = [k.batch(batch_id), k.batch_results(batch_id), k.batch_done(batch_id), k.outbox(),
                k.live_batches(), k.batch_items(batch_id), k.batch_chunks(batch_id)]
        return int(self._finish(keys=keys, args=args))

    def fail_chunk(self, batch_id: str, index: int, error: dict) -> int:
        """Store every line of chunk ``index`` as failed with ``error`` (its engine call was never made)."""
        return self.finish_chunk(batch_id, index, [(item, None, error) for item, _ in self.chunk(batch_id, index)])

    def sweep(self) -> int:
        """Fail batches left ``validating`` past ``batch_validating_timeout_s`` (the API that took them died
        before enqueuing); returns how many. Called by the reconciler."""
        cutoff = now() - self.settings.batch_validating_timeout_s
        swept = 0
        for batch_id in [_text(i) for i in self.redis.zrangebyscore(self.keys.live_batches(), "-inf", cutoff)]:
            try:
                batch = self.get(batch_id)
            except BatchNotFound:
                self.redis.zrem(self.keys.live_batches(), batch_id)
                continue
            if batch.status is not BatchStatus.VALIDATING:
                continue
            error = {"code": "INTERNAL_ERROR", "message": "the batch was never queued (its API process stopped)"}
            for index in range(batch.chunks):
                self.fail_chunk(batch_id, index, error)
            swept += 1
        return swept


    def stale_chunks(self, older_than_s: float) -> list[tuple[Batch, int]]:
        """Chunks to send again: unfinished chunks of queued or running batches that were created (or last
        re-sent) more than ``older_than_s`` ago. A chunk message can be lost when a worker dies between taking
        it from Redis and recording it; a repeated chunk is harmless (``start_chunk`` skips a stored one).

        Marks each such batch re-sent now, so the next pass waits ``older_than_s`` again.
        """
        t = now()
        out: list[tuple[Batch, int]] = []
        for batch_id in [_text(i) for i in self.redis.zrangebyscore(self.keys.live_batches(), "-inf",
                                                                      t - older_than_s)]:
            try:
                batch = self.get(batch_id)
            except BatchNotFound:
                continue
            if batch.status not in (BatchStatus.QUEUED, BatchStatus.RUNNING):
                continue
            resent_at = float(_text(self.redis.hget(self.keys.batch(batch_id), "resent_at") or b"0") or 0)
            if t - resent_at < older_than_s:
                continue
            done = {int(_text(i)) for i in self.redis.smembers(self.keys.batch_done(batch_id))}
            out += [(batch, index) for index in range(batch.chunks) if index not in done]
            self.redis.hset(self.keys.batch(batch_id), "resent_at", t)
        return out


def batch_target(settings: Settings, client: redis.Redis):
    """The webhook target of a batch event (see :class:`inferno_jobs.delivery.Deliverer`)."""
    from inferno_jobs.delivery import Target

    store = BatchStore(client, settings)

    def load(batch_id: str):
        try:
            batch = store.get(batch_id)
        except BatchNotFound:
            return None
        if not batch.webhook or not batch.webhook.get("url"):
            return None
        return Target(batch.tenant, batch.webhook["url"], batch.to_api(), settings.batch_retention_s)
    return load


__all__ = ["BatchStore", "batch_target"]
