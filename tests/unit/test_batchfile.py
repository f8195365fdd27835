"""Reading prompt files: every format, per-line errors with their line numbers, and the file-wide limits."""

from __future__ import annotations

import json

import pytest

from inferno_jobs.batchfile import Limits, Reader, detect_format
from inferno_jobs.errors import InvalidRequest, PayloadTooLarge
from inferno_jobs.job import JobType
from inferno_jobs.model import ModelRepository

LIMITS = Limits(max_file_bytes=1 << 20, max_lines=1000, max_line_bytes=4096)


def reader(job_type=JobType.COMPLETION, **kw):
    return Reader(job_type, limits=kw.pop("limits", LIMITS), **kw)


def jsonl(*objs) -> bytes:
    return "\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs).encode() + b"\n"


def by_line(parsed):
    return {l.line: l for l in parsed.lines}


def test_native_jsonl_lines_become_job_inputs_with_their_params():
    parsed = reader().file(jsonl({"custom_id": "a", "prompt": "Once upon", "max_tokens": 5, "temperature": 0.2},
                                 {"custom_id": "b", "messages": [{"role": "user", "content": "hi"}]}), "p.jsonl")
    assert parsed.format == "jsonl" and parsed.valid == 2 and parsed.invalid == 0
    a, b = parsed.lines
    assert (a.line, a.custom_id, a.input["prompt"], a.input["max_tokens"], a.input["temperature"]) == \
        (1, "a", "Once upon", 5, 0.2)
    assert b.input["messages"] == [{"role": "user", "content": "hi"}]  # messages in a completion batch: chat


def test_batch_params_apply_to_every_line_and_a_line_overrides_them():
    parsed = reader(params={"max_tokens": 7}).file(jsonl({"prompt": "x"}, {"prompt": "y", "max_tokens": 3}))
    assert [l.input["max_tokens"] for l in parsed.lines] == [7, 3]
    assert [l.custom_id for l in parsed.lines] == ["line-1", "line-2"]  # no custom_id: the line number


def test_a_line_with_an_integer_over_64_bits_fails_alone():
    data = b'{"prompt": "x", "metadata": {"n": 1' + b"0" * 30 + b'}}\n{"prompt": "y"}\n'
    lines = by_line(reader().file(data, "big.jsonl"))
    assert lines[2].ok and not lines[1].ok
    assert lines[1].error["code"] == "INVALID_REQUEST" and "64 bits" in lines[1].error["message"]


def test_bad_batch_params_are_the_requests_error_not_every_lines():
    with pytest.raises(InvalidRequest, match="temperature"):
        reader(params={"temperature": 9})
    with pytest.raises(InvalidRequest, match="no params"):
        reader(JobType.EMBEDDING, params={"max_tokens": 3})


def test_mixed_good_and_bad_lines_fail_alone_with_exact_line_numbers_and_reasons():
    data = jsonl({"custom_id": "ok1", "prompt": "fine"},
                 '{"custom_id": "broken", "prompt": ',                       # 2: broken JSON
                 {"custom_id": "noprompt", "max_tokens": 3},                 # 3: no prompt
                 "",                                                         # 4: blank, skipped
                 {"custom_id": "hot", "prompt": "x", "temperature": 3},      # 5: bad parameter
                 {"custom_id": "typo", "prompt": "x", "max_tokenz": 3},      # 6: unknown parameter
                 {"custom_id": "ok1", "prompt": "dup"},                      # 7: duplicate custom_id
                 "[1, 2]",                                                   # 8: not an object
                 {"custom_id": "ok2", "prompt": "fine too"})                 # 9
    parsed = reader().file(data, "mixed.jsonl")
    lines = by_line(parsed)
    assert sorted(lines) == [1, 2, 3, 5, 6, 7, 8, 9]
    assert lines[1].ok and lines[9].ok and parsed.valid == 2 and parsed.invalid == 6
    assert "not valid JSON" in lines[2].error["message"] and lines[2].custom_id == "line-2"
    assert lines[3].error == {"code": "INVALID_REQUEST", "message": "the line has no prompt (or messages)"}
    assert lines[3].custom_id == "noprompt"
    assert lines[5].error["message"].startswith("temperature:")
    assert "max_tokenz" in lines[6].error["message"]
    assert lines[7].error["message"] == "duplicate custom_id 'ok1' (first used on line 1)"
    assert lines[8].error["message"] == "the line must be a JSON object"
    assert [e["line"] for e in parsed.errors()] == [2, 3, 5, 6, 7, 8]


def test_invalid_utf8_fails_only_its_line():
    data = jsonl({"prompt": "before"}) + b'{"prompt": "caf\xe9"}\n' + jsonl({"prompt": "after"})
    lines = by_line(reader().file(data, "p.jsonl"))
    assert lines[1].ok and lines[3].ok
    assert lines[2].error == {"code": "INVALID_REQUEST",
                              "message": "the line is not valid UTF-8 (byte 0xe9 at position 15)"}


def test_a_huge_line_fails_alone_without_being_parsed():
    data = jsonl({"prompt": "a"}, {"prompt": "x" * 10_000}, {"prompt": "c"})
    lines = by_line(reader().file(data, "p.jsonl"))
    assert lines[1].ok and lines[3].ok
    assert lines[2].error["code"] == "PAYLOAD_TOO_LARGE"
    assert "the line is 10,014 bytes; the limit is 4,096" in lines[2].error["message"]


def test_an_embedding_text_over_8000_characters_fails_its_line():
    limits = Limits(1 << 20, 1000, 1 << 20)
    lines = reader(JobType.EMBEDDING, limits=limits).file(jsonl({"input": "ok"}, {"input": "y" * 8001})).lines
    assert lines[0].ok and "longer than 8000" in lines[1].error["message"]


def test_openai_batch_lines():
    data = jsonl(
        {"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "tiny-gpt", "messages": [{"role": "developer", "content": "be brief"},
                                                    {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                  "max_completion_tokens": 9, "user": "u1", "n": 1}},
        {"custom_id": "c2", "method": "POST", "url": "/v1/completions",
         "body": {"model": "tiny-gpt", "prompt": "Once", "max_tokens": 4}},
        {"custom_id": "c3", "method": "GET", "url": "/v1/completions", "body": {"prompt": "x"}},
        {"custom_id": "c4", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "n": 3}},
        {"custom_id": "c5", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}},
        {"custom_id": "c6", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x", "best_of": 2}},
    )
    lines = reader().file(data, "openai.jsonl").lines
    assert lines[0].input["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert lines[0].input["max_tokens"] == 9 and lines[0].model == "tiny-gpt"
    assert lines[1].input["prompt"] == "Once" and lines[1].input["max_tokens"] == 4
    assert lines[2].error["message"] == "method must be POST"
    assert lines[3].ok and lines[3].input["n"] == 3  # three choices in one result
    assert "runs embedding requests" in lines[4].error["message"]
    assert lines[5].error["message"].startswith("best_of must equal n")  # the endpoint's own message


def test_openai_lines_of_another_endpoint_fail_in_a_v1_batch():
    data = jsonl({"custom_id": "e1", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "a"}},
                 {"custom_id": "e2", "method": "POST", "url": "/v1/completions", "body": {"prompt": "a"}},
                 {"custom_id": "e3", "input": "native"})
    lines = reader(JobType.EMBEDDING, endpoint="/v1/embeddings").file(data).lines
    assert lines[0].ok and lines[0].input == {"input": ["a"]}
    assert "not this batch's endpoint" in lines[1].error["message"]
    assert lines[2].error["message"] == "a /v1/batches line needs method, url and body"


def test_txt_one_prompt_per_line():
    parsed = reader().file(b"first prompt\r\n\nsecond prompt\n\xff\xfe bad\n", "prompts.txt")
    assert parsed.format == "txt"
    lines = by_line(parsed)
    assert lines[1].input["prompt"] == "first prompt" and lines[3].input["prompt"] == "second prompt"
    assert lines[1].custom_id == "line-1" and "UTF-8" in lines[4].error["message"]


def test_txt_lines_in_an_embedding_batch_are_inputs():
    lines = reader(JobType.EMBEDDING).file(b"alpha\nbeta\n", "t.txt").lines
    assert [l.input for l in lines] == [{"input": "alpha"}, {"input": "beta"}]


def test_csv_with_prompt_or_text_column_and_custom_ids():
    data = b'custom_id,prompt,label\nq1,"Hello, world",x\nq2,"multi\nline",y\nq3,,z\n'
    lines = by_line(reader().file(data, "p.csv"))
    assert lines[2].custom_id == "q1" and lines[2].input["prompt"] == "Hello, world"
    assert lines[3].input["prompt"] == "multi\nline"  # a quoted newline: the row starts on line 3
    assert lines[5].custom_id == "q3" and "prompt" in lines[5].error["message"]
    text = reader(JobType.EMBEDDING).file(b"text\none\ntwo\n", "t.csv").lines
    assert [l.input for l in text] == [{"input": "one"}, {"input": "two"}]


def test_csv_without_a_prompt_column_is_refused():
    with pytest.raises(InvalidRequest, match="prompt"):
        reader().file(b"a,b\n1,2\n", "x.csv")


def test_csv_rows_of_a_predict_batch_are_feature_rows(model_dir):
    iris = ModelRepository(model_dir).get("iris")
    data = b"id,a,b,c,d\nr1,5.1,3.5,1.4,0.2\nr2,5.1,oops,1.4,0.2\n"
    lines = reader(JobType.PREDICT, model=iris).file(data, "rows.csv").lines
    assert lines[0].input == {"features": [[5.1, 3.5, 1.4, 0.2]]} and lines[0].custom_id == "r1"
    assert lines[1].error["message"] == "every feature column must be a number"


def test_predict_lines_are_checked_against_the_models_feature_count(model_dir):
    iris = ModelRepository(model_dir).get("iris")
    lines = reader(JobType.PREDICT, model=iris).file(jsonl({"features": [1, 2, 3, 4]}, {"features": [[1, 2]]})).lines
    assert lines[0].input == {"features": [[1.0, 2.0, 3.0, 4.0]]}
    assert "4 features, got 2" in lines[1].error["message"]


def test_json_requests_list_uses_id_as_custom_id():
    parsed = reader().requests([{"id": "req1", "prompt": "What is AI?"}, {"id": "req2"}])
    assert parsed.lines[0].custom_id == "req1" and parsed.lines[0].ok
    assert parsed.lines[1].line == 2 and not parsed.lines[1].ok


def test_limits_answer_413_with_a_clear_message():
    with pytest.raises(PayloadTooLarge, match="INFERNO_BATCH_MAX_FILE_BYTES") as big:
        reader(limits=Limits(100, 1000, 4096)).file(b"x" * 101, "p.txt")
    assert big.value.status == 413 and "101 bytes; the limit is 100 bytes" in big.value.message
    with pytest.raises(PayloadTooLarge, match="3 requests; the limit is 2 .INFERNO_BATCH_MAX_LINES."):
        reader(limits=Limits(1 << 20, 2, 4096)).file(b"a\nb\n\nc\n", "p.txt")
    with pytest.raises(PayloadTooLarge):
        reader(limits=Limits(1 << 20, 2, 4096)).requests([{"prompt": "a"}] * 3)
    with pytest.raises(PayloadTooLarge):
        reader(limits=Limits(1 << 20, 2, 4096)).file(b"prompt\na\nb\nc\n", "p.csv")


def test_an_empty_file_is_refused():
    with pytest.raises(InvalidRequest, match="no requests"):
        reader().file(b"\n\n  \n", "p.jsonl")


def test_format_detection():
    assert detect_format("a.jsonl", b"") == "jsonl" and detect_format("a.CSV", b"") == "csv"
    assert detect_format(None, b'\n{"prompt": 1}') == "jsonl" and detect_format("upload", b"hello") == "txt"
    # a CSV header the reader knows, and a next row of as many fields
    assert detect_format("noext", b'custom_id,prompt\r\nq1,"Hello, world"\nq2,bye\n') == "csv"
    assert detect_format("rows", b"\xef\xbb\xbfid,a,b,c,d\nr1,5.1,3.5,1.4,0.2\n") == "csv"
    assert detect_format("blob", b'ID,Text\nq1,"two\nlines"\n') == "csv"
    assert detect_format("blob", b"custom_id,prompt\n") == "csv"
    for text in (b"prompt, please\nWrite a poem\n", b"Hello, world\nbye, now\n", b"prompt,text\na,b,c\n",
                 b"the id, then the text\nx, y\n"):
        assert detect_format("upload", text) == "txt", text


def test_openai_lines_accept_exactly_what_their_endpoint_accepts():
    data = jsonl(
        {"custom_id": "e", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "minilm", "input": "a", "dimensions": 384, "encoding_format": None}},
        {"custom_id": "c", "method": "POST", "url": "/v1/completions",
         "body": {"model": "tiny-gpt", "prompt": ["a", "b"], "stream": None, "top_k": 40}},
        {"custom_id": "s", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "tiny-gpt", "messages": [{"role": "user", "content": "hi"}], "store": True,
                  "service_tier": "auto", "parallel_tool_calls": True, "repetition_penalty": 1.2,
                  "chat_template_kwargs": {"enable_thinking": False}}},
        {"custom_id": "x", "method": "POST", "url": "/v1/completions",
         "body": {"model": "tiny-gpt", "prompt": ["p"] * 17}},
        {"custom_id": "u", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "tiny-gpt", "messages": [{"role": "user", "content": "hi"}], "tools": []}},
    )
    embeddings = reader(JobType.EMBEDDING).file(data).lines
    assert embeddings[0].ok and embeddings[0].input == {"input": ["a"], "dimensions": 384}
    lines = reader(JobType.COMPLETION).file(data).lines
    assert lines[1].ok and lines[1].input["prompt"] == ["a", "b"] and lines[1].input["top_k"] == 40
    assert lines[2].ok, lines[2].error
    assert lines[2].input["repetition_penalty"] == 1.2
    assert lines[2].input["chat_template_kwargs"] == {"enable_thinking": False}
    assert lines[3].error["message"] == "body.prompt: at most 16 prompts per request"
    assert lines[4].error["message"] == "Unrecognized request argument supplied: tools"
    # Each names its field as the endpoint's own 400 does (OpenAI's param, in the error file's bodies).
    assert lines[3].error["details"] == {"field": "prompt"} and lines[4].error["details"] == {"field": "tools"}
    from api.openai_results import error_status
    assert error_status(lines[3].error) == (400, {"error": {
        "message": "body.prompt: at most 16 prompts per request", "type": "invalid_request_error", "param": "prompt",
        "code": "invalid_request"}})


def test_csv_line_numbers_count_only_real_line_ends():
    # U+2028, U+0085, form feed and \x1c are str.splitlines() breaks but text inside a CSV row.
    data = ("custom_id,prompt\n"
            "a,one\u2028two\n"
            "b,three\x0cfour\x1cfive\u0085six\n"
            "c,\"quoted\r\nacross lines\"\n"
            "d,last\r"
            "e,after a bare CR\n").encode()
    lines = by_line(reader().file(data, "p.csv"))
    assert sorted(lines) == [2, 3, 4, 6, 7]
    assert lines[2].input["prompt"] == "one\u2028two" and lines[2].custom_id == "a"
    assert lines[3].input["prompt"] == "three\x0cfour\x1cfive\u0085six"
    assert lines[4].input["prompt"] == "quoted\r\nacross lines"
    assert lines[6].custom_id == "d" and lines[7].custom_id == "e"


def test_a_csv_quote_left_open_fails_its_row_and_the_rows_after_it_still_run():
    data = b'custom_id,prompt\nc1,"unterminated\nc2,ok\nc3,ok3\n'
    lines = by_line(reader().file(data, "p.csv"))
    assert sorted(lines) == [2, 3, 4]
    assert lines[2].error["code"] == "INVALID_REQUEST" and "never closed" in lines[2].error["message"]
    assert (lines[3].custom_id, lines[3].input["prompt"]) == ("c2", "ok")
    assert (lines[4].custom_id, lines[4].input["prompt"]) == ("c3", "ok3")


def test_a_stray_csv_quote_is_an_error_not_text_changed_silently():
    lines = by_line(reader().file(b'custom_id,prompt\na,"abc"def\nb,fine\n', "p.csv"))
    assert lines[2].error["code"] == "INVALID_REQUEST" and "cannot be read" in lines[2].error["message"]
    assert lines[3].input["prompt"] == "fine"


def test_a_long_csv_field_is_measured_against_the_line_limit_not_the_csv_modules_cap():
    big = "x" * 200_000  # over the csv module's default 131,072-character field cap
    data = f"custom_id,prompt\nbig,{big}\nok,{'y' * 150_000}\n".encode()
    lines = by_line(reader(limits=Limits(1 << 22, 10, 180_000)).file(data, "p.csv"))
    assert lines[2].error["code"] == "PAYLOAD_TOO_LARGE"
    assert lines[3].input["prompt"] == "y" * 150_000 and lines[3].custom_id == "ok"


def test_format_sniffing_ignores_str_only_line_breaks():
    assert detect_format(None, '\u2028{"prompt": "x"}\n'.encode()) == "txt"  # U+2028 is not a line end
    assert detect_format(None, b'\r\n{"prompt": "x"}\n') == "jsonl"


def test_openai_batch_lines_ask_for_logprobs_and_their_output_bodies_carry_them():
    from api.openai_results import openai_body

    data = jsonl(
        {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "tiny-gpt", "messages": [{"role": "user", "content": "hi"}], "logprobs": True,
                  "top_logprobs": 2}},
        {"custom_id": "p", "method": "POST", "url": "/v1/completions",
         "body": {"model": "tiny-gpt", "prompt": "Once", "logprobs": 3}},
        {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "tiny-gpt", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}},
    )
    chat, completion, bad = reader().file(data, "openai.jsonl").lines
    assert (chat.input["logprobs"], chat.input["top_logprobs"]) == (True, 2)
    assert (completion.input["logprobs"], completion.input["top_logprobs"]) == (True, 3)  # legacy: the count
    assert "top_logprobs needs logprobs: true" in bad.error["message"]  # the endpoint's own check

    entries = [{"token": t, "logprob": lp, "bytes": list(t.encode()),
                "top_logprobs": [{"token": " a", "logprob": -0.5, "bytes": [32, 97]}]}
               for t, lp in [("Hé", -0.25), ("!", -1.5)]]
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    body = openai_body({"message": {"role": "assistant", "content": "Hé!"}, "finish_reason": "stop",
                        "usage": usage, "logprobs": entries}, model="tiny-gpt", response_id="x", created=1)
    assert body["choices"][0]["logprobs"] == {"content": entries, "refusal": None}
    body = openai_body({"text": "Hé!", "finish_reason": "length", "usage": usage, "logprobs": entries},
                       model="tiny-gpt", response_id="x", created=1)
    assert body["choices"][0]["logprobs"] == {
        "tokens": ["Hé", "!"], "token_logprobs": [-0.25, -1.5], "text_offset": [0, 2],  # characters, not bytes
        "top_logprobs": [{"Hé": -0.25, " a": -0.5}, {" a": -0.5, "!": -1.5}]}  # most likely first, chosen included
    listed = openai_body({"choices": [{"index": i, "text": "Hé!", "finish_reason": "stop", "logprobs": entries}
                                      for i in range(4)], "usage": usage},
                         model="tiny-gpt", response_id="x", created=1, prompt=["Once", "Hé there"])
    assert [c["logprobs"]["text_offset"] for c in listed["choices"]] == [[4, 6], [4, 6], [8, 10], [8, 10]]
    plain = openai_body({"text": "x", "finish_reason": "stop", "usage": usage}, model="m", response_id="y",
                        created=1)
    assert plain["choices"][0]["logprobs"] is None


def test_a_huge_line_keeps_the_custom_id_it_starts_with():
    long_body = {"model": "tiny-gpt", "messages": [{"role": "user", "content": "x" * 10_000}]}
    data = jsonl(
        {"custom_id": "req-\u00e9 1", "method": "POST", "url": "/v1/chat/completions", "body": long_body},
        {"method": "POST", "url": "/v1/chat/completions", "custom_id": "after-plain-members", "body": long_body},
        {"body": long_body, "custom_id": "after-the-body"},  # only plain members are skipped over
        {"prompt": "x" * 10_000, "metadata": {"custom_id": "nested"}},
        {"custom_id": "ok", "prompt": "fine"},
    )
    lines = by_line(reader().file(data, "p.jsonl"))
    assert [lines[n].custom_id for n in (1, 2, 3, 4)] == ["req-\u00e9 1", "after-plain-members", "line-3", "line-4"]
    assert all(lines[n].error["code"] == "PAYLOAD_TOO_LARGE" for n in (1, 2, 3, 4))
    assert lines[5].ok and lines[5].custom_id == "ok"
    escaped = b'{"custom_id": "a\\"b", "prompt": "' + b"x" * 10_000 + b'"}\n'
    assert by_line(reader().file(escaped, "p.jsonl"))[1].custom_id == 'a"b'


def test_embedding_lines_may_ask_for_base64_vectors():
    data = jsonl({"custom_id": "b", "method": "POST", "url": "/v1/embeddings",
                  "body": {"model": "minilm", "input": "a", "encoding_format": "base64"}},
                 {"custom_id": "f", "method": "POST", "url": "/v1/embeddings",
                  "body": {"model": "minilm", "input": "a", "encoding_format": "float"}},
                 {"custom_id": "h", "method": "POST", "url": "/v1/embeddings",
                  "body": {"model": "minilm", "input": "a", "encoding_format": "hex"}})
    lines = reader(JobType.EMBEDDING).file(data).lines
    assert lines[0].input == {"input": ["a"], "encoding_format": "base64"}  # the worker encodes
    assert lines[1].input == {"input": ["a"]}
    assert "encoding_format must be float or base64" in lines[2].error["message"]


def test_a_lone_carriage_return_ends_a_line_as_the_docs_say():
    data = b'{"prompt": "a"}\r{"prompt": "b"}\r\n{"prompt": "c"}\n\r{"prompt": "d"}'
    lines = reader().file(data, "p.jsonl").lines
    assert [(l.line, l.input["prompt"]) for l in lines] == [(1, "a"), (2, "b"), (3, "c"), (5, "d")]
    txt = reader().file(b"one\rtwo\r\nthree", "p.txt").lines
    assert [l.input["prompt"] for l in txt] == ["one", "two", "three"]
