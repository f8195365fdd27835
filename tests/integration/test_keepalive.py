"""The API's gunicorn worker (api/keepalive.py) on a real socket: ``inferno-jobs api`` with one process of two
threads, so that a thread kept by a quiet connection would show as a request left waiting."""

from __future__ import annotations

import dataclasses
import socket
import time

import pytest

from tests.integration.live_server import GunicornServer

pytestmark = pytest.mark.integration

HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def api_server(live_settings, live_redis):
    """Start ``inferno-jobs api --workers 1 --threads 2`` with a given ``--keep-alive``."""
    started = []

    def start(keepalive_s: int, **settings) -> GunicornServer:
        server = GunicornServer(dataclasses.replace(live_settings, **settings), threads=2,
                                extra_env={"GUNICORN_CMD_ARGS": f"--keep-alive {keepalive_s}"})
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def _read_response(sock: socket.socket, buffered: bytearray | None = None) -> bytes:
    """One HTTP response (headers and a Content-Length body) from ``sock``; bytes past it stay in ``buffered``."""
    buffered = bytearray() if buffered is None else buffered
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        buffered += chunk
    head, _, _ = bytes(buffered).partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    end = len(head) + 4 + length
    while len(buffered) < end:
        buffered += sock.recv(65536)
    response = bytes(buffered[:end])
    del buffered[:end]
    return response


def _connect(server: GunicornServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(HEALTH)
    assert _read_response(sock).startswith(b"HTTP/1.1 200")
    return sock


def test_one_connection_serves_request_after_request_and_pipelined_ones(api_server):
    sock = _connect(api_server(30))
    for _ in range(50):
        sock.sendall(HEALTH)
        assert _read_response(sock).startswith(b"HTTP/1.1 200")
    sock.sendall(HEALTH * 3)  # three requests in one write: the second and third are read ahead with the first
    buffered = bytearray()
    assert [_read_response(sock, buffered)[:12] for _ in range(3)] == [b"HTTP/1.1 200"] * 3
    assert not buffered
    sock.close()


def test_quiet_connections_give_their_threads_to_waiting_ones(api_server):
    server = api_server(30)
    quiet = [_connect(server) for _ in range(4)]  # each answered once, then silent: more than the two threads
    began = time.monotonic()
    fresh = _connect(server)  # a thread kept by a quiet connection for its 30 s keep-alive would leave this waiting
    assert time.monotonic() - began < 10
    for sock in quiet + [fresh]:  # the quiet ones went back to the poller, still open
        sock.sendall(HEALTH)
        assert _read_response(sock).startswith(b"HTTP/1.1 200")
        sock.close()


def test_a_connection_quiet_for_the_keep_alive_timeout_is_closed(api_server):
    sock = _connect(api_server(1))
    sock.settimeout(15)
    assert sock.recv(1) == b""  # closed by the server, not left open
    sock.close()


def test_a_stopping_server_does_not_wait_out_quiet_connections(api_server):
    server = api_server(30)
    quiet = [_connect(server) for _ in range(2)]
    began = time.monotonic()
    server.process.terminate()
    server.process.wait(timeout=30)
    assert time.monotonic() - began < 12  # not the 20 s graceful timeout, nor the 30 s keep-alive
    for sock in quiet:
        sock.settimeout(5)
        assert sock.recv(1) == b""
        sock.close()


def test_clients_that_stall_in_their_body_free_the_threads_and_a_quiet_websocket_stays(api_server):
    server = api_server(30, api_client_stall_s=2)
    ws = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    ws.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert ws.recv(65536).startswith(b"HTTP/1.1 101")
    stalled = []
    for _ in range(2):  # as many as the threads: each sends a byte of a 1,000-byte body, then nothing
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")
        stalled.append(sock)
    time.sleep(0.5)
    began = time.monotonic()
    fresh = _connect(server)  # answered once a stalled client's 2 s are up, not never
    assert time.monotonic() - began < 10
    for sock in stalled:  # their connections were closed (after an error answer, or without one)
        data = sock.recv(65536)
        while data and not data.endswith(b"}") and b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        assert data == b"" or data.startswith(b"HTTP/1.1 4")
        sock.close()
    fresh.close()
    time.sleep(2.5)  # longer than the stall limit: a WebSocket is allowed to be quiet
    ws.sendall(bytes([0x81, 0x80 | 16]) + b"\x00" * 4 + b'{"type": "ping"}')  # a masked text frame
    assert b'"pong"' in ws.recv(65536)
    ws.close()
