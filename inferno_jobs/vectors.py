"""Embedding vectors on the wire: OpenAI's ``encoding_format: base64`` is the base64 of a vector's little-endian
float32 bytes (what the official clients decode with ``numpy.frombuffer(..., dtype="<f4")``)."""

from __future__ import annotations

import base64

import numpy as np


def to_base64(vector) -> str:
    """One vector (a float list or array) as base64 of its little-endian float32 bytes."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def from_base64(text: str) -> np.ndarray:
    """The float32 vector of a :func:`to_base64` string."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4")
