"""Score-CAM and Ablation-CAM: channel weights from forward passes only, run as large ONNX Runtime batches.

Both follow pytorch-grad-cam (1.5.7) so that maps compare one to one; the explained class is scored by its
raw (pre-softmax) logit, as with its ClassifierOutputTarget.

- scorecam: each channel A_k upsampled to the input size (bilinear, align_corners=True, as its
  UpsamplingBilinear2d), min-max normalized `(u - min) / (max - min + 1e-8)`, multiplied into the image;
  the logits of the N*K masked images, softmaxed over the channels, are the weights. The masked images
  run through a session pruned to the logits, `batch_size` rows a run.
- ablationcam: each channel of A set to the ablation value (0 when the image's smallest activation is 0,
  else that minimum - 1e7: AblationLayer's values); w_k = (y - y_k) / y for the original score y and the
  ablated y_k. The N*K ablated activations run through the head alone (graph.head: the target -> score
  subgraph), `batch_size` rows a run. pytorch-grad-cam's AblationLayer, on a target whose minimum is not
  0, subtracts the 1e7 again for every row of its batch already ablated (row i of a batch gets
  minimum - (i+1)*1e7), so its map depends on its batch size; this is its map with batch_size=1.

Then, as every CAM: cam = sum_k w_k A_k, ReLU, min-max, resize, min-max (cam.reference.finish).
Exact shortcuts, not approximations: a constant channel's Score-CAM mask is 0, so its masked image is all
zeros and is scored once for all such channels; ablating a channel already equal to the ablation value
changes nothing, so its weight is 0 without a run.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np

from onnx_gradcam.cam import reference
from onnx_gradcam.cam.methods import Family, Method, get_method_of, register
from onnx_gradcam.errors import InputError, TargetNotFoundError
from onnx_gradcam.graph.augment import ACTIVATION, CLASS, LOGITS, SCORE, TARGET_CLASS
from onnx_gradcam.graph.locate import NHWC, NTC, TO_NHWC

__all__ = ["ABLATION_OFFSET", "SCORECAM_EPSILON", "GradientFreeContext", "ablationcam_weights",
           "align_corners_matrix", "explain_gradient_free", "scorecam_weights"]

# pytorch-grad-cam's constants: ScoreCAM's min-max epsilon, AblationLayer's ABLATION_VALUE.
SCORECAM_EPSILON = 1e-8
ABLATION_OFFSET = 1e7
DEFAULT_BATCH_SIZE = 64
_SUMMARY = [CLASS, SCORE, LOGITS]


@dataclass
class GradientFreeContext:
    """What a gradient-free method's run hook reads: the first forward pass, and ways to run more.

    Arrays are CuPy on CUDA (they never leave the GPU) and NumPy on the CPU; xp is their module.
    A "row" is one (image, channel) pair, numbered image * K + channel.
    """

    activation: Any  # [N,K,h,w] target activation, NCHW whatever the graph's layout
    batch: Any  # [N,...] float32 model inputs, in the model's layout
    classes: Any  # [N] int64 explained classes (xp); unused where seeds are given
    scores: Any  # [N] float32 the explained score Y of each image (xp)
    layout: str  # the model input's layout, "NCHW" or "NHWC"
    size: tuple[int, int]  # (H, W) of the model input
    batch_size: int  # rows per forward pass
    xp: Any
    seeds: Any = None  # [N, ...] on a model augmented with seed=True: Y = sum(seed * score tensor)
    progress: bool = False
    explainer: Any = field(default=None, repr=False)

    def chunks(self, count: int) -> Iterator[slice]:
        """Slices of range(count), batch_size long (with a progress bar on request)."""
        starts = range(0, count, self.batch_size)
        if self.progress:
            from tqdm import tqdm
            starts = tqdm(starts, unit="batch", desc="explain")
        for start in starts:
            yield slice(start, min(start + self.batch_size, count))

    def logits(self, inputs: Any) -> Any:
        """The score tensor ([rows, classes] logits) of model-input rows, from a session pruned to it."""
        explainer = self.explainer
        rows = _Rows(explainer._session([LOGITS]), explainer.input_name, LOGITS, explainer.static_batch)
        return rows.run(self.xp, inputs)

    def head_logits(self, activations: Any) -> Any:
        """The score tensor of NCHW target-activation rows, through the target -> score head only."""
        return head_for(self.explainer).run(self.xp, activations)

    def class_scores(self, logits: Any, images: Any) -> Any:
        """[rows] float32 score Y of each row: its image's class logit, or sum(seed * logits) with seeds.

        logits: the rows' score tensor; images: the rows' image indices.
        """
        xp = self.xp
        if self.seeds is None:
            return logits[xp.arange(len(images)), self.classes[images]].astype(xp.float32)
        weighted = self.seeds[images].reshape(len(images), -1) * logits.reshape(len(images), -1)
        return weighted.sum(axis=1, dtype=xp.float32)


# ---------------------------------------------------------------- the methods

def scorecam_weights(context: GradientFreeContext) -> Any:
    """[N,K] softmax over channels of the class logits of the image masked by each upsampled channel."""
    xp, activation = context.xp, context.activation
    count, channels, height, width = activation.shape
    maps = activation.reshape(count * channels, height, width).astype(xp.float32)
    rows_matrix = xp.asarray(align_corners_matrix(height, context.size[0]))
    columns_matrix = xp.asarray(align_corners_matrix(width, context.size[1])).T
    constant = maps.max(axis=(1, 2)) == maps.min(axis=(1, 2))
    scores = xp.empty(count * channels, xp.float32)
    if bool(constant.any()):
        # (u - min) / (0 + 1e-8) = 0: the masked image is zeros, whichever image and channel.
        zero_logits = context.logits(xp.zeros_like(context.batch[:1]))
        constant_rows = xp.flatnonzero(constant)
        repeated = xp.broadcast_to(zero_logits, (len(constant_rows),) + zero_logits.shape[1:])
        scores[constant_rows] = context.class_scores(repeated, constant_rows // channels)
    live = xp.flatnonzero(~constant)
    for part in context.chunks(len(live)):
        rows = live[part]
        images = rows // channels
        masks = _min_max_rows(xp, xp.matmul(xp.matmul(rows_matrix, maps[rows]), columns_matrix))
        masks = masks[:, :, :, None] if context.layout == NHWC else masks[:, None]
        scores[rows] = context.class_scores(context.logits(context.batch[images] * masks), images)
    return _softmax(xp, scores.reshape(count, channels))


def ablationcam_weights(context: GradientFreeContext) -> Any:
    """[N,K] relative drop of the class score when each channel is ablated: (y - y_k) / y."""
    xp, activation = context.xp, context.activation
    count, channels = activation.shape[:2]
    flat = activation.reshape(count * channels, -1)
    value = ablation_values(xp, activation)
    image_of_row = xp.arange(count * channels) // channels
    unchanged = (flat == value[image_of_row, None]).all(axis=1)
    ablated = xp.repeat(context.scores, channels)  # a channel already at the value keeps the score
    live = xp.flatnonzero(~unchanged)
    for part in context.chunks(len(live)):
        rows = live[part]
        images = rows // channels
        copies = activation[images]  # fancy indexing copies
        copies[xp.arange(len(rows)), rows % channels] = value[images, None, None]
        ablated[rows] = context.class_scores(context.head_logits(copies), images)
    original = context.scores[:, None]
    return (original - ablated.reshape(count, channels)) / original


def ablation_values(xp: Any, activation: Any) -> Any:
    """[N] value an ablated channel takes: 0 when the image's smallest activation is 0, else that minus 1e7."""
    low = activation.reshape(len(activation), -1).min(axis=1)
    return xp.where(low == 0, xp.zeros_like(low), low - activation.dtype.type(ABLATION_OFFSET))


def align_corners_matrix(source: int, size: int) -> np.ndarray:
    """[size, source] float32 bilinear interpolation weights with align_corners=True (torch's arithmetic)."""
    scale = np.float32((source - 1) / (size - 1) if size > 1 else 0.0)
    position = scale * np.arange(size, dtype=np.float32)
    lower = np.minimum(position.astype(np.int64), source - 1)
    upper = np.minimum(lower + 1, source - 1)
    fraction = np.clip(position - lower, 0, 1).astype(np.float32)
    matrix = np.zeros((size, source), np.float32)
    np.add.at(matrix, (np.arange(size), lower), 1 - fraction)
    np.add.at(matrix, (np.arange(size), upper), fraction)
    return matrix


def _min_max_rows(xp: Any, maps: Any) -> Any:
    low = maps.min(axis=(1, 2), keepdims=True)
    high = maps.max(axis=(1, 2), keepdims=True)
    return (maps - low) / (high - low + xp.float32(SCORECAM_EPSILON))


def _softmax(xp: Any, scores: Any) -> Any:
    shifted = xp.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


SCORECAM = register(Method(
    "scorecam", Family.GRADIENT_FREE, (ACTIVATION,), run=scorecam_weights,
    forward="model", options={"batch_size": DEFAULT_BATCH_SIZE},
    summary="softmax over channels of the class logit of the image masked by each upsampled channel"))
ABLATIONCAM = register(Method(
    "ablationcam", Family.GRADIENT_FREE, (ACTIVATION,), run=ablationcam_weights,
    forward="head", options={"batch_size": DEFAULT_BATCH_SIZE},
    summary="relative drop of the class logit when each channel is ablated, through the head only"))


# ---------------------------------------------------------------- the runner

def explain_gradient_free(explainer: Any, batch: Any, selector: Any, method: "str | Method",
                          size: tuple[int, int], *, keep_tensors: bool = False, progress: bool = False,
                          **options: Any) -> Any:
    """The Explanation of a gradient-free method: one forward pass for the activation, then the method's own.

    explainer: an onnx_gradcam.Explainer; batch: its float32 model inputs; selector: what to explain, the
    [N] int64 classes (-1: the top class) or, on a model augmented with seed=True, the [N, ...] float seeds;
    options: the method's (batch_size: rows per extra forward pass), registry defaults where not given.
    """
    from onnx_gradcam.explainer import Explanation  # the Explainer imports this package

    entry = get_method_of(method, Family.GRADIENT_FREE)
    batch_size = _check_batch_size(entry.resolve_options(**options)["batch_size"])
    if entry.forward == "head":
        head_for(explainer)  # a head that cannot run on the target alone is refused before any run
    xp = _array_module(explainer.device)
    activation, summary = _first_pass(explainer, batch, selector)
    seeded = np.dtype(selector.dtype).kind == "f"  # NumPy or CuPy
    context = GradientFreeContext(
        activation=activation, batch=xp.asarray(batch), classes=xp.asarray(summary[CLASS]),
        scores=xp.asarray(summary[SCORE], dtype=xp.float32), layout=explainer.layout, size=tuple(size),
        batch_size=batch_size, xp=xp, seeds=xp.asarray(selector) if seeded else None, progress=progress,
        explainer=explainer)
    weights = xp.asarray(entry.run(context), dtype=xp.float32)
    cam = _weighted_sum(xp, weights, activation)
    return Explanation(heatmaps=_finish(xp, cam, context.size), classes=summary[CLASS], scores=summary[SCORE],
                       logits=summary[LOGITS], method=entry.name, activation=activation if keep_tensors else None)


def _first_pass(explainer: Any, batch: Any, selector: Any) -> tuple[Any, dict]:
    """The target activation (on the device) and the host class, score and logits of each image."""
    summary_outputs = [name for name in _SUMMARY if name in explainer.output_names]
    summaries: list[dict] = []
    parts = [result[ACTIVATION] for result in explainer._run(batch, selector, [ACTIVATION, *summary_outputs],
                                                              False, summaries)]
    summary = {name: np.concatenate([part[name] for part in summaries]) for name in summary_outputs}
    summary.setdefault(CLASS, np.full(len(batch), -1, np.int64))  # a seeded model names no class
    return _concatenate(_array_module(explainer.device), parts), summary


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be an int >= 1 (rows per forward pass), got {batch_size!r}")
    return int(batch_size)


def _weighted_sum(xp: Any, weights: Any, activation: Any) -> Any:
    """cam = sum_k w_k A_k, [N,h,w] float32."""
    count, channels, height, width = activation.shape
    flat = activation.reshape(count, channels, height * width).astype(xp.float32)
    return xp.matmul(weights[:, None, :], flat).reshape(count, height, width)


def _finish(xp: Any, cam: Any, size: tuple[int, int]) -> Any:
    """The contract's ReLU, min-max, resize, min-max: NumPy on the CPU, the fused kernel on CUDA."""
    if xp is np:
        return reference.finish(cam, size)
    from onnx_gradcam.cam import fused
    # The kernel case that computes sum_k G_k A_k, with K = 1 and G = 1, normalizes and resizes the map itself.
    (map_case,) = [name for name, kernel_id in fused.kernel_ids().items() if kernel_id == fused.MAP_KERNEL_ID]
    maps = xp.ascontiguousarray(cam[:, None])
    return fused.heatmaps(maps, xp.ones_like(maps), map_case, size)


# ---------------------------------------------------------------- sessions fed rows

@dataclass
class _Rows:
    """A session fed rows of one input and returning one output: padded to a fixed batch where it has
    one, split in halves when a run does not fit in memory; NHWC rows are fed channels-last."""

    session: Any  # runtime.Session
    input: str
    output: str
    static_batch: Optional[int]
    layout: str = "NCHW"

    def run(self, xp: Any, rows: Any) -> Any:
        """The output for rows ([rows, ...] on the session's device)."""
        if self.layout == NHWC:
            rows = xp.ascontiguousarray(rows.transpose(TO_NHWC))
        if self.static_batch is None:
            return self._fitting(xp, rows)
        parts = []
        for start in range(0, len(rows), self.static_batch):
            part = rows[start:start + self.static_batch]
            missing = self.static_batch - len(part)
            padded = xp.concatenate([part, xp.zeros((missing,) + part.shape[1:], part.dtype)]) if missing else part
            parts.append(self._once(xp, padded)[:len(part)])
        return _concatenate(xp, parts)

    def _fitting(self, xp: Any, rows: Any) -> Any:
        try:
            return self._once(xp, rows)
        except Exception as error:  # ONNX Runtime raises its own exception types, by message
            message = str(error).lower()
            if len(rows) < 2 or not ("out of memory" in message or "allocate" in message):
                raise
        half = (len(rows) + 1) // 2
        return xp.concatenate([self._fitting(xp, rows[:half]), self._fitting(xp, rows[half:])])

    def _once(self, xp: Any, rows: Any) -> Any:
        feeds = {self.input: rows}
        if TARGET_CLASS in self.session.input_names:  # a pruned graph that still declares the class input
            feeds[TARGET_CLASS] = np.full(len(rows), -1, np.int64)
        return self.session.run(feeds, [self.output])[self.output]


_HEADS: "weakref.WeakKeyDictionary[Any, _Rows]" = weakref.WeakKeyDictionary()


def head_for(explainer: Any) -> _Rows:
    """The explainer's head (target -> score) session, made on first use and kept as long as the explainer."""
    if explainer not in _HEADS:
        _HEADS[explainer] = _make_head(explainer)
    return _HEADS[explainer]


def _make_head(explainer: Any) -> _Rows:
    from onnx_gradcam.explainer import _default_session_options
    from onnx_gradcam.graph.head import extract_head
    from onnx_gradcam.graph.io import load_model
    from onnx_gradcam.runtime import Session

    metadata = explainer.metadata
    target, score, layout = metadata["target"], metadata["score"], metadata.get("target_layout", "NCHW")
    if layout == NTC:
        raise TargetNotFoundError(
            f"the target {target!r} is a token sequence [N,T,C], exposed as an NCHW map without its class and "
            "register tokens, so the head cannot be fed from it: use scorecam (it runs the whole model), or "
            "augment with a 4-D feature-map target for ablationcam")
    head = extract_head(load_model(explainer._source), target, score)
    session = Session(head, device=explainer.device_spec, providers=explainer.providers,
                      options=explainer.session_options or _default_session_options())
    dims = head.graph.input[0].type.tensor_type.shape.dim
    static = dims[0].dim_value if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    return _Rows(session, target, score, static, layout)


def _array_module(device: str) -> Any:
    if device == "cuda":
        import cupy
        return cupy
    return np


def _concatenate(xp: Any, parts: list) -> Any:
    return parts[0] if len(parts) == 1 else xp.concatenate(parts)
