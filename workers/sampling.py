"""Picking the next token from logits: pure NumPy logit processors and a seeded sampler.

The processors follow the Hugging Face ``generate`` definitions, so a model behaves here as its users expect:

- ``repetition_penalty`` (CTRL paper): a seen token's positive logit is divided by the penalty, a negative one
  multiplied, so penalties > 1 make repeats less likely whatever the logit's sign;
- ``presence_penalty`` and ``frequency_penalty`` (OpenAI's definitions): a token already generated loses
  ``presence_penalty`` once plus ``frequency_penalty`` per time it was generated (the prompt does not count);
  negative values make repeats more likely;
- ``temperature``: logits divided by it (< 1 sharpens, > 1 flattens); 0 means greedy;
- ``top_k``: keep the k most likely tokens (0 = off);
- ``top_p``: keep the smallest set of most likely tokens whose probability reaches p (1 = off).

Greedy decoding (temperature 0 or top_k 1) is a plain argmax after the penalties, so it never consumes random
numbers and is identical with or without a seed.

:func:`log_softmax` and :func:`most_likely` serve ``logprobs``, which reports the model's raw logits (before any
processor here), as vLLM does by default; they never touch the sampler, so asking for them changes no text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inferno_jobs.errors import InvalidRequest


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """Make the tokens in ``seen`` less likely (``penalty`` > 1) or more likely (< 1); returns a new array."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if penalty == 1.0 or len(seen) == 0:
        return out
    ids = np.unique(np.asarray(seen, dtype=np.int64))
    picked = out[ids]
    out[ids] = np.where(picked > 0, picked / penalty, picked * penalty)
    return out


def apply_openai_penalties(logits: np.ndarray, generated: np.ndarray, presence: float,
                           frequency: float) -> np.ndarray:
    """Subtract ``presence`` from the logit of every token in ``generated`` and ``frequency`` once per time it
    occurs there; returns a new array."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if (presence == 0 and frequency == 0) or len(generated) == 0:
        return out
    ids, counts = np.unique(np.asarray(generated, dtype=np.int64), return_counts=True)
    out[ids] -= np.float32(presence) + np.float32(frequency) * counts.astype(np.float32)
    return out


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Divide by ``temperature`` (> 0)."""
    return np.asarray(logits, dtype=np.float32) / np.float32(temperature)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` largest logits, set the others to -inf (``k`` <= 0 or >= vocab: unchanged)."""
    logits = np.asarray(logits, dtype=np.float32)
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    threshold = np.partition(logits, -k)[-k]
    return np.where(logits < threshold, -np.inf, logits).astype(np.float32)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the nucleus: the fewest most likely tokens whose probabilities sum to at least ``p``."""
    logits = np.asarray(logits, dtype=np.float32)
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, kind="stable")
    probs = softmax(logits[order])
    # A token stays if the mass before it is still short of p; the most likely token always stays.
    before = np.cumsum(probs) - probs
    keep = before < p
    keep[0] = True
    out = np.full_like(logits, -np.inf)
    out[order[keep]] = logits[order[keep]]
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis (-inf entries get probability 0)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log probabilities over the last axis, in float64 (what ``logprobs`` reports of the raw logits)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def most_likely(logprobs: np.ndarray, k: int) -> np.ndarray:
    """The ids of the ``k`` largest entries of 1-D ``logprobs``, largest first (ties: the lower id first)."""
    k = min(k, logprobs.shape[-1])
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    top = np.argpartition(-logprobs, k - 1)[:k]
    return top[np.lexsort((top, -logprobs[top]))]


def _number(item: dict, key: str, default, low: float, high: float, kind=float):
    value = item.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise InvalidRequest(f"{key} must be a number", details={"field": key})
    if not low <= value <= high:
        raise InvalidRequest(f"{key} must be between {low} and {high}", details={"field": key})
    return kind(value)


@dataclass(frozen=True)
class SamplingParams:
    """The sampling fields of a completion or chat input, validated."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None

    @classmethod
    def from_input(cls, item: dict) -> "SamplingParams":
        """Read and validate ``temperature`` (0..2), ``top_p`` (0..1), ``top_k`` (>= 0),
        ``repetition_penalty`` (> 0, at most 10), ``presence_penalty`` and ``frequency_penalty`` (-2..2) and
        ``seed`` (an integer) from a job input; raises :class:`InvalidRequest`."""
        seed = item.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise InvalidRequest("seed must be a non-negative integer", details={"field": "seed"})
        penalty = _number(item, "repetition_penalty", 1.0, 0.0, 10.0)
        if penalty <= 0:
            raise InvalidRequest("repetition_penalty must be greater than 0", details={"field": "repetition_penalty"})
        return cls(temperature=_number(item, "temperature", 1.0, 0.0, 2.0),
                   top_p=_number(item, "top_p", 1.0, 0.0, 1.0),
                   top_k=_number(item, "top_k", 0, 0, 1_000_000, int),
                   repetition_penalty=penalty, presence_penalty=_number(item, "presence_penalty", 0.0, -2.0, 2.0),
                   frequency_penalty=_number(item, "frequency_penalty", 0.0, -2.0, 2.0), seed=seed)

    @property
    def greedy(self) -> bool:
        """True when the choice is a deterministic argmax."""
        return self.temperature == 0 or self.top_k == 1


class Sampler:
    """Chooses tokens for one generation; its NumPy ``Generator`` is seeded once, so a seed fixes the text."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def process(self, logits: np.ndarray, seen: np.ndarray, generated: np.ndarray | None = None) -> np.ndarray:
        """The processed logits (penalties, temperature, top-k, top-p) of one position: ``seen`` is every id so far
        (prompt included), ``generated`` the ids this generation produced."""
        p = self.params
        out = apply_repetition_penalty(logits, seen, p.repetition_penalty)
        if generated is not None:
            out = apply_openai_penalties(out, generated, p.presence_penalty, p.frequency_penalty)
        if p.greedy:
            return out
        out = top_k_filter(apply_temperature(out, p.temperature), p.top_k)
        return top_p_filter(out, p.top_p)

    def next_token(self, logits: np.ndarray, seen: np.ndarray, generated: np.ndarray | None = None) -> int:
        """The next token id for the 1-D ``logits`` of the last position, given the ids ``seen`` so far (and the
        ``generated`` ones among them, for the presence and frequency penalties)."""
        out = self.process(logits, seen, generated)
        if self.params.greedy:
            return int(np.argmax(out))
        probs = softmax(out)
        return int(self.rng.choice(len(probs), p=probs))
