"""Request bodies without ``Content-Length`` (``Transfer-Encoding: chunked``) are bounded like the others: over the
limit a 413 ``PAYLOAD_TOO_LARGE`` on every route that reads a body, never the first ``limit`` bytes parsed as
truncated JSON; exactly at the limit, read whole. (tests/integration/test_limits.py does it on real servers.)"""

import io
import json

import pytest
from werkzeug.exceptions import RequestEntityTooLarge

from api.body import BodyStream
from api.websocket import max_message_bytes, server_options
from inferno_jobs.config import Settings

LIMIT = 3000


def chunked(client, path, body: bytes, content_type="application/json"):
    """What a WSGI server hands over for a chunked body: a stream it ends itself, no CONTENT_LENGTH."""
    return client.post(path, input_stream=io.BytesIO(body), content_type=content_type,
                       headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})


def job_body(size: int) -> bytes:
    base = {"type": "predict", "model": "no-such-model", "input": {"features": [[1, 2, 3, 4]]},
            "metadata": {"pad": ""}}
    base["metadata"]["pad"] = "a" * (size - len(json.dumps(base)))
    body = json.dumps(base).encode()
    assert len(body) == size
    return body


@pytest.fixture
def small(make_app):
    return make_app(max_request_bytes=LIMIT, batch_max_file_bytes=1000).test_client()


@pytest.mark.parametrize("path", ["/jobs", "/inference", "/predict", "/v1/chat/completions", "/v1/embeddings",
                                  "/batches", "/auth/login"])
def test_a_chunked_json_body_over_the_limit_is_413(small, path):
    r = chunked(small, path, job_body(LIMIT + 2000))
    assert r.status_code == 413, r.get_data()
    error = r.get_json()["error"]
    assert error["code"] in ("PAYLOAD_TOO_LARGE", "payload_too_large")  # /v1: OpenAI's shape
    assert f"{LIMIT:,} bytes" in error["message"]


def test_a_chunked_body_of_exactly_the_limit_is_read_whole(small):
    r = chunked(small, "/jobs", job_body(LIMIT))
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "MODEL_NOT_FOUND"  # parsed: the model is wrong
    assert chunked(small, "/jobs", job_body(LIMIT + 1)).status_code == 413


def multipart(lines: int, boundary="xyz") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\n"
            "Content-Disposition: form-data; name=\"file\"; filename=\"p.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n" + '{"features": [1, 2, 3, 4]}\n' * lines
            + f"\r\n--{boundary}--\r\n").encode()


@pytest.mark.parametrize("path", ["/batches", "/v1/files"])
def test_a_chunked_upload_over_its_limit_is_413(small, path):
    # Uploads may be INFERNO_BATCH_MAX_FILE_BYTES + 1 MiB; this one is over that.
    r = chunked(small, path, multipart(60_000), "multipart/form-data; boundary=xyz")
    assert r.status_code == 413, r.get_data()
    assert r.get_json()["error"]["code"] in ("PAYLOAD_TOO_LARGE", "payload_too_large")


@pytest.mark.parametrize("size, too_large", [(10, False), (11, True)])
def test_a_body_stream_tells_exactly_the_limit_from_over_it(size, too_large):
    # read() in pieces until b"", as the multipart parser does, and readall(), as get_data() does.
    def read_pieces(stream):
        while stream.read(4):
            pass

    for read in (read_pieces, BodyStream.readall):
        stream = BodyStream(io.BytesIO(b"x" * size), 10, is_max=True)
        if too_large:
            with pytest.raises(RequestEntityTooLarge):
                read(stream)
        else:
            read(stream)


def test_content_length_bodies_are_unchanged(small):
    assert small.post("/jobs", data=job_body(LIMIT + 1), content_type="application/json").status_code == 413
    assert small.post("/jobs", data=job_body(LIMIT), content_type="application/json").status_code == 404


def test_websocket_messages_are_bounded_by_both_limits():
    assert max_message_bytes(Settings()) == 1024 * 1024
    assert max_message_bytes(Settings(max_request_bytes=4096)) == 4096
    assert server_options(Settings(ws_max_message_bytes=5000)) == {"max_message_size": 5000}


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip"])
def test_a_compressed_body_is_415_not_read_as_garbage(client, encoding):
    import gzip

    body = gzip.compress(b'{"type": "predict", "model": "iris", "input": {"features": [[1, 2, 3, 4]]}}')
    r = client.post("/jobs", data=body, headers={"Content-Encoding": encoding, "Content-Type": "application/json"})
    assert r.status_code == 415
    error = r.get_json()["error"]
    assert error["code"] == "INVALID_REQUEST" and "send the body uncompressed" in error["message"]
    plain = client.post("/jobs", json={"type": "predict", "model": "iris", "input": {"features": [[1, 2, 3, 4]]}},
                        headers={"Content-Encoding": "identity"})
    assert plain.status_code == 202
