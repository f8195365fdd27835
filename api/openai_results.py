"""Job results in OpenAI's response shapes: ``chat.completion``, ``text_completion`` and the embedding list.

Used for batch output files (``/v1/files/<id>/content``); the synchronous ``/v1`` endpoints can use the same
functions so both surfaces answer alike.
"""

from __future__ import annotations

from api.openai_errors import openai_error_body
from inferno_jobs.errors import ERRORS_BY_CODE, InfernoError

# Our finish reasons that OpenAI does not have.
_FINISH = {"canceled": "stop", "cancelled": "stop"}


def openai_body(result: dict, *, model: str, response_id: str, created: int) -> dict:
    """One result (chat, completion or embedding, recognised by its fields) as OpenAI's response body."""
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
                "choices": [completion_choice(c) for c in choices], "usage": full_usage}
    return result  # predict results have no OpenAI counterpart


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
            "logprobs": None, "finish_reason": finish_reason(choice)}


def completion_choice(choice: dict, index: int | None = None) -> dict:
    """One generated completion choice as OpenAI's; ``index`` replaces the choice's own."""
    return {"text": choice["text"], "index": choice["index"] if index is None else index, "logprobs": None,
            "finish_reason": finish_reason(choice)}


def error_status(error: dict) -> tuple[int, dict]:
    """The HTTP status and OpenAI error body of a stored ``{code, message}``."""
    cls = ERRORS_BY_CODE.get(error.get("code"), InfernoError)
    exc = cls(error.get("message", ""), details=error.get("details"))
    return exc.status, openai_error_body(exc)
