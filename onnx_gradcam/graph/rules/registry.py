"""The rule table: op type -> rule, with each op's facts declared once, at its rule."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import onnx

from ...errors import UnsupportedOpError
from ..builder import GraphBuilder

Grads = list[Optional[str]]
Rule = Callable[[onnx.NodeProto, Grads, Sequence[bool], GraphBuilder], Grads]


@dataclass(frozen=True)
class OpFacts:
    """What the target locator may assume about an op."""

    differentiable: bool = True
    layout_preserving: bool = False  # a 4-D output has the layout of the 4-D input (elementwise, per channel)
    channels_first: bool = False  # a 4-D output is NCHW whatever the input (Conv, pooling)


class RuleTable(dict):
    """op type -> rule; a derived table (guided backpropagation) overrides some rules of its parent.

    Lookups in a derived table fall through to the parent at call time, so rules registered (or
    patched) on the parent later are seen by both.
    """

    def __init__(self, parent: Optional["RuleTable"] = None) -> None:
        super().__init__()
        self.parent = parent
        self.facts: dict[str, OpFacts] = {} if parent is None else parent.facts

    def lookup(self, op_type: str) -> Optional[Rule]:
        """The rule for op_type, or None."""
        if op_type in self:
            return self[op_type]
        return self.parent.lookup(op_type) if self.parent is not None else None

    def derive(self, overrides: dict[str, Rule]) -> "RuleTable":
        """A table with these rules replaced and every other rule taken from this one."""
        table = RuleTable(parent=self)
        table.update(overrides)
        return table

    def supported(self) -> list[str]:
        """Every op type with a rule, sorted."""
        names = set(self) | (set(self.parent.supported()) if self.parent is not None else set())
        return sorted(names)


RULES = RuleTable()


def rule(*op_types: str, layout_preserving: bool = False, channels_first: bool = False,
         differentiable: bool = True, table: RuleTable = RULES) -> Callable[[Rule], Rule]:
    """Register a function as the rule for op_types, with the ops' facts.

    differentiable=False declares ops whose outputs carry no gradient (shape arithmetic, comparisons,
    indices): the reverse pass never reaches them, so their function is not registered as a rule.
    """
    def register(function: Rule) -> Rule:
        for op_type in op_types:
            table.facts[op_type] = OpFacts(differentiable, layout_preserving, channels_first)
            if differentiable:
                table[op_type] = function
        return function
    return register


def declare(*op_types: str, **facts) -> None:
    """Record facts of ops that need no rule of their own (non-differentiable or layout-only)."""
    for op_type in op_types:
        RULES.facts[op_type] = OpFacts(**facts)


def is_differentiable(op_type: str) -> bool:
    """False for ops declared to carry no gradient; True otherwise (unknown ops fail later, by name)."""
    facts = RULES.facts.get(op_type)
    return facts is None or facts.differentiable


def keeps_layout(op_type: str) -> bool:
    """True for ops whose 4-D output has the layout of their 4-D input."""
    facts = RULES.facts.get(op_type)
    return facts is not None and facts.layout_preserving


def makes_channels_first(op_type: str) -> bool:
    """True for ops whose 4-D output is NCHW (Conv, pooling, per-channel normalization)."""
    facts = RULES.facts.get(op_type)
    return facts is not None and facts.channels_first


def differentiate(node: onnx.NodeProto, grads: Grads, needed: Sequence[bool], b: GraphBuilder,
                  rules: RuleTable = RULES) -> Grads:
    """Return the input gradients of node, or raise UnsupportedOpError."""
    function = rules.lookup(node.op_type)
    if function is None or node.domain not in ("", "ai.onnx"):
        raise UnsupportedOpError(
            f"no differentiation rule for op {node.op_type!r} (node {node.name or node.output[0]!r}, "
            f"domain {node.domain or 'ai.onnx'!r}) on the path from the target to the score; "
            "choose a target closer to the output (see list_targets) or file an issue with this op. "
            f"Supported ops: {', '.join(rules.supported())}")
    result = list(function(node, grads, needed, b))
    result += [None] * (len(node.input) - len(result))
    for name, need, grad in zip(node.input, needed, result):
        if need and grad is None:
            raise UnsupportedOpError(
                f"the {node.op_type} rule gives no gradient for input {name!r} of node "
                f"{node.name or node.output[0]!r}, which depends on the target; choose a target "
                "closer to the output (see list_targets)")
    return result


# Filled by rules/elementwise.py: Relu passes only positive gradients back.
GUIDED_RULES = RULES.derive({})
