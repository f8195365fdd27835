"""``inferno-jobs batch``: submit prompt files, follow them with a progress bar, read and cancel them."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from inferno_jobs.batch import BATCH_TERMINAL_VALUES, BatchStatus

TYPES = ["completion", "chat", "embedding", "predict"]


def _client():
    from inferno_jobs.cli import _client as client

    return client()


def _print(data) -> None:
    click.echo(json.dumps(data, indent=2))


def _print_ended(batch: dict) -> None:
    """Print a batch that a wait saw end; exit status 1 unless it completed."""
    _print(batch)
    if batch["status"] != BatchStatus.COMPLETED.value:
        sys.exit(1)


class Progress:
    """A live progress bar on stderr: lines done, failed, rate and ETA (tqdm; one summary line when not a tty)."""

    def __init__(self, total: int, stream=None):
        from tqdm import tqdm

        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.bar = tqdm(total=total, unit="line", file=self.stream, dynamic_ncols=True, disable=not self.tty,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}")
        self.started = time.monotonic()
        self.last_report = 0.0

    def update(self, batch: dict) -> None:
        counts = batch["request_counts"]
        done = counts["completed"] + counts["failed"]
        self.bar.set_postfix_str(f"failed={counts['failed']} {batch['status']}", refresh=False)
        self.bar.update(done - self.bar.n)
        now = time.monotonic()
        if not self.tty and (now - self.last_report > 5 or batch["status"] in BATCH_TERMINAL_VALUES):
            self.last_report = now
            elapsed = max(now - self.started, 1e-6)
            rate = done / elapsed
            left = counts["total"] - done
            eta = f"{left / rate:.0f} s" if rate > 0 and left else "-"
            click.echo(f"{batch['id']} {batch['status']}: {done}/{counts['total']} done, {counts['failed']} failed, "
                       f"{rate:.1f} lines/s, ETA {eta}", err=True)

    def close(self) -> None:
        self.bar.close()


def _write_results(client, batch_id: str, output: Path, errors_only: bool = False) -> int:
    """Write the batch's result lines to ``output``; returns how many. The lines go to a temporary file beside
    it, renamed over ``output`` only once they all arrived: an error leaves no file (and an existing one as it
    was)."""
    n = 0
    partial = output.with_name(f".{output.name}.part")
    try:
        f = open(partial, "w", encoding="utf-8")
    except OSError as exc:  # the error names the file asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(output)) from exc
    try:
        with f:
            for line in client.batch_results(batch_id, errors_only=errors_only):
                f.write(json.dumps(line, separators=(",", ":")) + "\n")
                n += 1
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return n


def follow(client, batch: dict, timeout_s: float | None = None) -> dict:
    """Wait for ``batch`` to end, showing progress."""
    progress = Progress(batch["request_counts"]["total"])
    try:
        return client.wait_batch(batch["id"], timeout_s=timeout_s, on_progress=progress.update)
    finally:
        progress.close()


@click.group()
def batch() -> None:
    """Batches of prompt files (JSONL, OpenAI batch JSONL, .txt, .csv)."""


@batch.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", required=True)
@click.option("--type", "job_type", type=click.Choice(TYPES), default=None, help="Default: what the model serves.")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default="normal", show_default=True)
@click.option("--params", default=None, help='Parameters for every line as JSON, e.g. \'{"max_tokens": 32}\'.')
@click.option("--webhook-url", default=None)
@click.option("--dry-run", is_flag=True, help="Validate every line and report; enqueue nothing.")
@click.option("--wait", is_flag=True,
              help="Follow the batch with a progress bar until it ends; exit status 1 unless it completed.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --wait: write the results (JSONL, input order) here.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
def batch_submit(file: Path, model: str, job_type: str | None, priority: str, params: str | None,
                 webhook_url: str | None, dry_run: bool, wait: bool, output: Path | None,
                 timeout: float | None) -> None:
    """Submit FILE as a batch and print it (the final batch with --wait)."""
    try:
        parsed_params = json.loads(params) if params else None
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--params") from None
    if output and not wait:
        raise click.UsageError("--output needs --wait")
    client = _client()
    created = client.submit_batch(str(file), model, type=job_type, priority=priority, params=parsed_params,
                                  webhook_url=webhook_url, dry_run=dry_run)
    if dry_run or not wait:
        _print(created)
        return
    final = follow(client, created, timeout)
    if output:
        n = _write_results(client, final["id"], output)
        click.echo(f"wrote {n} result lines to {output}", err=True)
    _print_ended(final)


@batch.command("status")
@click.argument("batch_id")
@click.option("--wait", is_flag=True,
              help="Follow it with a progress bar until it ends; exit status 1 unless it completed.")
def batch_status(batch_id: str, wait: bool) -> None:
    """Print a batch."""
    client = _client()
    found = client.get_batch(batch_id)
    if not wait:
        _print(found)
        return
    _print_ended(follow(client, found) if found["status"] not in BATCH_TERMINAL_VALUES else found)


@batch.command("results")
@click.argument("batch_id")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of stdout.")
@click.option("--errors", "errors_only", is_flag=True, help="Only the failed lines.")
def batch_results(batch_id: str, output: Path | None, errors_only: bool) -> None:
    """The batch's results as JSONL, one line per input line in input order."""
    client = _client()
    if output:
        n = _write_results(client, batch_id, output, errors_only)
        click.echo(f"wrote {n} result lines to {output}", err=True)
        return
    for line in client.batch_results(batch_id, errors_only=errors_only):
        click.echo(json.dumps(line, separators=(",", ":")))


@batch.command("cancel")
@click.argument("batch_id")
def batch_cancel(batch_id: str) -> None:
    """Cancel a batch (finished lines keep their results) and print it."""
    _print(_client().cancel_batch(batch_id))


@batch.command("retry")
@click.argument("batch_id")
def batch_retry(batch_id: str) -> None:
    """Submit a new batch of the failed lines of BATCH_ID and print it."""
    _print(_client().retry_batch(batch_id))


@batch.command("list")
@click.option("--status", default=None)
@click.option("--limit", default=20, show_default=True)
def batch_list(status: str | None, limit: int) -> None:
    """List your batches, newest first."""
    for item in _client().list_batches(status=status, limit=limit)["data"]:
        counts = item["request_counts"]
        click.echo(f"{item['id']}  {item['status']:10} {item['model']:12} "
                   f"{counts['completed']}+{counts['failed']}/{counts['total']}  {item['created_at']}")
