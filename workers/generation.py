"""Runs decoder-only ONNX language models: ``completion`` and ``chat`` jobs.

The model is a Hugging Face / optimum style decoder export (``input_ids``, ``attention_mask``, optional
``position_ids``, ``past_key_values.N.key|value`` -> ``logits``, ``present.N.key|value``). With past inputs the
runner decodes with a KV cache: one call for the prompt (the empty past has length 0), then one call per token.
``use_cache: false`` in config.json (or a model exported without past) recomputes the whole sequence each step;
it exists to check the cache and for exports that have none, and is quadratically slower.

An input with ``n`` above 1, or a completion with a list of prompts, answers ``choices``: one generation per prompt
and choice, in order.

Jobs of a micro-batch are generated one after another, each its own result or error: sequences of different
lengths finish at different steps, so batched decoding would need per-row masks and cache compaction, which a
CPU demo model does not repay. Streaming and cancellation go through :meth:`GenerationRunner.generate`.

``logprobs: true`` adds the log probability of each token of the returned text (and of its ``top_logprobs`` most
likely alternatives): the log-softmax of the model's raw logits at that step, before penalties, temperature,
top-k and top-p (vLLM's default), computed beside sampling, never in it, so the same seed gives the same text
with or without them. Without ``logprobs`` no step does any of that work.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from inferno_jobs.errors import ContextLengthExceeded, InfernoError, InferenceFailed, InvalidRequest
from inferno_jobs.schemas import MAX_CHOICES, MAX_TOP_LOGPROBS
from workers.runner import ABORTS, Runner
from workers.sampling import Sampler, SamplingParams, log_softmax, most_likely
from workers.tokenizer import (IncrementalDecoder, TokenBytes, chat_template_of, check_messages, load_tokenizer,
                               render_chat)

DEFAULT_MAX_TOKENS = 64
MAX_TOKENS_LIMIT = 2_000_000
MAX_STOP_SEQUENCES = 16
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}

# on_token(piece, index), and with logprobs asked on_token(piece, index, logprobs=[entries])
OnToken = Callable[..., None]


class GenerationRunner(Runner):
    """Completion and chat generation with greedy or seeded sampling, stop sequences and streaming hooks."""

    model_type = "completion"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        options = self.model.options
        self.tokenizer = load_tokenizer(self.model.path)
        self.token_bytes = TokenBytes(self.tokenizer)
        self.context_length = int(options.get("context_length", 2048))
        self.default_max_tokens = int(options.get("default_max_tokens", DEFAULT_MAX_TOKENS))
        self.chat_template = chat_template_of(self.model.path, options)
        self.eos_id = self.tokenizer.token_to_id(options.get("eos_token", "<|endoftext|>"))
        # A chat reply also ends where the model starts a new turn.
        tags = [self.tokenizer.token_to_id(f"<|{role}|>") for role in ("system", "user", "assistant")]
        self.chat_stop_ids = {i for i in [self.eos_id, *tags] if i is not None}
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = set(inputs)
        self.past_names = sorted((n for n in inputs if n.startswith("past_key_values.")), key=_layer_order)
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        self.use_cache = bool(options.get("use_cache", True)) and bool(self.past_names)
        if self.past_names:
            first = inputs[self.past_names[0]]
            heads, head_dim = first.shape[1], first.shape[3]
            self.num_heads = int(options.get("num_heads") or heads)
            self.head_dim = int(options.get("head_dim") or head_dim)
            self.past_dtype = _DTYPES.get(first.type, np.float32)

    # -- inputs ---------------------------------------------------------------------------------------------

    def _prompt(self, item: dict) -> tuple[str, list[int]]:
        """``("chat" | "completion", prompt ids)`` of a job input."""
        if not isinstance(item, dict):
            raise InvalidRequest("input must be an object")
        if "messages" in item:
            kind, text = "chat", render_chat(check_messages(item["messages"]), self.chat_template,
                                             item.get("chat_template_kwargs"))
        elif "prompt" in item:
            if not isinstance(item["prompt"], str):
                raise InvalidRequest("prompt must be a string", details={"field": "prompt"})
            kind, text = "completion", item["prompt"]
        else:
            raise InvalidRequest("input needs a prompt (completion) or messages (chat)", details={"field": "prompt"})
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if not ids and self.eos_id is not None:
            ids = [self.eos_id]  # as GPT-2 does: an empty prompt starts from the end-of-text token
        if not ids:
            raise InvalidRequest("prompt is empty", details={"field": "prompt"})
        if len(ids) + 1 > self.context_length:
            raise ContextLengthExceeded(
                f"prompt is {len(ids)} tokens; the model's context is {self.context_length} tokens and "
                f"needs room for at least one generated token",
                details={"prompt_tokens": len(ids), "context_length": self.context_length,
                         "field": "messages" if kind == "chat" else "prompt"})  # OpenAI's param
        return kind, ids

    def _max_tokens(self, item: dict) -> int:
        value = item.get("max_tokens")
        if value is None:
            return self.default_max_tokens
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS_LIMIT:
            raise InvalidRequest(f"max_tokens must be an integer from 1 to {MAX_TOKENS_LIMIT:,}",
                                 details={"field": "max_tokens"})
        return value

    @staticmethod
    def _top_logprobs(item: dict) -> int | None:
        """None unless the input asks for ``logprobs``; else how many alternatives each token lists."""
        wanted, top = item.get("logprobs"), item.get("top_logprobs")
        if wanted is not None and not isinstance(wanted, bool):
            raise InvalidRequest("logprobs must be true or false", details={"field": "logprobs"})
        if top is not None and (isinstance(top, bool) or not isinstance(top, int)
                                or not 0 <= top <= MAX_TOP_LOGPROBS):
            raise InvalidRequest(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}",
                                 details={"field": "top_logprobs"})
        if top is not None and not wanted:
            raise InvalidRequest("top_logprobs needs logprobs: true", details={"field": "top_logprobs"})
        return (top or 0) if wanted else None

    @staticmethod
    def _stops(item: dict) -> list[str]:
        stop = item.get("stop")
        stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if (not isinstance(stops, list) or len(stops) > MAX_STOP_SEQUENCES
                or not all(isinstance(s, str) and s for s in stops)):
            raise InvalidRequest(f"stop must be a non-empty string or a list of up to {MAX_STOP_SEQUENCES} of them",
                                 details={"field": "stop"})
        return stops

    # -- the model ------------------------------------------------------------------------------------------

    def _forward(self, ids: list[int], total: int, past: list[np.ndarray] | None):
        """Run ``ids`` (the last ``len(ids)`` of ``total`` positions) on ``past``; (last logits, presents)."""
        n = len(ids)
        feed = {"input_ids": np.asarray([ids], dtype=np.int64),
                "attention_mask": np.ones((1, total), dtype=np.int64)}
        if "position_ids" in self.input_names:
            feed["position_ids"] = np.arange(total - n, total, dtype=np.int64)[None]
        if self.past_names:
            if past is None:
                empty = np.zeros((1, self.num_heads, 0, self.head_dim), dtype=self.past_dtype)
                past = [empty] * len(self.past_names)
            feed.update(zip(self.past_names, past))
        wanted = ["logits", *self.present_names] if self.use_cache else ["logits"]
        outputs = self.session.run(wanted, feed)
        return np.asarray(outputs[0][0, -1], dtype=np.float32), (outputs[1:] if self.use_cache else None)

    def generate(self, item: dict, on_token: OnToken | None = None,
                 should_stop: Callable[[], bool] | None = None) -> dict:
        """Generate for one completion or chat input; returns its result dict, raises :class:`InfernoError`.

        ``on_token(piece, index)`` is called with each new piece of output text (normally one per token;
        ``index`` counts the calls from 0); the pieces concatenate to the result's text. Text that could be the
        start of a stop sequence is held back until it is known not to be one. ``should_stop()`` is polled
        before every model call; when it returns True generation ends with ``finish_reason`` ``"canceled"``.

        With ``logprobs`` the result has ``logprobs``, one entry per token wholly inside its text, and the call is
        ``on_token(piece, index, logprobs=entries)``: the entries of the tokens that this piece completes (a
        piece may complete none, and a token with no text, a special one, comes with an empty piece).
        """
        kind, prompt_ids = self._prompt(item)
        max_tokens, stops = self._max_tokens(item), self._stops(item)
        top_logprobs = self._top_logprobs(item)
        sampler = Sampler(SamplingParams.from_input(item))
        stop_ids = self.chat_stop_ids if kind == "chat" else {self.eos_id} - {None}
        budget = min(max_tokens, self.context_length - len(prompt_ids))
        decoder = IncrementalDecoder(self.tokenizer, prompt_ids)
        logprobs = None if top_logprobs is None else _Logprobs(self.token_bytes, top_logprobs)
        ids, emitted, calls = list(prompt_ids), 0, 0
        past, pending = None, list(prompt_ids)
        finish, generated, text = "length", 0, None

        def emit(upto: int) -> None:
            nonlocal emitted, calls
            if on_token is not None and logprobs is None and upto > emitted:
                on_token(decoder.text[emitted:upto], calls)
                calls += 1
            elif on_token is not None and logprobs is not None:
                piece = decoder.text[emitted:upto]
                completed = logprobs.emitted(piece)
                if piece or completed:
                    on_token(piece, calls, logprobs=completed)
                    calls += 1
            emitted = max(emitted, upto)

        while generated < budget:
            if should_stop is not None and should_stop():
                finish = "canceled"
                break
            try:
                if self.use_cache:
                    logits, past = self._forward(pending, len(ids), past)
                else:
                    logits, _ = self._forward(ids, len(ids), None)
            except ABORTS:
                raise
            except Exception as exc:  # onnxruntime raises its own exception types for a bad run
                raise InferenceFailed(f"inference failed: {exc}") from exc
            raw = logits  # what logprobs reports: before the mask below and every processor
            if kind == "chat" and generated == 0 and stop_ids:
                # A reply is never empty: the end tags cannot be its first token (HF's min_new_tokens=1).
                logits = np.array(logits, copy=True)
                logits[..., sorted(stop_ids)] = -np.inf
            seen = np.asarray(ids, dtype=np.int64)  # prompt included for repetition_penalty, as in HF
            token = sampler.next_token(logits, seen, seen[len(prompt_ids):])
            if token in stop_ids:
                finish = "stop"
                break
            if logprobs is not None:
                logprobs.record(raw, token)
            ids.append(token)
            pending = [token]
            generated += 1
            decoder.push(token)
            cut = _find_stop(decoder.text, stops, emitted)
            if cut is not None:
                text, finish = decoder.text[:cut], "stop"
                emit(cut)
                break
            emit(len(decoder.text) - _held_back(decoder.text, stops))
        if text is None:
            text = decoder.text
            emit(len(text))
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": generated,
                 "total_tokens": len(prompt_ids) + generated}
        if kind == "chat":
            result = {"message": {"role": "assistant", "content": text}, "finish_reason": finish, "usage": usage}
        else:
            result = {"text": text, "finish_reason": finish, "usage": usage}
        if logprobs is not None:
            result["logprobs"] = logprobs.within(text)
        return result

    def run_batch(self, inputs: list[dict]) -> list[dict | InfernoError]:
        """Generate each input in turn; a failing input fails its own job only."""
        results: list[dict | InfernoError] = []
        for item in inputs:
            try:
                results.append(self._generate_choices(item) if _has_choices(item) else self.generate(item))
            except InfernoError as exc:
                results.append(exc)
            except ABORTS:
                raise  # the run's time is up: the rest of the micro-batch does not go on
            except Exception as exc:  # never let one job's surprise sink the rest of the micro-batch
                results.append(InferenceFailed(f"inference failed: {exc}"))
        return results

    def _generate_choices(self, item: dict) -> dict:
        """``n`` texts per prompt (a completion's ``prompt`` may be a list) as ``choices``, what one OpenAI request
        with ``n`` or several prompts answers: prompt ``i``'s choice ``j`` has index ``i * n + j``. With a ``seed``,
        choice ``j`` is sampled with ``seed + j``, so the choices differ from each other and the same request gives
        the same choices. Each prompt's tokens count once in the usage, each choice's completion tokens once."""
        n = _choices_per_prompt(item)
        if n > 1 and item.get("stream"):
            raise InvalidRequest("n > 1 cannot stream: stream one choice per job", details={"field": "n"})
        many = isinstance(item.get("prompt"), list)
        prompts = [{**item, "prompt": prompt} for prompt in item["prompt"]] if many else [item]
        if n * len(prompts) > MAX_CHOICES:
            raise InvalidRequest(f"n times the number of prompts must be at most {MAX_CHOICES}",
                                 details={"field": "n"})
        seed = item.get("seed")
        choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for one in prompts:
            for j in range(n):
                result = self.generate(one if seed is None else {**one, "seed": seed + j})
                choice = {"index": len(choices), "finish_reason": result["finish_reason"]}
                choice.update({"message": result["message"]} if "message" in result else {"text": result["text"]})
                if "logprobs" in result:
                    choice["logprobs"] = result["logprobs"]
                choices.append(choice)
                usage["completion_tokens"] += result["usage"]["completion_tokens"]
            usage["prompt_tokens"] += result["usage"]["prompt_tokens"]
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"choices": choices, "usage": usage}


class _Logprobs:
    """The log probability entries of one generation, and which of them the text emitted so far holds.

    A token belongs to the text once all its bytes are in it: a token of which a stop sequence cuts off a part,
    or whose last character is incomplete when generation ends, has no entry, so the entries' bytes join into the
    text, or into the text less the start of the token that was cut.
    """

    def __init__(self, token_bytes: TokenBytes, top: int):
        self.token_bytes = token_bytes
        self.top = top
        self.entries: list[dict] = []
        self._ends: list[int] = []  # where each token's bytes end in the generated text's UTF-8
        self._emitted_bytes = 0
        self._sent = 0

    def _entry(self, token_id: int, logprob: float) -> dict:
        token, raw = self.token_bytes.of(token_id)
        # -9999.0 stands for -inf (a -inf logit), as OpenAI writes it: JSON has no infinity
        return {"token": token, "logprob": max(float(logprob), -9999.0), "bytes": None if raw is None else list(raw)}

    def record(self, logits: np.ndarray, token: int) -> None:
        """Add the entry of ``token``, chosen at a step whose raw logits are ``logits``."""
        logprobs = log_softmax(logits)
        entry = self._entry(token, logprobs[token])
        entry["top_logprobs"] = [self._entry(int(i), logprobs[i]) for i in most_likely(logprobs, self.top)]
        self.entries.append(entry)
        self._ends.append((self._ends[-1] if self._ends else 0) + len(entry["bytes"] or ()))

    def emitted(self, piece: str) -> list[dict]:
        """The entries that ``piece``, the next text emitted, completes."""
        self._emitted_bytes += len(piece.encode())
        first = self._sent
        while self._sent < len(self.entries) and self._ends[self._sent] <= self._emitted_bytes:
            self._sent += 1
        return self.entries[first:self._sent]

    def within(self, text: str) -> list[dict]:
        """The entries of the tokens wholly inside ``text``, the generated text as returned."""
        size = len(text.encode())
        return [entry for entry, end in zip(self.entries, self._ends) if end <= size]


def _has_choices(item) -> bool:
    """Whether an input answers ``choices``: several prompts, or ``n`` above 1."""
    if not isinstance(item, dict):
        return False
    n = item.get("n")
    return isinstance(item.get("prompt"), list) or isinstance(n, bool) or n not in (None, 1)  # True == 1


def _choices_per_prompt(item: dict) -> int:
    n = 1 if item.get("n") is None else item["n"]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES:
        raise InvalidRequest(f"n must be an integer from 1 to {MAX_CHOICES}", details={"field": "n"})
    return n


def _layer_order(name: str) -> tuple[int, str]:
    # past_key_values.10.key must come after .9.*, and key before value, to line up with present.* outputs
    _, layer, kind = name.split(".", 2)
    return int(layer) if layer.isdigit() else 0, kind


def _find_stop(text: str, stops: list[str], emitted: int) -> int | None:
    """Where the earliest stop sequence starts in ``text``; only text not yet emitted can hold a new match."""
    found = [i for s in stops if (i := text.find(s, max(0, emitted - len(s) + 1))) >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop sequence."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest
