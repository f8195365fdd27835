"""Response compression (seed 001: "GZip compression for responses over 1000 bytes"; seed 003: gzip, deflate,
brotli), with flask-compress.

A response is compressed when the client's ``Accept-Encoding`` allows it, it is 1,000 bytes or more, and it is
JSON or text. Streamed responses never are: an SSE stream (``text/event-stream``), a chunked JSONL download or a
WebSocket upgrade goes out exactly as the view yields it, so each event reaches the client at once instead of
waiting in a compressor's buffer.
"""

from __future__ import annotations

from flask import Flask
from flask_compress import Compress

MIN_SIZE_BYTES = 1000
# Preferred first when the client accepts several with the same weight. Brotli at level 4 and gzip at 6 (the
# library's defaults) cost about the same CPU on a JSON body; brotli makes it smaller.
ALGORITHMS = ["br", "gzip", "deflate"]


def init_app(app: Flask) -> None:
    """Compress large non-streamed responses; leave everything streamed alone."""
    app.config.setdefault("COMPRESS_MIN_SIZE", MIN_SIZE_BYTES)
    app.config.setdefault("COMPRESS_ALGORITHM", ALGORITHMS)
    # flask-compress would otherwise compress streamed responses chunk by chunk, holding back an SSE event until
    # its compressor flushes.
    app.config["COMPRESS_STREAMS"] = False
    Compress(app)
