"""Fixtures of the audit tests (helpers live in audit_helpers.py, importable by name)."""
from __future__ import annotations

import pytest

pytest.importorskip("pyarrow", reason="the audit needs pyarrow: pip install 'onnx-gradcam[audit]'")


@pytest.fixture(scope="session")
def model_path() -> str:
    from onnx_gradcam.demo import demo_model_path

    return str(demo_model_path())
