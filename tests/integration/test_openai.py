"""The official ``openai`` client against a real HTTP server and a real worker: chat (plain and streaming),
completions, embeddings, models, and its typed errors."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from inferno_jobs.apikey import KeyRing
from tests.integration.live_server import LiveServer

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai", reason="the openai client is in the dev extra")


@pytest.fixture
def server(live_settings, live_redis):
    from api import create_app

    servers = []

    def start(**overrides):
        settings = dataclasses.replace(live_settings, **overrides)
        servers.append(LiveServer(create_app(settings, redis_client=live_redis)))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


def test_chat_completions_embeddings_and_models(server, start_worker, tinygpt_dir, minilm_dir):
    client = openai.OpenAI(base_url=server().url + "/v1", api_key="unused", max_retries=0, timeout=60)
    start_worker()
    assert {"tiny-gpt", "minilm", "iris"} <= {m.id for m in client.models.list()}
    assert client.models.retrieve("tiny-gpt").owned_by == "inferno-jobs"

    messages = [{"role": "user", "content": "Tell me a fable."}]
    chat = client.chat.completions.create(model="tiny-gpt", messages=messages, max_tokens=24, temperature=0.8,
                                          seed=11)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content and chat.choices[0].finish_reason in ("stop", "length")
    assert 0 < chat.usage.completion_tokens <= 24

    # Streaming: the same seed gives the same text, piece by piece.
    chunks = list(client.chat.completions.create(model="tiny-gpt", messages=messages, max_tokens=24,
                                                 temperature=0.8, seed=11, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == chat.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == chat.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens

    completion = client.completions.create(model="tiny-gpt", prompt="The fox", max_tokens=12, seed=3,
                                           temperature=0.5)
    assert completion.object == "text_completion" and completion.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny-gpt", prompt="The fox", max_tokens=12, seed=3, temperature=0.5, stream=True))
    assert streamed == completion.choices[0].text
    # A stream whose job fails before its first piece answers that error's status, as without stream.
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="tiny-gpt", prompt="the fox ran " * 200, max_tokens=4, stream=True)
    assert too_long.value.code == "context_length_exceeded" and too_long.value.param == "prompt"

    # n choices: choice j is what the same request with seed + j gives alone, so they differ and repeat
    many = client.chat.completions.create(model="tiny-gpt", messages=messages, max_tokens=24, temperature=0.8,
                                          seed=11, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert many.choices[0].message.content == chat.choices[0].message.content
    alone = client.chat.completions.create(model="tiny-gpt", messages=messages, max_tokens=24, temperature=0.8,
                                           seed=12)
    assert many.choices[1].message.content == alone.choices[0].message.content
    assert len({c.message.content for c in many.choices}) > 1
    assert many.usage.prompt_tokens == chat.usage.prompt_tokens
    assert many.usage.completion_tokens == sum(
        client.chat.completions.create(model="tiny-gpt", messages=messages, max_tokens=24, temperature=0.8,
                                       seed=11 + j).usage.completion_tokens for j in range(3))
    two = client.completions.create(model="tiny-gpt", prompt=["The fox", "The lion"], max_tokens=12, seed=3,
                                    temperature=0.5, n=2)
    assert [c.index for c in two.choices] == [0, 1, 2, 3] and two.choices[0].text == completion.choices[0].text

    # The client asks for base64 and decodes it: the vectors are the minilm ones.
    emb = client.embeddings.create(model="minilm", input=["A man is playing a guitar.", "Someone plays guitar.",
                                                          "The stock market fell today."])
    vectors = [np.asarray(d.embedding) for d in emb.data]
    assert len(vectors[0]) == 384 and np.allclose([np.linalg.norm(v) for v in vectors], 1, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    floats = client.embeddings.create(model="minilm", input="hello", encoding_format="float")
    assert len(floats.data[0].embedding) == 384 and emb.usage.prompt_tokens > 0


def test_the_client_raises_its_typed_errors(server, live_settings, live_redis):
    plain = openai.OpenAI(base_url=server(sync_wait_s=1).url + "/v1", api_key="unused", max_retries=2)
    messages = [{"role": "user", "content": "Hello"}]
    with pytest.raises(openai.BadRequestError) as bad:
        plain.chat.completions.create(model="tiny-gpt", messages=messages, temperature=3.0)
    assert "temperature must be between 0 and 2" in bad.value.message and bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError, match="input length must not exceed 8000"):
        plain.embeddings.create(model="minilm", input="a" * 8001)
    with pytest.raises(openai.NotFoundError) as missing:
        plain.chat.completions.create(model="unknown", messages=messages)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError, match="endpoint not found"):
        plain.get("/invalid", cast_to=object)

    # No worker: the synchronous wait ends in 504 with the job id, and the client does not retry it.
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as timeout:
        plain.chat.completions.create(model="tiny-gpt", messages=messages, max_tokens=4)
    assert timeout.value.status_code == 504 and "job_" in timeout.value.message
    assert time.monotonic() - started < 4  # one wait of 1 s, no retries

    settings = dataclasses.replace(live_settings, auth="required")
    key = KeyRing(live_redis, settings).create("sdk", limits={"rpm": 1})[0]
    url = server(auth="required").url + "/v1"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="ij_wrong", max_retries=0).models.list()
    keyed = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
    assert keyed.models.list().data
    with pytest.raises(openai.BadRequestError):  # counted by the rate limiter: 1 per minute
        keyed.chat.completions.create(model="tiny-gpt", messages=messages, top_p=1.5)
    with pytest.raises(openai.RateLimitError):
        keyed.chat.completions.create(model="tiny-gpt", messages=messages, top_p=1.5)


def test_the_client_sends_nulls_ignored_parameters_and_sampling_extensions(server, start_worker, tinygpt_dir):
    base = server().url
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
    start_worker()
    messages = [{"role": "user", "content": "Tell me a fable."}]
    chat = client.chat.completions.create(model="tiny-gpt", messages=messages, max_tokens=8, stream=None,
                                          temperature=None, store=True, metadata={"k": "v"}, user="u1",
                                          service_tier="auto", parallel_tool_calls=False)
    assert chat.object == "chat.completion" and chat.choices[0].message.content
    completion = client.completions.create(model="tiny-gpt", prompt="The fox", max_tokens=8, stream=None)
    assert completion.object == "text_completion"

    # shared/seeds/002's sampling parameters, as its extra_body example sends them; the same seed, the same text.
    extra = {"top_k": 50, "repetition_penalty": 1.0, "chat_template_kwargs": {}}
    sampled = [client.chat.completions.create(model="tiny-gpt", messages=messages, max_tokens=8, temperature=0.7,
                                              top_p=0.9, seed=5, extra_body=extra).choices[0].message.content
               for _ in range(2)]
    assert sampled[0] and sampled[0] == sampled[1]
    with pytest.raises(openai.BadRequestError) as unused:  # the demo template has no such variable
        client.chat.completions.create(model="tiny-gpt", messages=messages, max_tokens=8,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert "does not use enable_thinking" in unused.value.message

    # The seed's unversioned routes, with the same client.
    bare = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60)
    assert bare.chat.completions.create(model="tiny-gpt", messages=messages, max_tokens=4).choices[0].message.content


def test_files_list_order_and_expiry(server):
    client = openai.OpenAI(base_url=server().url + "/v1", api_key="unused", max_retries=0)
    ids = []
    for i in range(3):
        f = client.files.create(file=(f"f{i}.jsonl", b'{"prompt": "x"}\n'), purpose="batch",
                                expires_after={"anchor": "created_at", "seconds": 3600})
        assert f.expires_at - f.created_at == 3600
        ids.append(f.id)
    assert [f.id for f in client.files.list(order="asc") if f.id in ids] == ids
    assert [f.id for f in client.files.list(order="desc") if f.id in ids] == ids[::-1]
    with pytest.raises(openai.BadRequestError) as bogus:
        client.files.list(order="bogus")
    assert bogus.value.body["param"] == "order"


def test_logprobs_parse_into_the_clients_typed_objects(server, start_worker, tinygpt_dir):
    client = openai.OpenAI(base_url=server().url + "/v1", api_key="unused", max_retries=0, timeout=60)
    start_worker()
    messages = [{"role": "user", "content": "Tell me a fable."}]
    params = {"model": "tiny-gpt", "messages": messages, "max_tokens": 12, "temperature": 0.8, "seed": 11}
    chat = client.chat.completions.create(**params, logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and content[0].top_logprobs[0].token
    for entry in content:
        assert isinstance(entry.logprob, float) and entry.logprob <= 0 and len(entry.top_logprobs) == 3
        ranked = [alt.logprob for alt in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True) and entry.logprob <= ranked[0]
    assert bytes(b for e in content for b in e.bytes).decode() == chat.choices[0].message.content
    # asking for them changes no text; not asking answers null
    plain = client.chat.completions.create(**params)
    assert plain.choices[0].message.content == chat.choices[0].message.content
    assert plain.choices[0].logprobs is None

    # Streaming: each chunk carries the entries of its own delta.
    chunks = list(client.chat.completions.create(**params, logprobs=True, top_logprobs=1, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        plain.choices[0].message.content

    completion = client.completions.create(model="tiny-gpt", prompt="The fox", max_tokens=8, temperature=0,
                                           logprobs=2)
    legacy, text = completion.choices[0].logprobs, completion.choices[0].text
    assert len(legacy.tokens) == len(legacy.token_logprobs) == completion.usage.completion_tokens
    for token, logprob, top, offset in zip(legacy.tokens, legacy.token_logprobs, legacy.top_logprobs,
                                           legacy.text_offset):
        assert top[token] == logprob and max(top.values()) == logprob  # greedy: the chosen token is the top one
        assert 2 <= len(top) <= 3
        # each token is at its offset in the text; a special one (a chat tag) is listed where decoding left it out
        assert text.startswith(token, offset - len("The fox")) or token in ("<|system|>", "<|user|>", "<|assistant|>")
