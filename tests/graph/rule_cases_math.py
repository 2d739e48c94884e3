"""Rule cases of elementwise math, activations, normalizations and reductions (checked by test_rules.py)."""
from __future__ import annotations

from rule_harness import case, ints, node, rand, scalar  # noqa: F401
