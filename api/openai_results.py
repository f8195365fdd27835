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
    finish = _FINISH.get(result.get("finish_reason"), result.get("finish_reason"))
    if "message" in result:
        message = result["message"]
        return {"id": f"chatcmpl-{response_id}", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": message.get("role", "assistant"),
                                                     "content": message.get("content"), "refusal": None},
                             "logprobs": None, "finish_reason": finish}],
                "usage": full_usage}
    if "choices" in result:  # a completion of several prompts (a batch line with a list ``prompt``)
        return {"id": f"cmpl-{response_id}", "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": c["index"], "text": c["text"], "logprobs": None,
                             "finish_reason": _FINISH.get(c["finish_reason"], c["finish_reason"])}
                            for c in result["choices"]],
                "usage": full_usage}
    if "text" in result:
        return {"id": f"cmpl-{response_id}", "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": result["text"], "logprobs": None, "finish_reason": finish}],
                "usage": full_usage}
    return result  # predict results have no OpenAI counterpart


def error_status(error: dict) -> tuple[int, dict]:
    """The HTTP status and OpenAI error body of a stored ``{code, message}``."""
    cls = ERRORS_BY_CODE.get(error.get("code"), InfernoError)
    exc = cls(error.get("message", ""), details=error.get("details"))
    return exc.status, openai_error_body(exc)
