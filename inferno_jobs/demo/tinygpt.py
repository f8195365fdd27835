"""Builds the ``tiny-gpt`` demo completion model: a ~0.5M-parameter GPT-2-style decoder trained at build time.

The model is trained with torch (a build-time-only dependency) for a fixed number of steps on
``inferno_jobs/demo/data/fables.txt`` (fables retold for this project and traditional nursery rhymes), with a
byte-level BPE tokenizer trained by ``tokenizers`` on the same text. Seeds are fixed, so a build on the same
torch version gives the same weights. The ONNX graph is then written directly with ``onnx.helper`` in the
Hugging Face / optimum "decoder with past" form, which the generation runner (and any optimum-exported decoder)
uses:

- inputs ``input_ids`` [batch, seq], ``attention_mask`` [batch, past + seq], ``position_ids`` [batch, seq],
  ``past_key_values.N.key`` / ``.value`` [batch, heads, past, head_dim] (past may be 0 on the first step);
- outputs ``logits`` [batch, seq, vocab], ``present.N.key`` / ``.value`` [batch, heads, past + seq, head_dim].

Usage::

    python -m inferno_jobs.demo.tinygpt MODEL_DIR
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NAME = "tiny-gpt"
DATA = Path(__file__).parent / "data" / "fables.txt"
OPSET, IR_VERSION = 17, 8
SEED = 1234
EOS = "<|endoftext|>"
ROLE_TAGS = ["<|system|>", "<|user|>", "<|assistant|>"]
# The same format as the runner's documented default, written as a template to show the config key.
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

HPARAMS = {"vocab_size": 1024, "context_length": 256, "num_layers": 3, "num_heads": 4, "hidden_size": 96}
# Always the full number of steps (no time cap): the same build gives the same model, whatever the machine's load.
TRAIN = {"steps": 400, "batch_size": 16, "seq_len": 64, "lr": 8e-3}


def documents(text: str) -> list[str]:
    """Each ``## Title`` piece of the corpus as a plain document and as a one-turn chat."""
    docs = []
    for block in text.split("## ")[1:]:
        title, _, body = block.strip().partition("\n")
        body = body.strip()
        ask = f"Say the rhyme {title}." if "\n" in body else f"Tell me the fable of {title}."
        docs.append(f"{title}\n{body}\n")
        docs.append(f"<|user|>\n{ask}\n<|assistant|>\n{body}\n")
        docs.append(f"<|user|>\nTell me a story.\n<|assistant|>\n{body}\n")
    return docs


def train_tokenizer(docs: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2 style: any text encodes, nothing is unknown)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS, *ROLE_TAGS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(docs, trainer=trainer)
    return tokenizer


def _torch_model(vocab: int, hp: dict):
    """The torch twin of the ONNX graph below: pre-LN GPT-2 blocks, exact GELU, tied embeddings."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    d, heads = hp["hidden_size"], hp["num_heads"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.q, self.k, self.v, self.proj = (nn.Linear(d, d) for _ in range(4))
            self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            b, s, _ = x.shape
            h = self.ln1(x)
            q, k, v = (lin(h).view(b, s, heads, d // heads).transpose(1, 2) for lin in (self.q, self.k, self.v))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(b, s, d))
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class TinyGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(hp["context_length"], d)
            self.blocks = nn.ModuleList(Block() for _ in range(hp["num_layers"]))
            self.ln_f = nn.LayerNorm(d)
            for p in self.parameters():
                if p.dim() > 1:
                    nn.init.normal_(p, std=0.02)

        def forward(self, ids):
            x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
            for block in self.blocks:
                x = block(x)
            return self.ln_f(x) @ self.wte.weight.T

    return TinyGPT()


def train(docs: list[str], tokenizer, hp: dict, cfg: dict):
    """Train on random windows of the shuffled, EOS-separated documents; returns (model, stats)."""
    import torch
    from torch.nn import functional as F

    torch.manual_seed(SEED)
    # A fixed thread count fixes the order of float reductions, so the trained weights repeat run to run.
    torch.set_num_threads(2)
    rng = random.Random(SEED)
    eos = tokenizer.token_to_id(EOS)
    stream: list[int] = []
    for _ in range(8):  # several shuffled passes, so windows cross document boundaries in varied ways
        for doc in rng.sample(docs, len(docs)):
            stream += tokenizer.encode(doc).ids + [eos]
    data = torch.tensor(stream)
    model = _torch_model(tokenizer.get_vocab_size(), hp)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["steps"], pct_start=0.1)
    n, started, loss = cfg["seq_len"], time.monotonic(), torch.tensor(0.0)
    step = 0
    for step in range(1, cfg["steps"] + 1):
        starts = torch.randint(0, len(data) - n - 1, (cfg["batch_size"],))
        batch = torch.stack([data[s:s + n + 1] for s in starts])
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    stats = {"steps": step, "seconds": round(time.monotonic() - started, 1), "final_loss": round(loss.item(), 3),
             "params": sum(p.numel() for p in model.parameters()), "train_tokens": len(stream)}
    return model.eval(), stats


class _Graph:
    """A few helpers over ``onnx.helper`` (node naming, initializers)."""

    def __init__(self, weights: dict):
        self.weights, self.nodes, self.initializers, self._count = weights, [], [], 0

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        from onnx import helper

        self._count += 1
        out = out or f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def linear(self, x: str, prefix: str) -> str:
        w = self.const(f"{prefix}.wt", np.ascontiguousarray(self.weights[f"{prefix}.weight"].T))
        return self.op("Add", self.op("MatMul", x, w), self.const(f"{prefix}.bias", self.weights[f"{prefix}.bias"]))

    def layer_norm(self, x: str, prefix: str) -> str:
        return self.op("LayerNormalization", x, self.const(f"{prefix}.w", self.weights[f"{prefix}.weight"]),
                       self.const(f"{prefix}.b", self.weights[f"{prefix}.bias"]), axis=-1, epsilon=1e-5)


def export_onnx(weights: dict, hp: dict, out: Path) -> None:
    """Write the decoder-with-past graph for the numpy ``weights`` (torch state_dict names) to ``out``."""
    import onnx
    from onnx import TensorProto, helper

    d, heads, layers = hp["hidden_size"], hp["num_heads"], hp["num_layers"]
    head_dim = d // heads
    g = _Graph(weights)
    for name, value in {"c_i0": np.int64(0), "c_i1": np.int64(1), "c_zero": np.float32(0), "c_half": np.float32(.5),
                        "c_one": np.float32(1), "c_inv_sqrt2": np.float32(1 / np.sqrt(2)),
                        "c_scale": np.float32(1 / np.sqrt(head_dim)), "c_min": np.float32(np.finfo(np.float32).min),
                        "c_heads": np.array([0, 0, heads, head_dim], np.int64), "c_merge": np.array([0, 0, d], np.int64),
                        "c_ax0": np.array([0], np.int64), "c_ax1": np.array([1], np.int64),
                        "c_ax12": np.array([1, 2], np.int64)}.items():
        g.const(name, value)
    wte = g.const("wte", weights["wte.weight"])
    x = g.op("Add", g.op("Gather", wte, "input_ids", axis=0),
             g.op("Gather", g.const("wpe", weights["wpe.weight"]), "position_ids", axis=0))

    # Query i of this call sits at absolute position past + i and may see keys 0..past + i, padding excluded.
    seq = g.op("Gather", g.op("Shape", "input_ids"), "c_i1", axis=0)
    total = g.op("Gather", g.op("Shape", "attention_mask"), "c_i1", axis=0)
    rows = g.op("Unsqueeze", g.op("Add", g.op("Range", "c_i0", seq, "c_i1"), g.op("Sub", total, seq)), "c_ax1")
    cols = g.op("Unsqueeze", g.op("Range", "c_i0", total, "c_i1"), "c_ax0")
    padding = g.op("Cast", g.op("Unsqueeze", "attention_mask", "c_ax12"), to=TensorProto.BOOL)
    allowed = g.op("And", g.op("LessOrEqual", cols, rows), padding)
    # The most negative float, not -inf: a fully padded query row then softmaxes to uniform instead of NaN.
    bias = g.op("Where", allowed, "c_zero", "c_min")

    for i in range(layers):
        p = f"blocks.{i}"
        h = g.layer_norm(x, f"{p}.ln1")
        q, k, v = (g.op("Transpose", g.op("Reshape", g.linear(h, f"{p}.{n}"), "c_heads"), perm=[0, 2, 1, 3])
                   for n in ("q", "k", "v"))
        k = g.op("Concat", f"past_key_values.{i}.key", k, axis=2, out=f"present.{i}.key")
        v = g.op("Concat", f"past_key_values.{i}.value", v, axis=2, out=f"present.{i}.value")
        scores = g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), "c_scale")
        ctx = g.op("MatMul", g.op("Softmax", g.op("Add", scores, bias), axis=-1), v)
        ctx = g.op("Reshape", g.op("Transpose", ctx, perm=[0, 2, 1, 3]), "c_merge")
        x = g.op("Add", x, g.linear(ctx, f"{p}.proj"))
        f = g.linear(g.layer_norm(x, f"{p}.ln2"), f"{p}.fc")
        f = g.op("Mul", g.op("Mul", f, "c_half"), g.op("Add", g.op("Erf", g.op("Mul", f, "c_inv_sqrt2")), "c_one"))
        x = g.op("Add", x, g.linear(f, f"{p}.out"))
    x = g.layer_norm(x, "ln_f")
    g.op("MatMul", x, g.const("wte_t", np.ascontiguousarray(weights["wte.weight"].T)), out="logits")

    vocab = weights["wte.weight"].shape[0]
    kv = ["batch_size", heads, "past_sequence_length", head_dim]
    present = ["batch_size", heads, "total_sequence_length", head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch_size", "total_sequence_length"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", vocab])]
    for i in range(layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, present))
    model = helper.make_model(helper.make_graph(g.nodes, "tiny-gpt", inputs, outputs, g.initializers),
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="inferno-jobs")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def _check_export(model, path: Path, hp: dict, vocab: int) -> None:
    # Catch a graph that drifts from the trained model: compare logits, and the KV path against full recompute.
    import onnxruntime as ort
    import torch

    ids = np.random.default_rng(0).integers(0, vocab, (1, 12))
    with torch.no_grad():
        expected = model(torch.from_numpy(ids)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    head_dim = hp["hidden_size"] // hp["num_heads"]
    empty = {f"past_key_values.{i}.{k}": np.zeros((1, hp["num_heads"], 0, head_dim), np.float32)
             for i in range(hp["num_layers"]) for k in ("key", "value")}
    full = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                              "position_ids": np.arange(12)[None], **empty})
    assert np.abs(full[0] - expected).max() < 1e-3, "ONNX logits differ from the trained model"
    past = dict(zip(empty, session.run(None, {"input_ids": ids[:, :11], "attention_mask": np.ones((1, 11), np.int64),
                                              "position_ids": np.arange(11)[None], **empty})[1:]))
    step = session.run(["logits"], {"input_ids": ids[:, 11:], "attention_mask": np.ones_like(ids),
                                    "position_ids": np.array([[11]]), **past})[0]
    assert np.abs(step[0, -1] - full[0][0, -1]).max() < 1e-3, "KV-cache step differs from full recompute"


def build(model_dir: Path, force: bool = False, steps: int | None = None) -> Path:
    """Create ``model_dir/tiny-gpt/`` (model.onnx, tokenizer.json, config.json); returns that directory.

    Needs torch (build time only). Skips the work when the model is already there, unless ``force``.
    ``steps`` overrides the number of training steps (fewer: faster, less readable output).
    """
    model_dir = Path(model_dir)
    target = model_dir / NAME
    if not force and (target / "config.json").is_file() and (target / "model.onnx").is_file():
        return target
    cfg = {**TRAIN, **({"steps": steps} if steps else {})}
    docs = documents(DATA.read_text(encoding="utf-8"))
    tokenizer = train_tokenizer(docs, HPARAMS["vocab_size"])
    model, stats = train(docs, tokenizer, HPARAMS, cfg)
    print(f"trained {NAME}: {stats['params']:,} params, {stats['steps']} steps in {stats['seconds']}s, "
          f"loss {stats['final_loss']}")
    model_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=model_dir))
    try:
        weights = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
        export_onnx(weights, HPARAMS, work / "model.onnx")
        _check_export(model, work / "model.onnx", HPARAMS, tokenizer.get_vocab_size())
        tokenizer.save(str(work / "tokenizer.json"))
        config = {"type": "completion", "device": "cpu", "max_batch_size": 16, "max_batch_wait_ms": 5,
                  "context_length": HPARAMS["context_length"], "num_layers": HPARAMS["num_layers"],
                  "num_heads": HPARAMS["num_heads"], "head_dim": HPARAMS["hidden_size"] // HPARAMS["num_heads"],
                  "hidden_size": HPARAMS["hidden_size"], "vocab_size": tokenizer.get_vocab_size(),
                  "eos_token": EOS, "chat_template": CHAT_TEMPLATE, "use_cache": True,
                  "training": {**stats, "corpus": "inferno_jobs/demo/data/fables.txt", "seed": SEED}}
        (work / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        work.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


if __name__ == "__main__":  # pragma: no cover - a convenience for operators
    build(Path(sys.argv[1] if len(sys.argv) > 1 else "models"), force="--force" in sys.argv)
