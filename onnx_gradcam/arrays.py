"""Arrays that live on the host (NumPy) or on the GPU (CuPy): the helpers that work on either."""
from __future__ import annotations

from typing import Any

import numpy as np


def array_module(value: Any):
    """cupy for a CuPy array, else numpy."""
    if type(value).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def host(value: Any) -> np.ndarray:
    """value as a NumPy array (a copy from the GPU for a CuPy array)."""
    return value.get() if hasattr(value, "get") and not isinstance(value, np.ndarray) else np.asarray(value)


def concatenate(parts: list):
    """parts joined along the first axis, on the device they live on (the part itself when there is one)."""
    if len(parts) == 1:
        return parts[0]
    if parts and not isinstance(parts[0], np.ndarray):
        import cupy
        return cupy.concatenate(parts)
    return np.concatenate(parts)
