"""The harness of the rule tests: tiny models around one op, and the registry of their cases.

Each case is the op under test between the target t and the tensor y that a common head reads;
tests/graph/test_rules.py checks every case against PyTorch autograd. Cases of newer op families
live in rule_cases_*.py modules beside this one, imported by test_rules.py.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import torch
from onnx import helper

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
class Case:
    """The op under test between the target t and the tensor y that the common head reads."""

    op: str
    variant: str
    nodes: list[onnx.NodeProto]
    torch: TorchFunction
    init: dict[str, np.ndarray] = field(default_factory=dict)
    opset: int = 17
    shape: tuple[int, int, int] = (3, 6, 6)  # C, H, W of x and t
    scale: float = 1.0  # x = scale * standard normal
    xfail: str | None = None  # a known bug: the case must fail until it is fixed (strict)

    @property
    def id(self) -> str:
        return f"{self.op}-{self.variant}-opset{self.opset}"


CASES: dict[str, list[Case]] = {}


def case(op: str, variant: str, nodes: list[onnx.NodeProto], torch_function: TorchFunction, **kwargs) -> None:
    CASES.setdefault(op, []).append(Case(op, variant, nodes, torch_function, **kwargs))
