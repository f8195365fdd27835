"""A real ONNX model that takes a few seconds per run, for crash and timeout tests.

``predictions`` is the sum of each row's features; a Loop of large MatMuls makes every run slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper


def build_slow_model(model_dir: Path, name: str = "slow", iterations: int = 400, size: int = 600) -> Path:
    path = Path(model_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    matrix = helper.make_tensor("m", TensorProto.FLOAT, [size, size],
                                (np.random.default_rng(0).random((size, size), dtype=np.float32) / size).ravel())
    body = helper.make_graph(
        [helper.make_node("MatMul", ["acc_in", "m_outer"], ["acc_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [size, size])],
    )
    nodes = [
        helper.make_node("Constant", [], ["m_outer"], value=matrix),
        helper.make_node("Constant", [], ["trips"], value=helper.make_tensor("t", TensorProto.INT64, [], [iterations])),
        helper.make_node("Constant", [], ["true"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
        helper.make_node("Loop", ["trips", "true", "m_outer"], ["spun"], body=body),
        helper.make_node("ReduceSum", ["spun"], ["spun_sum"], keepdims=0),
        helper.make_node("Mul", ["spun_sum", "zero"], ["nothing"]),
        helper.make_node("ReduceSum", ["float_input", "axes"], ["row_sum"], keepdims=0),
        helper.make_node("Add", ["row_sum", "nothing"], ["variable"]),
    ]
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("float_input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, ["N"])],
        initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
                     helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (path / "model.onnx").write_bytes(model.SerializeToString())
    (path / "config.json").write_text(json.dumps({"type": "predict", "device": "cpu", "max_batch_size": 1,
                                                  "task": "regression", "n_features": 4}))
    return path
