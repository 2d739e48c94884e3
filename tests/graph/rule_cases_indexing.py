"""Rule cases of indexing, shape, resampling, linear-algebra and convolution ops (checked by test_rules.py)."""
from __future__ import annotations

from rule_harness import case, ints, node, rand, scalar  # noqa: F401
