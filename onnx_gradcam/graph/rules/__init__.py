"""Differentiation rules, one module per op family, and the registry they are kept in.

A rule takes the forward node, the gradients of its outputs (None where an output does not reach
the score), which inputs need a gradient, and a GraphBuilder; it returns one gradient name (or None)
per input. Facts about an op (it keeps a 4-D tensor's layout, it carries no gradient) are declared
where its rule is registered, and graph/locate.py reads them from here.
"""
from __future__ import annotations

from .registry import (GUIDED_RULES, RULES, Grads, Rule, RuleTable, differentiate, is_differentiable,
                       keeps_layout, rule)
from . import (conv_pool, elementwise, indexing, linalg, normalization, reduction,  # noqa: F401,E402 - registers
               resample, shape)

__all__ = ["RULES", "GUIDED_RULES", "Grads", "Rule", "RuleTable", "differentiate", "is_differentiable",
           "keeps_layout", "rule"]
