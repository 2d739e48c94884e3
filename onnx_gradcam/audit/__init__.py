"""Batch auditing: explain every image of a dataset, resumably, and write records, heatmaps and a report.

Imports are lazy so that `onnx-gradcam --help` works without the audit extras (pyarrow) installed.
"""
__all__ = ["AuditConfig", "AuditSummary", "run_audit", "run_demo_audit"]


def __getattr__(name: str):
    if name == "AuditConfig":
        from .config import AuditConfig
        return AuditConfig
    if name in ("AuditSummary", "run_audit"):
        from . import runner
        return getattr(runner, name)
    if name == "run_demo_audit":
        from .demo import run_demo_audit
        return run_demo_audit
    raise AttributeError(f"module 'onnx_gradcam.audit' has no attribute {name!r}")
