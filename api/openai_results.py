"""Job results in OpenAI's response shapes: ``chat.completion``, ``text_completion`` and the embedding list.

Used for batch output files (``/v1/files/<id>/content``); the synchronous ``/v1`` endpoints can use the same
functions so both surfaces answer alike.

A result's ``logprobs`` (one entry ``{token, logprob, bytes, top_logprobs}`` per token, workers/generation.py)
becomes chat's ``{"content": [...], "refusal": null}`` as it is, and the legacy completions' ``{tokens,
token_logprobs, top_logprobs, text_offset}``; a choice without them has ``logprobs: null``.
"""

from __future__ import annotations

from bisect import bisect_right

from api.openai_errors import openai_error_body
from inferno_jobs.errors import ERRORS_BY_CODE, InfernoError

# Our finish reasons that OpenAI does not have.
_FINISH = {"canceled": "stop", "cancelled": "stop"}


def openai_body(result: dict, *, model: str, response_id: str, created: int, prompt: str | list | None = None,
                ) -> dict:
    """One result (chat, completion or embedding, recognised by its fields) as OpenAI's response body; a
    completion's ``prompt`` (one or a list) places its legacy ``logprobs.text_offset``."""
    usage = result.get("usage") or {}
    if "embeddings" in result:
        return {"object": "list", "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": vector}
                         for i, vector in enumerate(result["embeddings"])],
                "usage": {"prompt_tokens": usage.get("prompt_tokens", 0),
                          "total_tokens": usage.get("total_tokens", usage.get("prompt_tokens", 0))}}
    full_usage = {"prompt_tokens": usage.get("prompt_tokens", 0),
                  "completion_tokens": usage.get("completion_tokens", 0),
                  "total_tokens": usage.get("total_tokens", 0)}
    choices = choices_of(result)
    if "message" in choices[0]:
        return {"id": f"chatcmpl-{response_id}", "object": "chat.completion", "created": created, "model": model,
                "choices": [chat_choice(c) for c in choices], "usage": full_usage}
    if "text" in choices[0]:
        return {"id": f"cmpl-{response_id}", "object": "text_completion", "created": created, "model": model,
                "choices": [completion_choice(c, prompt_chars=len(p)) for c, p in zip(choices, _prompts_of(
                    prompt, len(choices)))], "usage": full_usage}
    return result  # predict results have no OpenAI counterpart


def _prompts_of(prompt: str | list | None, choices: int) -> list[str]:
    """The prompt of each of ``choices`` choices: prompt ``i``'s choice ``j`` is choice ``i * n + j``."""
    prompts = [prompt or ""] if not isinstance(prompt, list) else prompt or [""]
    n = max(1, choices // len(prompts))
    return [prompts[min(k // n, len(prompts) - 1)] for k in range(choices)]


def choices_of(result: dict) -> list[dict]:
    """A generation result's choices: its ``choices`` (``n`` above 1, a list prompt) or the result itself."""
    return result.get("choices") or [{**result, "index": 0}]


def finish_reason(choice: dict) -> str:
    """A choice's ``finish_reason`` in OpenAI's words."""
    reason = choice.get("finish_reason")
    return _FINISH.get(reason, reason)


def chat_choice(choice: dict) -> dict:
    """One generated chat choice (``index``, ``message``, ``finish_reason``) as OpenAI's."""
    message = choice["message"]
    return {"index": choice["index"],
            "message": {"role": message.get("role", "assistant"), "content": message.get("content"),
                        "refusal": None},
            "logprobs": chat_logprobs(choice.get("logprobs")), "finish_reason": finish_reason(choice)}


def chat_logprobs(entries: list[dict] | None) -> dict | None:
    """Chat's ``logprobs`` of a choice's (or a chunk's) entries; None when none were asked for."""
    return None if entries is None else {"content": entries, "refusal": None}


def completion_choice(choice: dict, index: int | None = None, prompt_chars: int = 0) -> dict:
    """One generated completion choice as OpenAI's; ``index`` replaces the choice's own; ``prompt_chars``: the
    length of its prompt, where its text starts."""
    entries = choice.get("logprobs")
    return {"text": choice["text"], "index": choice["index"] if index is None else index,
            "logprobs": None if entries is None else LegacyLogprobs(prompt_chars).add(choice["text"], entries),
            "finish_reason": finish_reason(choice)}


class LegacyLogprobs:
    """The legacy completions ``logprobs`` of one choice, built from its text and entries at once or, for a stream,
    piece by piece.

    ``top_logprobs`` holds, per token, its most likely alternatives and the chosen token (OpenAI: "up to
    logprobs + 1 elements"), most likely first; ``text_offset`` is the character where each token starts, counted
    as OpenAI counts it from the start of the prompt (the text follows its ``prompt_chars`` characters); a token
    that starts inside a character another token began is at that character.
    """

    def __init__(self, prompt_chars: int = 0):
        self._char_starts = [0]  # the UTF-8 byte where each character of the text so far starts, then its end
        self._token_bytes = 0
        self._start = prompt_chars

    def add(self, piece: str, entries: list[dict]) -> dict:
        """The legacy ``logprobs`` of ``entries``, the tokens that ``piece`` (the next text) completes."""
        for char in piece:
            self._char_starts.append(self._char_starts[-1] + len(char.encode()))
        offsets = []
        for entry in entries:
            offsets.append(self._start + bisect_right(self._char_starts, self._token_bytes) - 1)
            self._token_bytes += len(entry.get("bytes") or ())
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [_alternatives(e) for e in entries], "text_offset": offsets}


def _alternatives(entry: dict) -> dict[str, float]:
    ranked = [*entry["top_logprobs"], {"token": entry["token"], "logprob": entry["logprob"]}]
    out: dict[str, float] = {}
    for alt in sorted(ranked, key=lambda alt: -alt["logprob"]):  # stable: the chosen token after an equal one
        out.setdefault(alt["token"], alt["logprob"])
    return out


def error_status(error: dict) -> tuple[int, dict]:
    """The HTTP status and OpenAI error body of a stored ``{code, message}``."""
    cls = ERRORS_BY_CODE.get(error.get("code"), InfernoError)
    exc = cls(error.get("message", ""), details=error.get("details"))
    return exc.status, openai_error_body(exc)
