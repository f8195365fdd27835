"""Runs sentence-embedding ONNX encoders (BERT-style, e.g. all-MiniLM-L6-v2): ``embedding`` jobs.

The model is a Hugging Face / optimum encoder export (``input_ids``, ``attention_mask``, optional
``token_type_ids`` -> ``last_hidden_state``). Pooling happens here, as sentence-transformers does it: the mean of
the token vectors under the attention mask (or the ``[CLS]`` vector with ``"pooling": "cls"``), then L2
normalisation unless ``"normalize": false``. A model whose first output is already 2-D (pooled) is only normalised.
"""

from __future__ import annotations

import numpy as np

from inferno_jobs import codec
from inferno_jobs.errors import InfernoError, InvalidRequest
from inferno_jobs.vectors import to_base64
from workers.runner import Runner
from workers.tokenizer import load_tokenizer

DEFAULT_MAX_INPUT_CHARS = 8000
DEFAULT_MAX_ITEMS = 2048


class EmbeddingRunner(Runner):
    """All texts of all jobs of a micro-batch are embedded together and split back per job.

    Texts are sorted by length and run in chunks of at most ``max_batch_size``, each padded only to its own
    longest text, so one long text does not make every short one pay for its padding. Results do not depend
    on which texts share a chunk: padding is masked out of attention and pooling.
    """

    model_type = "embedding"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        options = self.model.options
        self.max_tokens = int(options.get("max_tokens", 256))
        self.max_input_chars = int(options.get("max_input_chars", DEFAULT_MAX_INPUT_CHARS))
        self.max_items = int(options.get("max_input_items", DEFAULT_MAX_ITEMS))
        self.pooling = options.get("pooling", "mean")
        self.normalize = bool(options.get("normalize", True))
        self.tokenizer = load_tokenizer(self.model.path)
        # The runner pads per chunk; a tokenizer.json that pads to a fixed length would waste that.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_tokens)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_name = self.session.get_outputs()[0].name

    def _texts(self, item: dict) -> list[str]:
        """The texts of one job input, validated; raises :class:`InvalidRequest`."""
        value = item.get("input") if isinstance(item, dict) else None
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts:
            raise InvalidRequest("input must be a non-empty string or a non-empty list of strings",
                                 details={"field": "input"})
        if len(texts) > self.max_items:
            raise InvalidRequest(f"input has {len(texts)} items; at most {self.max_items} are allowed",
                                 details={"field": "input"})
        for i, text in enumerate(texts):
            field = "input" if isinstance(value, str) else f"input[{i}]"
            if not isinstance(text, str):
                raise InvalidRequest(f"{field} must be a string", details={"field": field})
            if not text.strip():
                raise InvalidRequest(f"{field} is empty", details={"field": field})
            if len(text) > self.max_input_chars:
                raise InvalidRequest(f"{field} has {len(text)} characters; at most {self.max_input_chars} are allowed",
                                     details={"field": field})
        return texts

    def embed(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Embeddings [len(texts), dim] (float32) and the token count of each text."""
        encodings = self.tokenizer.encode_batch(texts)
        lengths = [len(e.ids) for e in encodings]
        order = np.argsort(lengths, kind="stable")
        out: np.ndarray | None = None
        step = max(1, self.model.max_batch_size)
        for start in range(0, len(order), step):
            chunk = order[start:start + step]
            vectors = self._run([encodings[i] for i in chunk])
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[chunk] = vectors
        return out, lengths

    def _run(self, encodings) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            ids[row, :len(enc.ids)] = enc.ids
            mask[row, :len(enc.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(self.session.run([self.output_name], feed)[0], dtype=np.float32)
        if hidden.ndim == 3:
            hidden = self._pool(hidden, mask)
        if self.normalize:
            # sentence-transformers' Normalize: x / max(||x||, 1e-12)
            hidden = hidden / np.maximum(np.linalg.norm(hidden, axis=1, keepdims=True), 1e-12)
        return hidden

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask[..., None].astype(np.float32)
        return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)

    def run_batch(self, inputs: list[dict]) -> list[dict | InfernoError]:
        """Embed every valid job of the micro-batch in one pass; invalid jobs get their own error."""
        parts: list[list[str] | InfernoError] = []
        for item in inputs:
            try:
                parts.append(self._texts(item))
            except InvalidRequest as exc:
                parts.append(exc)
        texts = [t for p in parts if isinstance(p, list) for t in p]
        if not texts:
            return parts  # type: ignore[return-value]
        vectors, lengths = self.embed(texts)
        rows = float32_rows(vectors)
        results: list[dict | InfernoError] = []
        offset = 0
        dim = int(vectors.shape[1])
        for item, part in zip(inputs, parts):
            if not isinstance(part, list):
                results.append(part)
                continue
            n = len(part)
            offset += n
            wanted = item.get("dimensions")
            if wanted is not None and wanted != dim:  # no truncation here: only the model's own size
                results.append(InvalidRequest(f"dimensions must be the model's own ({dim}); other sizes are not "
                                              "supported", details={"field": "dimensions"}))
                continue
            tokens = sum(lengths[offset - n:offset])
            if item.get("encoding_format") == "base64":
                embeddings = [to_base64(v) for v in vectors[offset - n:offset]]
            else:
                embeddings = rows[offset - n:offset]
            results.append({"embeddings": embeddings, "dim": dim,
                            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
        return results


def float32_rows(vectors: np.ndarray) -> list[list[float]]:
    """The rows as Python floats, each the shortest decimal that reads back as the same float32 (as orjson writes a
    float32 array). ``tolist()`` gives float64 values whose 17 digits carry nothing the model computed: a stored
    384-float vector is ~4.7 KB this way instead of ~8 KB, in Redis and in every response, and each value still
    converts back to its float32 exactly (``encoding_format: base64`` sends those bytes)."""
    return codec.loads(codec.dumps(np.ascontiguousarray(vectors, dtype=np.float32)))
