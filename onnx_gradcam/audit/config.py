"""What an audit run is asked to do, and the model it runs, prepared once on the driver."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from ..errors import InputError
from ..labels import load_labels
from ..preprocess import Preprocess
from .decode import DEFAULT_MAX_PIXELS
from .measure import check_options, effective_options, parse_metrics

SAVE_CHOICES = ("overlays", "heatmaps")
OVERLAY_FORMATS = ("jpg", "png")
# classify: a record per input (and method); detect: per box after NMS; segment: per class present.
AUDIT_TASKS = ("classify", "detect", "segment")


@dataclass
class AuditConfig:
    """The settings of one `onnx-gradcam audit` run (the CLI flags, as Python values)."""

    model: Union[str, os.PathLike]
    inputs: Sequence[str]
    out_dir: Union[str, os.PathLike]
    device: str = "cpu"
    batch_size: int = 32
    method: Union[str, Sequence[str]] = "gradcam"  # a method, or several (a comma list): one record per method
    target_class: Optional[Union[int, str]] = None  # index or class name; None: each image's top class
    labels_file: Optional[Union[str, os.PathLike]] = None
    save: frozenset = field(default_factory=frozenset)  # subset of SAVE_CHOICES
    workers: int = 0  # decoding threads (actors with Ray); 0: one per CPU core, at most 8
    csv: bool = False
    ray: bool = False
    ray_address: Optional[str] = None
    preprocess: Optional[Union[str, dict, Preprocess]] = None  # 'imagenet', 'none', JSON text/file, dict
    target: str = "auto"  # target tensor when the model is not augmented yet
    overlay_format: str = "jpg"
    max_pixels: int = DEFAULT_MAX_PIXELS
    commit_every: int = 256  # images per committed part (at most 10 s apart); a kill loses one part's work
    report: bool = True
    progress: bool = True
    metrics: Union[str, Sequence[str]] = ()  # faithfulness metrics (metrics.METRICS names), one column each
    metric_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # metric -> its keyword options
    task: str = "classify"  # what the model does (AUDIT_TASKS); detect and segment explain each box / class present
    score: str = "auto"  # detect/segment: the output to explain when the model is plain ("auto": its only float one)
    conf: float = 0.25  # detect: box score threshold
    iou: float = 0.45  # detect: NMS IoU threshold
    max_det: int = 300  # detect: at most this many boxes per image

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.save = frozenset(self.save)
        unknown = self.save - set(SAVE_CHOICES)
        if unknown:
            raise InputError(f"--save takes {', '.join(SAVE_CHOICES)}; got {', '.join(sorted(unknown))}")
        if self.overlay_format not in OVERLAY_FORMATS:
            raise InputError(f"overlay format must be one of {OVERLAY_FORMATS}, got {self.overlay_format!r}")
        if self.batch_size < 1 or self.workers < 0 or self.max_pixels < 1 or self.commit_every < 1:
            raise InputError("--batch, --commit-every and --max-pixels must be positive, --workers not negative")
        self.methods = parse_methods(self.method)
        self.method = ",".join(self.methods)
        self.metrics = parse_metrics(self.metrics)
        self.metric_options = check_options(self.metrics, self.metric_options)
        self._check_task()
        if not self.workers:
            self.workers = max(1, min(8, os.cpu_count() or 1))

    def _check_task(self) -> None:
        if self.task not in AUDIT_TASKS:
            raise InputError(f"--task must be one of {', '.join(AUDIT_TASKS)}, got {self.task!r}")
        if self.task == "classify":
            if self.score != "auto":
                raise InputError("--score names the output a detect or segment audit explains; a classify audit "
                                 "explains the logits (drop --score, or add --task detect|segment)")
            return
        if self.metrics:
            raise InputError(f"--metrics measure how a heatmap changes the class probability of a classifier; they "
                             f"do not apply to --task {self.task}: drop --metrics, or audit a classifier")
        if self.task == "detect" and not (math.isfinite(self.conf) and self.conf >= 0 and 0 <= self.iou <= 1
                                          and self.max_det >= 1):
            raise InputError(f"need --conf >= 0, 0 <= --iou <= 1 and --max-det >= 1, got {self.conf}, {self.iou} "
                             f"and {self.max_det}")


@dataclass
class AuditModel:
    """The augmented model as bytes (what Ray actors receive), its preprocessing, labels and fingerprint."""

    model_bytes: bytes
    preprocess: Preprocess
    labels: Optional[list[str]]
    target_class: Optional[int]
    sha256: str
    score: Optional[str] = None  # the output a seeded model explains (detect, segment)

    def settings(self, config: AuditConfig) -> dict:
        """What must be equal for a rerun to resume this run rather than mix two different audits."""
        settings = {"model_sha256": self.sha256, "target_class": self.target_class,
                    "method": config.methods[0] if len(config.methods) == 1 else list(config.methods),
                    "preprocess": self.preprocess.to_dict(), "save": sorted(config.save),
                    "overlay_format": config.overlay_format, "max_pixels": config.max_pixels}
        if config.metrics:  # absent when none, as in audits made before metrics existed
            settings["metrics"] = effective_options(config.metrics, config.metric_options)
        if config.task != "classify":  # absent for classify, as in audits made before tasks existed
            settings.update(task=config.task, score=self.score)
            if config.task == "detect":
                settings.update(conf=config.conf, iou=config.iou, max_det=config.max_det)
        return settings


def prepare_model(config: AuditConfig) -> AuditModel:
    """Load MODEL (augmenting a plain one), resolve preprocessing, labels and --class; errors are usage errors."""
    from ..graph.augment import augmented_metadata
    from ..prepare import prepare_model as prepare_for_method

    prepared = prepare_for_method(Path(config.model), methods_entry(config.methods), target=config.target,
                                  preprocess=config.preprocess, task=config.task, score=config.score)
    for note in prepared.notes:
        print(note, file=sys.stderr)
    proto, preprocess = prepared.model, prepared.preprocess
    metadata = augmented_metadata(proto)
    if preprocess.size is None:
        preprocess = _with_model_size(preprocess, metadata)
    score = None
    if config.task != "classify":
        from .task_pipeline import check_task_score

        score = metadata.get("score")
        shape = json.loads(metadata.get("score_shape") or "null")
        check_task_score(config.task, metadata.get("seed") == "true", score, len(shape) if shape else None)
        if config.score != "auto" and config.score != score:
            raise InputError(f"the model is augmented to explain {score!r}, not --score {config.score!r}: give the "
                             "plain model to augment it for that output, or drop --score")
    labels = load_labels(config.labels_file)
    data = proto.SerializeToString()
    return AuditModel(model_bytes=data, preprocess=preprocess, labels=labels,
                      target_class=resolve_class(config.target_class, labels),
                      sha256=hashlib.sha256(data).hexdigest(), score=score)


def parse_methods(value: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """Canonical names of a method, a comma list or a sequence of methods, in order, each once."""
    from ..cam.methods import normalize_method

    parts = value.split(",") if isinstance(value, str) else list(value)
    methods = tuple(dict.fromkeys(normalize_method(part.strip()) for part in parts if part.strip()))
    if not methods:
        raise InputError("--method names no method; give one, or a comma list such as gradcam,hirescam")
    return methods


def methods_entry(methods: Sequence[str]):
    """The registry entry of one method; for several, an entry that reads what any of them reads, so that a
    plain model is augmented once for all of them (and an augmented one is checked for all of them)."""
    from ..cam.methods import get_method

    entries = [get_method(name) for name in methods]
    if len(entries) == 1:
        return entries[0]
    outputs = tuple(dict.fromkeys(output for entry in entries for output in entry.outputs))
    return dataclasses.replace(entries[0], name=", ".join(methods), aliases=(), outputs=outputs)


def _with_model_size(preprocess: Preprocess, metadata: dict) -> Preprocess:
    shape = json.loads(metadata.get("input_shape", "[]"))
    layout = metadata.get("input_layout", "NCHW")
    dims = shape[1:3] if layout == "NHWC" else shape[2:4]
    if len(dims) != 2 or not all(isinstance(d, int) for d in dims):
        raise InputError("the model input has no fixed height and width: give the size in --preprocess, "
                         "e.g. --preprocess '{\"size\": [224, 224], \"mean\": [0.485, 0.456, 0.406], "
                         "\"std\": [0.229, 0.224, 0.225]}'")
    return Preprocess.from_dict({**preprocess.to_dict(), "size": dims})


def resolve_class(value, labels: Optional[list[str]]) -> Optional[int]:
    """--class as an index: an integer, or a name from the labels file."""
    if value is None:
        return None
    if isinstance(value, int) or str(value).lstrip("-").isdigit():
        index = int(value)
        if index < 0:
            raise InputError(f"--class must be a class index >= 0 or a label name, got {value}")
        return index
    if labels and value in labels:
        return labels.index(value)
    hint = "pass --labels FILE to use class names" if not labels else f"it is not one of the {len(labels)} labels"
    raise InputError(f"--class {value!r} is not a class index and {hint}")
