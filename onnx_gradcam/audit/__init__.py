"""Batch auditing: explain every image of a dataset, resumably, and write records, heatmaps and a report."""
from .config import AuditConfig
from .runner import AuditSummary, run_audit

__all__ = ["AuditConfig", "AuditSummary", "run_audit", "run_demo_audit"]


def __getattr__(name: str):
    if name == "run_demo_audit":
        from .demo import run_demo_audit
        return run_demo_audit
    raise AttributeError(f"module 'onnx_gradcam.audit' has no attribute {name!r}")
