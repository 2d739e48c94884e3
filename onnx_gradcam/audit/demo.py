"""`onnx-gradcam demo` as an audit: the held-out digits as PNG files, audited by the built-in model."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ..demo import data_path, demo_model_path, load_digits
from ..render import write_image
from .writers import write_bytes

DEMO_METHOD = "hirescam"
DEMO_METRICS = ("road", "deletion", "insertion")
# Fewer perturbations than an audit's defaults keep the demo within twice its time without metrics: ROAD at the
# 50th percentile only (2 imputed images per digit instead of 18), deletion and insertion in 8 steps (not 32).
# run.json records them.
DEMO_METRIC_OPTIONS = {"road": {"percentiles": (50,)}, "deletion": {"steps": 8}, "insertion": {"steps": 8}}


def write_demo_inputs(folder: Path, count: Optional[int] = None) -> Path:
    """Write the held-out digits as PNGs under folder/<label>/ with folder/labels.csv; return the manifest path."""
    images, labels = load_digits()
    if count is not None:
        images, labels = images[:count], labels[:count]
    names = [line.strip() for line in data_path("digits_labels.txt").read_text().splitlines() if line.strip()]
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["path", "label"])
    for index, (image, label) in enumerate(zip(images, labels)):
        relative = f"{int(label)}/digit_{index:04d}.png"
        target = folder / relative
        if not target.exists():
            write_image(target, np.asarray(image, np.uint8))
        writer.writerow([relative, names[int(label)]])
    manifest = folder / "labels.csv"
    write_bytes(manifest, rows.getvalue().encode())
    return manifest


def run_demo_audit(out_dir: Union[str, os.PathLike], count: Optional[int] = None,
                   method: Union[str, Sequence[str]] = DEMO_METHOD, progress: bool = True,
                   metrics: Sequence[str] = DEMO_METRICS,
                   metric_options: Optional[Mapping[str, Mapping[str, Any]]] = None) -> int:
    """Audit the built-in digits (written to out_dir/inputs) into out_dir with report.html; return the exit code.

    metric_options: per metric, keyword options of its function (default DEMO_METRIC_OPTIONS for those measured).
    """
    from .cli import format_summary
    from .config import AuditConfig
    from .runner import run_audit

    out_dir = Path(out_dir)
    manifest = write_demo_inputs(out_dir / "inputs", count)
    options = DEMO_METRIC_OPTIONS if metric_options is None else metric_options
    config = AuditConfig(model=demo_model_path(), inputs=[str(manifest)], out_dir=out_dir,
                         method=method, labels_file=data_path("digits_labels.txt"),
                         save=frozenset({"overlays", "heatmaps"}), overlay_format="png", progress=progress,
                         metrics=metrics, metric_options=options)
    summary = run_audit(config)
    print(format_summary(summary))
    return summary.exit_code

