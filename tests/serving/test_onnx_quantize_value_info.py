"""The fp32 file reaches quantize_dynamic without value_info entries for its weights: the dynamo
exporter writes them, and onnxruntime 1.30's quantize_dynamic (the GPU machine's) transposes a
Gemm's transB weight in place, after which such an entry contradicts it and shape inference
refuses the model. The whole export runs in tests/serving/test_onnx_int8.py; this graph is the
smallest that onnxruntime 1.30 refused, so the test fails there without the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fbdl_fast.serving import onnx as serving_onnx


def _gemm_head(weight: np.ndarray) -> onnx.ModelProto:
    """x (batch, 16) -> Gemm(x, W, transB=1) -> (batch, 4), W recorded in value_info as the
    dynamo exporter records it, plus one value_info entry for an activation."""
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["h"]),
            helper.make_node("Gemm", ["h", "w"], ["logits"], transB=1),
        ],
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(weight, "w")],
        value_info=[
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 16]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 16]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


def test_value_info_of_weights_is_dropped_and_the_rest_kept() -> None:
    model = serving_onnx.without_initializer_value_info(
        _gemm_head(np.ones((4, 16), dtype=np.float32))
    )
    assert [info.name for info in model.graph.value_info] == ["h"]
    assert [tensor.name for tensor in model.graph.initializer] == ["w"]


def test_a_transposed_gemm_weight_quantizes_and_runs(tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 16)).astype(np.float32)
    out = tmp_path / "int8.onnx"
    quantize_dynamic(
        serving_onnx.without_initializer_value_info(_gemm_head(weight)),
        out,
        per_channel=True,
        weight_type=QuantType.QInt8,
    )
    x = rng.standard_normal((3, 16)).astype(np.float32)
    (logits,) = serving_onnx.session(out.read_bytes()).run(None, {"x": x})
    expected = np.maximum(x, 0) @ weight.T
    # int8 weights and activations: within a few percent of the logits' scale, not exact.
    assert logits.shape == (3, 4)
    assert np.abs(logits - expected).max() <= 0.05 * np.abs(expected).max()
