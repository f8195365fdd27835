"""The NumPy logit processors and the seeded sampler."""

from __future__ import annotations

import numpy as np
import pytest

from inferno_jobs.errors import InvalidRequest
from workers.sampling import (Sampler, SamplingParams, apply_openai_penalties, apply_repetition_penalty,
                              apply_temperature, log_softmax, most_likely, softmax, top_k_filter, top_p_filter)


def test_top_p_keeps_the_nucleus():
    # probabilities 0.5, 0.3, 0.15, 0.05
    logits = np.log(np.array([0.15, 0.5, 0.05, 0.3]))
    kept = np.isfinite(top_p_filter(logits, 0.75))
    assert kept.tolist() == [False, True, False, True]  # 0.5 + 0.3 reaches 0.75
    assert np.isfinite(top_p_filter(logits, 0.8)).tolist() == [False, True, False, True]
    assert np.isfinite(top_p_filter(logits, 0.81)).tolist() == [True, True, False, True]
    assert np.isfinite(top_p_filter(logits, 0.0)).sum() == 1  # the most likely token always stays
    assert np.array_equal(top_p_filter(logits, 1.0), logits.astype(np.float32))


def test_top_k_keeps_the_k_largest():
    logits = np.array([1.0, 5.0, 3.0, 4.0])
    assert np.isfinite(top_k_filter(logits, 2)).tolist() == [False, True, False, True]
    assert np.isfinite(top_k_filter(logits, 0)).all()


def test_repetition_penalty_lowers_seen_tokens_whatever_their_sign():
    logits = np.array([2.0, -1.0, 3.0])
    out = apply_repetition_penalty(logits, np.array([0, 1, 1]), 2.0)
    assert out.tolist() == [1.0, -2.0, 3.0]
    assert logits.tolist() == [2.0, -1.0, 3.0]  # the input is not modified
    assert np.array_equal(apply_repetition_penalty(logits, np.array([0]), 1.0), logits)


def test_presence_and_frequency_penalties_follow_openai():
    logits = np.array([1.0, 1.0, 1.0, 1.0], dtype=np.float32)
    out = apply_openai_penalties(logits, np.array([2, 2, 2, 1]), presence=0.5, frequency=0.25)
    assert np.allclose(out, [1.0, 1.0 - 0.5 - 0.25, 1.0 - 0.5 - 0.75, 1.0])
    assert np.allclose(apply_openai_penalties(logits, np.array([0]), -1.0, 0.0), [2.0, 1.0, 1.0, 1.0])
    # Greedy decoding steers away from a token it keeps producing; the prompt does not count.
    logits = np.array([3.0, 2.5, 0.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0, frequency_penalty=1.0))
    assert sampler.next_token(logits, np.array([0, 0, 0]), np.array([], dtype=np.int64)) == 0
    assert sampler.next_token(logits, np.array([0, 0]), np.array([0])) == 1
    assert SamplingParams.from_input({"presence_penalty": -2, "frequency_penalty": 2}).frequency_penalty == 2


def test_temperature_sharpens_and_flattens():
    logits = np.array([1.0, 2.0, 3.0])
    base = softmax(logits).max()
    assert softmax(apply_temperature(logits, 0.5)).max() > base > softmax(apply_temperature(logits, 2.0)).max()


def test_same_seed_same_tokens_and_greedy_is_argmax():
    logits = np.random.default_rng(0).normal(size=50)
    first = Sampler(SamplingParams(seed=5))
    second = Sampler(SamplingParams(seed=5))
    assert [first.next_token(logits, np.array([])) for _ in range(20)] == \
        [second.next_token(logits, np.array([])) for _ in range(20)]
    assert Sampler(SamplingParams(temperature=0)).next_token(logits, np.array([])) == int(np.argmax(logits))
    assert Sampler(SamplingParams(top_k=1, temperature=1.5, seed=3)).next_token(logits, np.array([])) == \
        int(np.argmax(logits))


def test_sampled_tokens_stay_in_the_nucleus():
    logits = np.log(np.array([0.6, 0.3, 0.05, 0.05]))
    sampler = Sampler(SamplingParams(top_p=0.85, seed=0))
    assert {sampler.next_token(logits, np.array([])) for _ in range(200)} == {0, 1}


@pytest.mark.parametrize("bad", [{"temperature": 2.5}, {"temperature": -0.1}, {"top_p": 1.5}, {"top_k": -1},
                                 {"top_k": 2.5}, {"repetition_penalty": 0}, {"seed": "7"}, {"seed": -1},
                                 {"temperature": "hot"}, {"temperature": True}, {"presence_penalty": 2.5},
                                 {"frequency_penalty": -3}])
def test_invalid_parameters_are_rejected(bad):
    with pytest.raises(InvalidRequest):
        SamplingParams.from_input(bad)


def test_defaults():
    params = SamplingParams.from_input({})
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty, params.seed) == \
        (1.0, 1.0, 0, 1.0, None)
    assert SamplingParams.from_input({"temperature": 0}).greedy


def test_log_softmax_is_the_log_of_the_probabilities_even_for_huge_logits():
    logits = np.array([1.0, 2.0, 3.0, -1.0], dtype=np.float32)
    assert np.allclose(log_softmax(logits), np.log(softmax(logits)))
    assert np.isclose(np.exp(log_softmax(logits)).sum(), 1.0)
    huge = log_softmax(np.array([1000.0, 0.0]))  # no overflow: exp(1000) would be inf
    assert np.isfinite(huge).all() and huge[0] == pytest.approx(0.0) and huge[1] == pytest.approx(-1000.0)


def test_most_likely_ranks_descending_and_breaks_ties_by_id():
    logprobs = np.log(np.array([0.1, 0.3, 0.05, 0.3, 0.25]))
    assert most_likely(logprobs, 3).tolist() == [1, 3, 4]
    assert most_likely(logprobs, 1).tolist() == [1]
    assert most_likely(logprobs, 0).tolist() == []
    assert most_likely(logprobs, 20).tolist() == [1, 3, 4, 0, 2]  # k past the vocabulary: all of it
