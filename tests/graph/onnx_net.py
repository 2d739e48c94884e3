"""A small builder of hand-built ONNX graphs with seeded random weights, for the other-exporter tests."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


class Net:
    """Collects nodes and seeded float32 initializers of one hand-built graph."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def weight(self, array, hint: str = "w") -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, values, hint: str = "shape") -> str:
        return self.weight(np.asarray(values, np.int64), hint)

    def scalar(self, value: float) -> str:
        return self.weight(np.float32(value), "const")

    def random(self, shape, scale: float, hint: str = "w") -> str:
        return self.weight((self.rng.standard_normal(shape) * scale).astype(np.float32), hint)

    def op(self, op_type: str, *inputs: str, hint: str = "", outputs: int = 1, **attrs):
        names = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self.name(op_type), **attrs))
        return names[0] if outputs == 1 else names

    def conv(self, x: str, cin: int, cout: int, kernel: int = 1, stride: int = 1, scale: float = 1.0,
             bias: bool = True) -> str:
        weight = self.random([cout, cin, kernel, kernel], scale * np.sqrt(2.0 / (kernel * kernel * cin)), "conv_w")
        pad = kernel // 2
        inputs = [x, weight, self.random([cout], 0.1, "conv_b")] if bias else [x, weight]
        return self.op("Conv", *inputs, kernel_shape=[kernel, kernel], pads=[pad] * 4, strides=[stride, stride])

    def conv_bn_relu(self, x: str, cin: int, cout: int, stride: int = 1, bias: bool = True) -> str:
        y = self.conv(x, cin, cout, kernel=3, stride=stride, bias=bias)
        scale = self.weight((1 + 0.2 * self.rng.standard_normal(cout)).astype(np.float32), "bn_scale")
        bias = self.weight((0.1 * self.rng.standard_normal(cout)).astype(np.float32), "bn_bias")
        mean = self.weight((0.1 * self.rng.standard_normal(cout)).astype(np.float32), "bn_mean")
        var = self.weight((0.5 + self.rng.random(cout)).astype(np.float32), "bn_var")
        return self.op("Relu", self.op("BatchNormalization", y, scale, bias, mean, var, epsilon=1e-3))

    def silu(self, x: str, hint: str = "silu") -> str:
        """x * sigmoid(x), the two nodes paddle2onnx and tf2onnx write for SiLU / swish."""
        return self.op("Mul", x, self.op("Sigmoid", x), hint=hint)

    def batch_of(self, x: str, opset: int) -> str:
        """[N] of x read at run time: Shape -> Gather -> Unsqueeze."""
        batch = self.op("Gather", self.op("Shape", x), self.weight(np.array(0, np.int64)), axis=0)
        if opset >= 13:
            return self.op("Unsqueeze", batch, self.ints([0]))
        return self.op("Unsqueeze", batch, axes=[0])

    def model(self, inputs, outputs, opset: int, producer: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, producer + "_graph", inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name=producer)
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model
