"""Faithfulness metrics as audit columns: each metrics.METRICS entry run on a batch through the audit's Explainer.

An audit's records must not depend on how inputs were batched (a resumed run batches them differently).
ROAD therefore runs with noise 0 by default (AUDIT_OPTIONS): linear imputation without its noise term,
deterministic, the whole batch in one call. A metric that is given noise (metric_options, e.g. ROAD's 0.01 of
pytorch-grad-cam) runs one image at a time, seeded from a hash of the image's path, so an image's value still
depends on nothing but the image, its heatmap and its class; this costs a call (and its thread pool) per image.
"""
from __future__ import annotations

import hashlib
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..metrics import METRICS, Metric, get_metric

# Options the audit sets itself; a metric option under these names is refused.
RESERVED_OPTIONS = ("layout", "batch_size", "seed")
# The audit's defaults, under the options given: records independent of batching, one call per batch.
AUDIT_OPTIONS = {"road": {"noise": 0.0}}


def parse_metrics(names: Any) -> tuple[str, ...]:
    """Registry names of a comma list or sequence of metric names, in order, each once (InputError listing names)."""
    if names is None:
        return ()
    parts = names.split(",") if isinstance(names, str) else list(names)
    chosen: dict[str, None] = {}
    for part in parts:
        if str(part).strip():
            chosen.setdefault(get_metric(part).name)
    return tuple(chosen)


def check_options(metrics: Sequence[str], options: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """options (metric name -> keyword arguments of its function) checked against the metrics' signatures; those
    of metrics not measured are left out."""
    checked = {}
    for name, given in (options or {}).items():
        metric = get_metric(name)
        parameters = inspect.signature(metric.function).parameters
        unknown = sorted((set(given) - set(parameters)) | (set(given) & set(RESERVED_OPTIONS)))
        if unknown:
            raise InputError(f"the metric {metric.name!r} takes no option {', '.join(unknown)} here; it takes "
                             f"{', '.join(p for p in list(parameters)[4:] if p not in RESERVED_OPTIONS)}")
        if metric.name in metrics:
            checked[metric.name] = {key: _plain(value) for key, value in given.items()}
    return {name: {**AUDIT_OPTIONS.get(name, {}), **checked.get(name, {})} for name in metrics
            if AUDIT_OPTIONS.get(name) or checked.get(name)}


def metric_columns(metrics: Sequence[str]) -> list[str]:
    """The record column of each metric, in order."""
    return [METRICS[name].column for name in metrics]


def path_seed(path: str) -> int:
    """A seed that depends on the path only (the same on every run, machine and Python process)."""
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


@dataclass
class Measured:
    """Metric values of a batch's explained rows: column -> [M] float (NaN where it failed), and why it failed."""

    columns: dict[str, np.ndarray] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)  # row -> reason
    seconds: float = 0.0


class Measurer:
    """Runs the chosen metrics on batches with one predictor (an Explainer: its predict gives the logits)."""

    def __init__(self, predictor: Any, metrics: Sequence[str], options: Optional[Mapping[str, Mapping]] = None,
                 layout: str = "NCHW", batch_size: int = 64) -> None:
        self.predictor = predictor
        self.metrics = [METRICS[name] for name in metrics]
        self.options = check_options(metrics, options or {})
        self.layout = layout
        self.batch_size = batch_size

    def __call__(self, tensors: np.ndarray, heatmaps: np.ndarray, classes: np.ndarray,
                 paths: Sequence[str]) -> Measured:
        """Each metric on the rows (tensors in the model's layout, heatmaps [M,H,W], classes [M], their paths)."""
        start = time.perf_counter()
        measured = Measured()
        rows = (tensors, heatmaps, classes)
        for metric in self.metrics:
            options = dict(self.options.get(metric.name, {}), layout=self.layout, batch_size=self.batch_size)
            values = np.full(len(paths), np.nan)
            failed: dict[int, BaseException] = {}
            if self._random(metric):  # one image at a time, each with its own seed
                failed = _each(metric, self.predictor, rows, options, values, paths)
            else:
                try:
                    values[:] = metric.function(self.predictor, *rows, **options)
                except Exception:  # noqa: BLE001 - find the image that fails, keep the others
                    failed = _each(metric, self.predictor, rows, options, values)
            for row, error in failed.items():
                reason = f"{metric.name} failed: {type(error).__name__}: {error}"
                measured.errors[row] = f"{measured.errors[row]}; {reason}" if row in measured.errors else reason
            measured.columns[metric.column] = values
        measured.seconds = time.perf_counter() - start
        return measured

    def _random(self, metric: Metric) -> bool:
        """Whether the metric draws random numbers: it takes a seed, and its noise is not 0."""
        parameters = inspect.signature(metric.function).parameters
        if "seed" not in parameters:
            return False
        default = parameters["noise"].default if "noise" in parameters else None
        noise = self.options.get(metric.name, {}).get("noise", default)
        return noise is None or noise != 0


def _each(metric: Metric, predictor: Any, rows: tuple[np.ndarray, ...], options: dict, values: np.ndarray,
          paths: Optional[Sequence[str]] = None) -> dict[int, BaseException]:
    """values[i] = the metric on image i alone (seeded from paths[i] when paths are given); the errors by image."""
    failed = {}
    for index in range(len(values)):
        seed = {} if paths is None else {"seed": path_seed(paths[index])}
        try:
            values[index] = metric.function(predictor, *(part[index:index + 1] for part in rows), **options, **seed)[0]
        except Exception as error:  # noqa: BLE001 - the record says why
            failed[index] = error
    return failed


def _plain(value: Any) -> Any:
    """An option as JSON-able data (tuples become lists), so that it can be part of a run's settings."""
    return list(value) if isinstance(value, tuple) else value


def effective_options(metrics: Sequence[str], options: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every option each metric runs with (its defaults, then options), as JSON-able data: what a run records."""
    effective = {}
    for name in metrics:
        parameters = list(inspect.signature(METRICS[name].function).parameters.values())[4:]
        defaults = {p.name: _plain(p.default) for p in parameters
                    if p.name not in RESERVED_OPTIONS and p.default is not inspect.Parameter.empty}
        effective[name] = {**defaults, **options.get(name, {})}
    return effective
