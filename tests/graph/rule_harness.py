"""The harness of the rule tests: tiny models around one op, and the registry of their cases.

Each case is the op under test between the target t and the tensor y that a common head reads;
tests/graph/test_rules.py checks every case against PyTorch autograd. Cases of newer op families
live in rule_cases_*.py modules beside this one, imported by test_rules.py. The dynamic-shape rule
tests (test_rules_dynamic_*.py) build their cases on OpCase and share the runners at the end.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import helper

from onnx_gradcam.graph.rules import RULES

CLASSES = 5
TARGET_CLASS = np.array([-1, 1], np.int64)  # the top class for image 0, class 1 for image 1
GRADIENT_TOLERANCE = 1e-4  # max abs error relative to the oracle gradient's max abs value
FORWARD_TOLERANCE = 1e-4
PROVIDERS = ["CPUExecutionProvider"]

_rng = np.random.default_rng(20261125)  # weights, drawn in file order at import


def rand(*shape: int, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Seeded float32 weights: standard normal, or uniform in [low, high)."""
    if low is not None:
        return _rng.uniform(low, high, shape).astype(np.float32)
    return _rng.standard_normal(shape).astype(np.float32)


def ints(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def scalar(value: float) -> np.ndarray:
    return np.array(value, np.float32)


_node_count = itertools.count()


def node(op_type: str, inputs: list[str], outputs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node(op_type, inputs, outputs, name=f"{op_type.lower()}_{next(_node_count)}", **attrs)


TorchFunction = Callable[[torch.Tensor, dict], torch.Tensor]


@dataclass
class OpCase:
    """The op under test: its nodes from the target t to the tensor y, the same function in torch, and
    the initializers and opset of its model (keyword-only, so subclasses may add positional fields)."""

    op: str
    variant: str
    nodes: list[onnx.NodeProto]
    torch: TorchFunction
    init: dict[str, np.ndarray] = field(default_factory=dict, kw_only=True)
    opset: int = field(default=17, kw_only=True)

    @property
    def id(self) -> str:
        return f"{self.op}-{self.variant}-opset{self.opset}"

    def torch_weights(self) -> dict[str, torch.Tensor]:
        """The case's initializers as torch tensors, floats in float64."""
        return {name: torch.from_numpy(value.astype(np.float64) if value.dtype.kind == "f" else value)
                for name, value in self.init.items()}


@dataclass
class Case(OpCase):
    """The op under test between the target t and the tensor y that the common head reads."""

    shape: tuple[int, int, int] = (3, 6, 6)  # C, H, W of x and t
    scale: float = 1.0  # x = scale * standard normal
    xfail: str | None = None  # a known bug: the case must fail until it is fixed (strict)


CASES: dict[str, list[Case]] = {}


def case(op: str, variant: str, nodes: list[onnx.NodeProto], torch_function: TorchFunction, **kwargs) -> None:
    CASES.setdefault(op, []).append(Case(op, variant, nodes, torch_function, **kwargs))


# ---------------------------------------------------------------- runners shared by the rule tests


def cpu_session(model: onnx.ModelProto) -> onnxruntime.InferenceSession:
    """A one-thread CPU session of model (tiny models: threads only add start-up time)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=PROVIDERS)


def run(model: onnx.ModelProto, feeds: dict, outputs: list[str]) -> list[np.ndarray]:
    """The named outputs of model on feeds, in a one-thread CPU session."""
    return cpu_session(model).run(outputs, feeds)


def max_relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| as a fraction of max |expected|."""
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))


def count_rule_calls(monkeypatch: pytest.MonkeyPatch, op: str) -> list[str]:
    """Wrap op's rule in RULES for one test; return the names of the op nodes it is applied to, filled as it runs."""
    calls = []
    original_rule = RULES[op]

    def counting_rule(forward_node, *args):
        if forward_node.op_type == op:
            calls.append(forward_node.name)
        return original_rule(forward_node, *args)

    monkeypatch.setitem(RULES, op, counting_rule)
    return calls


def linear_asymmetric(t: torch.Tensor, scales: tuple[float, float]) -> torch.Tensor:
    """Linear resize of axes 2 and 3 with x_in = x_out / scale (asymmetric coordinates, Upsample's), in torch ops."""
    for axis, scale in zip((2, 3), scales):
        length = t.shape[axis]
        source = torch.arange(int(length * scale), dtype=torch.float64) / scale
        low = source.floor().clamp(max=length - 1).long()
        high = (low + 1).clamp(max=length - 1)
        weight = (source - low).reshape([-1] + [1] * (3 - axis))
        t = t.index_select(axis, low) * (1 - weight) + t.index_select(axis, high) * weight
    return t
