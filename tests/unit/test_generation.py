"""The generation runner on the real tiny-gpt demo model (trained once per test session; needs torch to build)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import onnxruntime as ort
import pytest

from inferno_jobs.errors import ContextLengthExceeded, InvalidRequest
from inferno_jobs.model import ModelConfig
from workers.generation import GenerationRunner
from workers.tokenizer import render_chat

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the model hub, even by accident

PROMPT = "Once upon a time"
CHAT = [{"role": "user", "content": "Tell me the fable of The Lion and the Mouse."}]


def make_runner(path, **options) -> GenerationRunner:
    config = ModelConfig.load(path)
    config = dataclasses.replace(config, options={**config.options, **options})
    return GenerationRunner(config, ["CPUExecutionProvider"], ort.SessionOptions())


@pytest.fixture(scope="module")
def runner(tinygpt_dir):
    return make_runner(tinygpt_dir)


@pytest.fixture(scope="module")
def no_cache(tinygpt_dir):
    return make_runner(tinygpt_dir, use_cache=False)


def complete(runner, **params) -> dict:
    return runner.generate({"prompt": PROMPT, **params})


def test_completion_result_shape(runner):
    result = complete(runner, max_tokens=8, temperature=0)
    assert set(result) == {"text", "finish_reason", "usage"}
    assert isinstance(result["text"], str) and result["text"]
    usage = result["usage"]
    assert usage["prompt_tokens"] == len(runner.tokenizer.encode(PROMPT).ids)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_same_seed_same_text_and_different_seeds_differ(runner):
    params = {"max_tokens": 24, "temperature": 1.0, "top_p": 0.95}
    first, again = complete(runner, seed=7, **params), complete(runner, seed=7, **params)
    assert first["text"] == again["text"]
    others = {complete(runner, seed=seed, **params)["text"] for seed in (8, 9, 10)}
    assert others - {first["text"]}


def test_top_k_one_equals_greedy(runner):
    greedy = complete(runner, max_tokens=24, temperature=0)
    assert complete(runner, max_tokens=24, temperature=1.3, top_k=1, seed=11)["text"] == greedy["text"]


def test_max_tokens_is_respected(runner):
    result = complete(runner, max_tokens=12, temperature=0)
    assert result["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 12


def test_stop_sequence_trims_the_output(runner):
    greedy = complete(runner, max_tokens=32, temperature=0)["text"]
    stop = greedy[10:14]  # a piece from the middle of what the model says anyway
    result = complete(runner, max_tokens=32, temperature=0, stop=[stop, "never-said"])
    assert result["finish_reason"] == "stop"
    assert result["text"] == greedy[:greedy.index(stop)]
    assert stop not in result["text"]


def test_kv_cache_and_full_recompute_give_the_same_greedy_text(runner, no_cache):
    assert no_cache.use_cache is False and runner.use_cache is True
    for item in ({"prompt": PROMPT}, {"prompt": "The fox"}, {"messages": CHAT}):
        params = {**item, "max_tokens": 48, "temperature": 0}
        assert runner.generate(params) == no_cache.generate(params)


def test_too_long_prompt_fails_alone(runner):
    long_prompt = "the lion and the mouse " * 200
    with pytest.raises(ContextLengthExceeded):
        runner.generate({"prompt": long_prompt})
    good, bad = runner.run_batch([{"prompt": PROMPT, "max_tokens": 4}, {"prompt": long_prompt}])
    assert good["usage"]["completion_tokens"] <= 4
    assert isinstance(bad, ContextLengthExceeded) and bad.code == "CONTEXT_LENGTH_EXCEEDED"
    assert bad.details["field"] == "prompt"  # OpenAI's param on /v1 ("messages" for a chat)


def test_generation_stops_at_the_context_length(runner):
    ids = runner.tokenizer.encode("the lion and the mouse " * 200).ids[:runner.context_length - 3]
    prompt = runner.tokenizer.decode(ids)
    result = runner.generate({"prompt": prompt, "max_tokens": 100, "temperature": 0, "repetition_penalty": 1.3})
    assert result["usage"]["total_tokens"] <= runner.context_length


def test_chat(runner):
    result = runner.generate({"messages": CHAT, "max_tokens": 40, "temperature": 0})
    assert result["message"]["role"] == "assistant"
    assert isinstance(result["message"]["content"], str) and result["message"]["content"]
    assert result["finish_reason"] in {"stop", "length"}
    prompt = render_chat(CHAT, None)
    assert prompt == "<|user|>\nTell me the fable of The Lion and the Mouse.\n<|assistant|>\n"
    assert render_chat(CHAT, runner.chat_template) == prompt  # the demo's template is the default format
    assert result["usage"]["prompt_tokens"] == len(runner.tokenizer.encode(prompt).ids)


@pytest.mark.parametrize("params", [{"temperature": 0}, {"seed": 3, "temperature": 0.9},
                                    {"temperature": 0, "stop": ["the", "mouse"]}])
def test_on_token_pieces_concatenate_to_the_text(runner, params):
    pieces = []
    result = runner.generate({"prompt": PROMPT, "max_tokens": 30, **params},
                             on_token=lambda piece, index: pieces.append((index, piece)))
    assert [i for i, _ in pieces] == list(range(len(pieces)))
    assert "".join(p for _, p in pieces) == result["text"]
    assert len(pieces) >= 3


def test_should_stop_cancels(runner):
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) > 3

    result = runner.generate({"prompt": PROMPT, "max_tokens": 50, "temperature": 0}, should_stop=should_stop)
    assert result["finish_reason"] == "canceled"
    assert result["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("bad", [{"prompt": 3}, {"prompt": PROMPT, "max_tokens": 0},
                                 {"prompt": PROMPT, "temperature": 3}, {"prompt": PROMPT, "stop": [""]},
                                 {"messages": []}, {"messages": [{"role": "robot", "content": "hi"}]},
                                 {"nothing": True}])
def test_invalid_input_fails_alone(runner, bad):
    good, error = runner.run_batch([{"prompt": PROMPT, "max_tokens": 3}, bad])
    assert good["usage"]["completion_tokens"] <= 3
    assert isinstance(error, InvalidRequest)


def test_chat_template_kwargs_reach_the_template_or_are_refused():
    from inferno_jobs.errors import InvalidRequest

    template = "{% if shout %}LOUD {% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"
    assert render_chat(CHAT, template, {"shout": True}).startswith("LOUD ")
    assert not render_chat(CHAT, template, {}).startswith("LOUD ")
    for template_, kwargs, words in [(template, {"enable_thinking": False}, "does not use enable_thinking"),
                                     (None, {"shout": True}, "no chat template"),
                                     (template, {"add_generation_prompt": False}, "cannot be set")]:
        with pytest.raises(InvalidRequest, match=words) as refused:
            render_chat(CHAT, template_, kwargs)
        assert refused.value.details["field"] == "chat_template_kwargs"


def test_a_list_of_prompts_is_one_choice_each(runner):
    one = complete(runner, max_tokens=4, seed=1)
    (many,) = runner.run_batch([{"prompt": [PROMPT, PROMPT], "max_tokens": 4, "seed": 1}])
    assert [c["index"] for c in many["choices"]] == [0, 1]
    assert all(c["text"] == one["text"] for c in many["choices"])
    assert many["usage"]["total_tokens"] == 2 * one["usage"]["total_tokens"]


def test_the_demo_template_refuses_a_keyword_it_does_not_use(runner):
    (error,) = runner.run_batch([{"messages": CHAT, "chat_template_kwargs": {"enable_thinking": False}}])
    assert isinstance(error, InvalidRequest) and "does not use enable_thinking" in error.message


def test_n_choices_are_seeded_in_turn_and_reproducible(runner):
    params = {"prompt": PROMPT, "max_tokens": 12, "temperature": 1.0, "seed": 5}
    (three,) = runner.run_batch([{**params, "n": 3}])
    texts = [c["text"] for c in three["choices"]]
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    # choice j is what a single request with seed 5 + j gives, so the choices differ and repeat exactly
    assert texts == [complete(runner, **{**params, "seed": 5 + j})["text"] for j in range(3)]
    assert len(set(texts)) > 1
    assert runner.run_batch([{**params, "n": 3}]) == [three]
    one_prompt = len(runner.tokenizer.encode(PROMPT).ids)
    usage = three["usage"]
    assert usage["prompt_tokens"] == one_prompt  # the prompt counts once, as OpenAI counts it
    assert usage["completion_tokens"] == sum(complete(runner, **{**params, "seed": 5 + j})["usage"]
                                             ["completion_tokens"] for j in range(3))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_n_with_several_prompts_indexes_prompt_major(runner):
    (result,) = runner.run_batch([{"prompt": [PROMPT, "The fox"], "n": 2, "max_tokens": 4, "temperature": 0}])
    texts = [c["text"] for c in result["choices"]]
    assert [c["index"] for c in result["choices"]] == [0, 1, 2, 3]
    greedy = [complete(runner, max_tokens=4, temperature=0)["text"],
              runner.generate({"prompt": "The fox", "max_tokens": 4, "temperature": 0})["text"]]
    assert texts == [greedy[0], greedy[0], greedy[1], greedy[1]]  # greedy choices of one prompt are the same


def test_chat_n_choices_are_messages(runner):
    (result,) = runner.run_batch([{"messages": CHAT, "n": 2, "max_tokens": 6, "seed": 1, "temperature": 1.0}])
    assert [c["index"] for c in result["choices"]] == [0, 1]
    for j, choice in enumerate(result["choices"]):
        alone = runner.generate({"messages": CHAT, "max_tokens": 6, "seed": 1 + j, "temperature": 1.0})
        assert choice["message"] == alone["message"] and choice["finish_reason"] == alone["finish_reason"]


@pytest.mark.parametrize("item, words", [
    ({"prompt": PROMPT, "n": 0}, "n must be an integer from 1"),
    ({"prompt": PROMPT, "n": True}, "n must be an integer from 1"),
    ({"prompt": PROMPT, "n": "2"}, "n must be an integer from 1"),
    ({"prompt": [PROMPT] * 16, "n": 9}, "n times the number of prompts"),
    ({"prompt": PROMPT, "n": 2, "stream": True}, "cannot stream"),
])
def test_a_bad_n_fails_its_own_job(runner, item, words):
    (error, fine) = runner.run_batch([item, {"prompt": PROMPT, "max_tokens": 2}])
    assert isinstance(error, InvalidRequest) and words in error.message and error.details["field"] == "n"
    assert fine["text"]


def test_a_job_without_max_tokens_gets_the_models_default(tinygpt_dir):
    short = make_runner(tinygpt_dir, default_max_tokens=3)
    result = short.generate({"prompt": PROMPT, "temperature": 0})
    assert result["usage"]["completion_tokens"] <= 3 and result["finish_reason"] in ("length", "stop")
    assert result["text"] == complete(short, max_tokens=3, temperature=0)["text"]


# -- logprobs ----------------------------------------------------------------------------------------------------

def _ids_of(runner, entries) -> list[int]:
    """The token ids of ``entries``, through their bytes (each token of a BPE vocabulary has its own)."""
    by_bytes = {}
    for i in range(runner.tokenizer.get_vocab_size()):
        raw = runner.token_bytes.of(i)[1]
        if raw is not None:
            by_bytes[raw] = i
    return [by_bytes[bytes(e["bytes"])] for e in entries]


def _reference_logprobs(no_cache, ids: list[int]) -> np.ndarray:
    """NumPy's log-softmax of the raw logits after ``ids``, from a full recompute (no KV cache)."""
    logits = no_cache._forward(ids, len(ids), None)[0].astype(np.float64)
    return logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())


def test_logprobs_are_the_log_softmax_of_the_raw_logits(runner, no_cache):
    # Penalties, temperature, top-k and top-p change the draw, not the numbers reported.
    params = {"max_tokens": 8, "temperature": 0.9, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.3,
              "presence_penalty": 0.5, "seed": 3}
    result = complete(runner, logprobs=True, top_logprobs=5, **params)
    entries = result["logprobs"]
    assert len(entries) == result["usage"]["completion_tokens"] == 8
    prompt = runner.tokenizer.encode(PROMPT).ids
    chosen = _ids_of(runner, entries)
    for step in range(4):
        reference = _reference_logprobs(no_cache, prompt + chosen[:step])
        entry = entries[step]
        assert entry["logprob"] == pytest.approx(reference[chosen[step]], abs=1e-4)
        top = entry["top_logprobs"]
        assert len(top) == 5
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert _ids_of(runner, top) == np.argsort(-reference, kind="stable")[:5].tolist()
        assert [t["logprob"] for t in top] == pytest.approx(np.sort(reference)[::-1][:5], abs=1e-4)
        assert all(set(t) == {"token", "logprob", "bytes"} for t in top)
    assert b"".join(bytes(e["bytes"]) for e in entries).decode() == result["text"]
    assert "".join(e["token"] for e in entries) == result["text"]


def test_greedy_picks_the_top_entry_at_every_step(runner):
    result = complete(runner, max_tokens=16, temperature=0, logprobs=True, top_logprobs=2)
    for entry in result["logprobs"]:
        best = entry["top_logprobs"][0]
        assert (best["token"], best["logprob"]) == (entry["token"], entry["logprob"])
        assert entry["logprob"] >= entry["top_logprobs"][1]["logprob"]


@pytest.mark.parametrize("item", [{"prompt": PROMPT}, {"messages": CHAT}])
def test_logprobs_change_no_text_and_cost_nothing_unless_asked(runner, monkeypatch, item):
    params = {**item, "max_tokens": 20, "temperature": 1.0, "top_p": 0.95, "seed": 7}
    with_logprobs = runner.generate({**params, "logprobs": True, "top_logprobs": 20})
    import workers.generation as generation

    def forbidden(*args, **kwargs):
        raise AssertionError("log probabilities computed without logprobs")
    monkeypatch.setattr(generation, "log_softmax", forbidden)
    without = runner.generate(params)
    assert "logprobs" not in without and without == {k: v for k, v in with_logprobs.items() if k != "logprobs"}
    assert all(len(e["top_logprobs"]) == 20 for e in with_logprobs["logprobs"])


def test_a_token_cut_by_a_stop_sequence_has_no_entry(runner):
    full = complete(runner, max_tokens=16, temperature=0, logprobs=True)
    tokens = [e["token"] for e in full["logprobs"]]
    assert len(tokens[2]) > 2 and tokens[2][2:] + tokens[3] not in "".join(tokens[:3]), tokens
    # a stop sequence that starts inside token 2 (its first two characters stay in the text) ...
    inside = complete(runner, max_tokens=16, temperature=0, logprobs=True, stop=[tokens[2][2:] + tokens[3]])
    assert inside["text"] == "".join(tokens[:2]) + tokens[2][:2] and inside["finish_reason"] == "stop"
    assert inside["logprobs"] == full["logprobs"][:2]  # ... leaves token 2 out: its end is not in the text
    # ... one that starts at a token's first character leaves the entries of exactly the returned text
    between = complete(runner, max_tokens=16, temperature=0, logprobs=True, stop=[tokens[3]])
    assert between["text"] == "".join(tokens[:3]) and between["logprobs"] == full["logprobs"][:3]


@pytest.mark.parametrize("params", [{"temperature": 0}, {"temperature": 0, "stop": ["the", "mouse"]},
                                    {"seed": 3, "temperature": 0.9}])
def test_streamed_pieces_carry_the_entries_they_complete(runner, params):
    calls = []
    result = runner.generate({"prompt": PROMPT, "max_tokens": 30, "logprobs": True, "top_logprobs": 1, **params},
                             on_token=lambda piece, index, logprobs: calls.append((index, piece, logprobs)))
    assert [i for i, _, _ in calls] == list(range(len(calls)))
    assert "".join(piece for _, piece, _ in calls) == result["text"]
    assert [e for _, _, entries in calls for e in entries] == result["logprobs"]
    sent, done = "", b""
    for _, piece, entries in calls:
        sent += piece
        done += b"".join(bytes(e["bytes"]) for e in entries)
        assert sent.encode().startswith(done)  # a piece's entries end within the text sent so far


def test_each_of_n_choices_has_its_own_logprobs(runner):
    params = {"prompt": PROMPT, "max_tokens": 8, "temperature": 1.0, "seed": 5, "logprobs": True,
              "top_logprobs": 2}
    (two,) = runner.run_batch([{**params, "n": 2}])
    for j, choice in enumerate(two["choices"]):
        alone = complete(runner, **{**params, "prompt": PROMPT, "seed": 5 + j})
        assert choice["logprobs"] == alone["logprobs"] and choice["text"] == alone["text"]
    assert two["choices"][0]["logprobs"] != two["choices"][1]["logprobs"]


@pytest.mark.parametrize("bad, field", [({"top_logprobs": 2}, "top_logprobs"),
                                        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                                        ({"logprobs": True, "top_logprobs": True}, "top_logprobs"),
                                        ({"logprobs": "yes"}, "logprobs")])
def test_bad_logprobs_fail_their_own_job(runner, bad, field):
    error, fine = runner.run_batch([{"prompt": PROMPT, **bad}, {"prompt": PROMPT, "max_tokens": 2}])
    assert isinstance(error, InvalidRequest) and error.details["field"] == field
    assert fine["text"]


def test_token_bytes_of_partial_characters_and_special_tokens(runner):
    text = "Héllo — wörld 日本"
    ids = runner.tokenizer.encode(text).ids
    pieces = [runner.token_bytes.of(i) for i in ids]
    assert b"".join(raw for _, raw in pieces).decode() == text  # the bytes of the pieces join into the text
    partial = [token for token, raw in pieces if len(raw) == 1 and raw[0] >= 0x80]
    assert partial and all(token.startswith("bytes:\\x") for token in partial)  # OpenAI's spelling
    assert runner.token_bytes.of(runner.eos_id) == ("<|endoftext|>", None)  # decoding leaves it out of the text
    assert runner.token_bytes.of(runner.tokenizer.token_to_id("Ġupon")) == (" upon", b" upon")


def test_the_soft_time_limit_ends_the_micro_batch_instead_of_failing_one_input(tinygpt_dir, monkeypatch):
    from billiard.exceptions import SoftTimeLimitExceeded

    timed = make_runner(tinygpt_dir)
    calls = []

    def out_of_time(*args, **kwargs):
        calls.append(1)
        raise SoftTimeLimitExceeded()
    monkeypatch.setattr(timed, "_forward", out_of_time)
    with pytest.raises(SoftTimeLimitExceeded):
        timed.run_batch([{"prompt": PROMPT}, {"prompt": PROMPT}])
    assert calls == [1]  # the second input never started


def test_chat_templates_take_loop_controls_as_transformers_reads_them():
    from workers.tokenizer import render_chat

    template = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}"
    assert render_chat([{"role": "user", "content": "one"}, {"role": "user", "content": "two"}], template) == "one"
