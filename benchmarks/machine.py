"""Machine and library facts recorded next to every benchmark result."""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone


def machine_info() -> dict:
    """CPU, core count, OS, Python and library versions, and the time of the run."""
    info = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu": _cpu_name(), "cores": os.cpu_count()}
    for module in ("numpy", "onnx", "onnxruntime", "torch", "cv2", "cupy"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            continue
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
