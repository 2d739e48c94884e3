"""The user-facing Explainer: images in, heatmaps, classes and scores out."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import onnx
import onnxruntime as ort

from .cam import attribution, reference
from .cam.methods import Family, Method, get_method, normalize_method
from .errors import InputError, NotAugmentedError
from .graph.augment import (ACTIVATION, CLASS, GRADIENT, GUIDED_GRADIENT, INPUT_GRADIENT, LOGITS,
                            SCORE, TARGET_CLASS, augmented_metadata)
from .graph.io import ModelLike, load_model
from .graph.prune import keep_outputs
from .prepare import prepare_model, require_outputs
from .preprocess import Preprocess
from .render import read_image
from .runtime import Session, parse_device, providers_for

ImageInput = Union[np.ndarray, str, os.PathLike, Sequence[Union[np.ndarray, str, os.PathLike]]]


@dataclass
class Explanation:
    """Heatmaps [N,H,W] in [0,1] with the explained class, its score and the logits of each image."""

    heatmaps: Any
    classes: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    method: str
    activation: Optional[Any] = None
    gradient: Optional[Any] = None
    attribution: Optional[np.ndarray] = None  # [N,C,H,W] for input-gradient methods

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of the logits, [N, classes]."""
        shifted = np.exp(self.logits - self.logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def top_k(self, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Return (classes, probabilities) of the k most likely classes per image, best first."""
        probabilities = self.probabilities
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(probabilities, order, axis=1)


class Explainer:
    """Runs an augmented ONNX model with ONNX Runtime and turns its tensors into heatmaps."""

    def __init__(self, model: ModelLike, device: str = "cpu", method: str = "gradcam",
                 batch_size: int = 32, preprocess: Optional[Union[Preprocess, dict]] = None,
                 providers: Optional[Sequence[Any]] = None,
                 session_options: Optional[ort.SessionOptions] = None,
                 backward_memory_mb: Optional[float] = None) -> None:
        """Load an augmented model; batches run in chunks of batch_size.

        backward_memory_mb: memory the forward activations kept for a full-network reverse pass
        (input-gradient methods) may take; their chunks are made smaller to stay within it.
        Default 384 MiB on the CPU (ResNet-50 at 224x224: 10 images a run) and 2 GiB on CUDA.
        """
        proto = load_model(model)
        self.method = normalize_method(method)
        # Refuses a plain model, checks once that the model serves the method, reads its preprocessing.
        prepared = prepare_model(proto, self.method, preprocess=preprocess, augment_plain=False,
                                 imagenet_fallback=False)
        self.metadata = augmented_metadata(proto)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.input_name = self.metadata["input"]
        self.input_shape = _input_shape(proto, self.input_name)
        # A model exported with a fixed batch size runs in chunks of exactly that size.
        self.static_batch = self.input_shape[0] if isinstance(self.input_shape[0], int) else None
        self.batch_size = self.static_batch or batch_size
        self.layout = self.metadata.get("input_layout", "NCHW")
        self.num_classes = _num_classes(proto)
        self.preprocess = self._preprocess_spec(prepared.preprocess)
        # A model given as a file is read again for each new session rather than held here: its
        # weights would otherwise stay in memory beside every session's own copy.
        self._source = model if isinstance(model, (str, os.PathLike)) else proto
        self.device_spec, self.providers = device, providers
        self.session_options = session_options
        self.output_names = [o.name for o in proto.graph.output]
        self._sessions: dict[frozenset, Session] = {}  # created on first use: each holds the weights
        self.device = parse_device(device)[0]
        if providers is None:
            providers_for(device)  # a clear error now when CUDA is asked for and not available
        if backward_memory_mb is not None and backward_memory_mb <= 0:
            raise InputError(f"backward_memory_mb must be > 0, got {backward_memory_mb}")
        self.backward_batch_size = _backward_batch_size(
            self.metadata, backward_memory_mb or DEFAULT_BACKWARD_MEMORY_MB[self.device])

    def _preprocess_spec(self, preprocess: Optional[Preprocess]) -> Optional[Preprocess]:
        """The spec completed with the model's input size (when static) and layout."""
        if preprocess is not None and preprocess.size is None and None not in self.image_size:
            preprocess = Preprocess.from_dict({**preprocess.to_dict(), "size": list(self.image_size)})
        if preprocess is not None and preprocess.layout != self.layout:  # only the model's layout can run
            preprocess = Preprocess.from_dict({**preprocess.to_dict(), "layout": self.layout})
        return preprocess

    @property
    def image_size(self) -> tuple[Optional[int], Optional[int]]:
        """(H, W) of the model input, None where dynamic."""
        dims = self.input_shape[1:3] if self.layout == "NHWC" else self.input_shape[2:4]
        return tuple(d if isinstance(d, int) else None for d in dims)

    def prepare(self, images: ImageInput) -> np.ndarray:
        """Return the float32 model-input batch for arrays, uint8 images or image paths.

        On device="cuda", CuPy arrays and torch CUDA tensors stay on the GPU (no host round trip).
        """
        if _on_device(images):
            if self.device != "cuda":
                raise InputError("GPU arrays need Explainer(device='cuda'); pass NumPy arrays on the CPU")
            return self._check_tensor(_as_cupy(images))
        if isinstance(images, np.ndarray) and images.dtype.kind == "f":
            return self._check_tensor(images)
        if isinstance(images, np.ndarray) and images.dtype not in (np.uint8, np.uint16):
            raise InputError(f"input dtype {images.dtype} is not supported: expected float32 "
                             "(preprocessed, in the model's layout) or uint8 images")
        if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
            images = [images]
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if not isinstance(images, (list, tuple)) or not images:
            raise InputError(f"images must be a float32 array shaped like the model input "
                             f"{_format_shape(self.input_shape)}, uint8 images, or image paths; "
                             f"got {type(images).__name__}")
        if all(isinstance(item, np.ndarray) and item.dtype.kind == "f" for item in images):
            return self._check_tensor(np.stack(images))
        if self.preprocess is None:
            raise InputError("raw images need a preprocessing spec and this model records none: pass "
                             "preprocess=Preprocess(mean=..., std=...) or Preprocess.imagenet()")
        loaded = [read_image(item) if isinstance(item, (str, os.PathLike)) else np.asarray(item) for item in images]
        return self._check_tensor(self.preprocess(loaded))

    def _check_tensor(self, batch):
        xp = _array_module(batch)
        expected = self.input_shape
        if batch.ndim != len(expected) or any(
                isinstance(want, int) and want != got for want, got in zip(expected[1:], batch.shape[1:])):
            hint = " (add a batch axis: images[None])" if batch.ndim == len(expected) - 1 else ""
            raise InputError(f"input has shape {list(batch.shape)} but the model expects "
                             f"{_format_shape(expected)} ({self.layout}){hint}")
        if batch.dtype != np.float32:
            if batch.dtype.kind != "f":
                raise InputError(f"input dtype {batch.dtype} is not supported: expected float32 "
                                 "(preprocessed) or uint8 images")
            batch = batch.astype(np.float32)
        if not bool(xp.isfinite(batch).all()):
            raise InputError("input contains NaN or infinite values")
        return xp.ascontiguousarray(batch)

    def _target_classes(self, target_class, count: int) -> np.ndarray:
        if target_class is None:
            return np.full(count, -1, np.int64)
        classes = np.asarray(target_class)
        if classes.dtype.kind not in "iu":
            raise InputError(f"target_class must be int(s), got {classes.dtype}")
        classes = np.broadcast_to(classes.astype(np.int64), (count,)) if classes.ndim == 0 else classes.astype(np.int64)
        if classes.shape != (count,):
            raise InputError(f"target_class has {classes.size} entries for {count} images")
        if self.num_classes is not None and ((classes >= self.num_classes) | (classes < -1)).any():
            raise InputError(f"target_class must be in [0, {self.num_classes - 1}] or -1 (top class); "
                             f"got {sorted(set(classes[(classes >= self.num_classes) | (classes < -1)].tolist()))}")
        return np.ascontiguousarray(classes)

    def explain(self, images: ImageInput, target_class=None, method: Optional[str] = None,
                keep_tensors: bool = False, progress: bool = False, samples: Optional[int] = None,
                noise_level: Optional[float] = None, steps: Optional[int] = None,
                baseline: Optional[np.ndarray] = None, seed: Optional[int] = None,
                as_numpy: bool = False) -> Explanation:
        """Explain a batch: heatmaps [N,H,W] in [0,1], classes, scores, logits (and tensors on request).

        CAM methods (onnx_gradcam.METHODS) need only the augmented model; input-gradient methods need
        it augmented with input_gradient=True (saliency, smoothgrad, integrated_gradients) or guided=True
        (guided_backprop, guided_gradcam). smoothgrad uses `samples` noisy copies (16; noise std =
        noise_level * value range, 0.15; `seed` 0); integrated_gradients uses `steps` Gauss-Legendre
        points (32) from `baseline` (zeros by default); both run as batches. Options a method does not
        take are ignored; None means the method's default (cam.methods). On device="cuda" CAM heatmaps
        (and tensors) stay CuPy arrays unless as_numpy=True.
        """
        entry = self._entry(method)
        run = {Family.CAM: self._explain_cam, Family.INPUT_GRADIENT: self._explain_input}.get(entry.family)
        if run is None:
            raise InputError(f"method {entry.name!r} is {entry.family.value}: the Explainer has no runner "
                             "for that family yet; choose a CAM or input-gradient method")
        batch = self.prepare(images)
        if len(batch) == 0:
            raise InputError("no images to explain: the batch is empty")
        classes = self._target_classes(target_class, len(batch))
        size = tuple(batch.shape[1:3] if self.layout == "NHWC" else batch.shape[2:4])
        options = entry.resolve_options(samples=samples, noise_level=noise_level, steps=steps,
                                        baseline=baseline, seed=seed)
        explanation = run(batch, classes, entry, size, keep_tensors=keep_tensors, progress=progress, **options)
        if as_numpy:
            for name in ("heatmaps", "activation", "gradient"):
                value = getattr(explanation, name)
                setattr(explanation, name, None if value is None else _host(value))
        return explanation

    def predict(self, images: ImageInput) -> np.ndarray:
        """Return the float32 logits [N, classes] of a batch (the forward pass only, in batch_size chunks)."""
        batch = self.prepare(images)
        if len(batch) == 0:
            raise InputError("no images to predict: the batch is empty")
        classes = np.full(len(batch), -1, np.int64)
        chunks = [_host(result[LOGITS]) for result in self._run(batch, classes, [LOGITS], False, [])]
        return np.asarray(_concatenate(chunks), np.float32)

    def warm_up(self, method: Optional[str] = None) -> "Explainer":
        """Create now the ONNX Runtime sessions a method needs (otherwise made by its first call)."""
        for outputs in self._output_sets(self._entry(method)):
            self._session(outputs)
        return self

    def _entry(self, method: Optional[str]) -> Method:
        """The registry entry of method (default: the Explainer's), checked against the model's outputs."""
        entry = get_method(method or self.method)
        require_outputs(entry, self.output_names)
        return entry

    @staticmethod
    def _output_sets(entry: Method) -> list[list[str]]:
        """The outputs of each session a method runs, in the order it runs them."""
        if entry.sample is not None:
            return [SUMMARY, list(entry.outputs)]  # the clean image's class, then the samples' gradients
        return [list(entry.outputs) + SUMMARY]

    def _explain_cam(self, batch, classes, entry: Method, size, keep_tensors: bool = False,
                     progress: bool = False) -> Explanation:
        parts: dict[str, list] = {"heatmaps": [], ACTIVATION: [], GRADIENT: []}
        (outputs,), part_list = self._output_sets(entry), []
        for result in self._run(batch, classes, outputs, progress, part_list):
            parts["heatmaps"].append(self._heatmaps(result[ACTIVATION], result.get(GRADIENT), entry, size))
            for name in (ACTIVATION, GRADIENT):
                if keep_tensors and name in result:
                    parts[name].append(result[name])
        summary = _join_summary(part_list)
        return Explanation(heatmaps=_concatenate(parts["heatmaps"]), method=entry.name, **summary,
                           activation=_concatenate(parts[ACTIVATION]) if parts[ACTIVATION] else None,
                           gradient=_concatenate(parts[GRADIENT]) if parts[GRADIENT] else None)

    def _explain_input(self, batch, classes, entry: Method, size, keep_tensors: bool = False,
                       progress: bool = False, **options) -> Explanation:
        batch, output_sets = _host(batch), self._output_sets(entry)
        if entry.sample is not None:
            # The explained class is the clean image's: fix it before sampling around the image.
            summary = _join_summary(list(self._run(batch, classes, output_sets[0], False, [])))
            drawn = entry.sample(batch, self.layout, **options)
            gradients = _concatenate([_host(r[entry.gradient_output]) for r in self._run(
                drawn.inputs, np.repeat(summary["classes"], drawn.repeat), output_sets[1], progress, [])])
            result = entry.combine(gradients, drawn)
        else:
            chunks, part_list = [], []
            for output in self._run(batch, classes, output_sets[0], progress, part_list):
                chunks.append(entry.attribute({name: _host(value) for name, value in output.items()}, size))
            summary, result = _join_summary(part_list), _concatenate(chunks)
        return Explanation(heatmaps=attribution.attribution_heatmaps(result), method=entry.name,
                           attribution=result, **summary)

    def _session(self, outputs: Sequence[str]) -> Session:
        """A session computing just these outputs (ONNX Runtime would run every node otherwise)."""
        key = frozenset(outputs)
        if key not in self._sessions:
            wanted = [name for name in self.output_names if name in key]
            everything = set(self.output_names) <= key
            model = self._source if everything else keep_outputs(load_model(self._source), wanted)
            self._sessions[key] = Session(model, device=self.device_spec, providers=self.providers,
                                          options=self.session_options or _default_session_options())
        return self._sessions[key]

    def _run(self, batch: np.ndarray, classes: np.ndarray, outputs: Sequence[str], progress: bool,
             summaries: list) -> Iterator[dict]:
        """Run batch in chunks of batch_size; yield each chunk's outputs, collect class/score/logits."""
        session = self._session(outputs)
        size = self.batch_size
        if self.backward_batch_size and not self.static_batch and {INPUT_GRADIENT, GUIDED_GRADIENT} & set(outputs):
            # As few chunks as the memory allows, of even size: 8 images under a limit of 6 run as 4 + 4.
            chunks = -(-len(batch) // min(size, self.backward_batch_size))
            size = max(1, -(-len(batch) // chunks))
        starts = range(0, len(batch), size)
        if progress:
            from tqdm import tqdm
            starts = tqdm(starts, unit="batch", desc="explain")
        for start in starts:
            chunk, chunk_classes = batch[start:start + size], classes[start:start + size]
            count = len(chunk)
            if self.static_batch and count < self.static_batch:  # pad to the model's fixed batch
                missing = self.static_batch - count
                xp = _array_module(chunk)
                chunk = xp.concatenate([chunk, xp.zeros((missing,) + chunk.shape[1:], chunk.dtype)])
                chunk_classes = np.concatenate([chunk_classes, np.full(missing, -1, np.int64)])
            result = self._run_fitting(session, chunk, chunk_classes, list(outputs))
            if len(chunk) > count:
                result = {name: value[:count] for name, value in result.items()}
            summaries.append({name: _host(result[name]) for name in SUMMARY if name in result})
            yield result

    def _run_fitting(self, session: Session, chunk, classes: np.ndarray, outputs: list[str]) -> dict:
        """Run one chunk; a chunk too large for the GPU is split in halves, not crashed."""
        try:
            return session.run({self.input_name: chunk, TARGET_CLASS: classes}, outputs)
        except Exception as error:  # ONNX Runtime raises its own exception types, by message
            message = str(error).lower()
            if len(chunk) < 2 or self.static_batch or not ("out of memory" in message or "allocate" in message):
                raise
        half = (len(chunk) + 1) // 2
        self.batch_size = max(1, min(self.batch_size, half))  # later chunks start at a size that fits
        parts = [self._run_fitting(session, chunk[:half], classes[:half], outputs),
                 self._run_fitting(session, chunk[half:], classes[half:], outputs)]
        return {name: _concatenate([part[name] for part in parts]) for name in outputs}

    def _heatmaps(self, activation, gradient, entry: Method, size: tuple[int, int]):
        if self.device == "cuda":  # a method without a kernel id gets its map from NumPy there (cam.fused)
            from .cam import fused
            return fused.heatmaps(activation, gradient, entry, size)
        return reference.heatmaps(activation, gradient, entry, size)


SUMMARY = [CLASS, SCORE, LOGITS]
DEFAULT_BACKWARD_MEMORY_MB = {"cpu": 384.0, "cuda": 2048.0}


def _default_session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    # ONNX Runtime's memory pattern plans one block per input shape on top of the arena it already
    # holds, so chunks of two sizes (the last one is smaller) would keep twice the activations;
    # without it the arena reuses its blocks (measured: the same speed, 30% less peak memory).
    options.enable_mem_pattern = False
    return options


def _backward_batch_size(metadata: dict, memory_mb: float) -> Optional[int]:
    """Images per run whose kept forward activations fit in memory_mb (None: not recorded)."""
    per_image = int(metadata.get("backward_bytes_per_image", 0))
    if per_image <= 0:
        return None
    return max(1, int(memory_mb * 2**20 // per_image))


def _join_summary(parts: list[dict]) -> dict:
    return {"classes": np.concatenate([p[CLASS] for p in parts]),
            "scores": np.concatenate([p[SCORE] for p in parts]),
            "logits": np.concatenate([p[LOGITS] for p in parts])}


def _on_device(value) -> bool:
    module = type(value).__module__
    return module.startswith("cupy") or (module.startswith("torch") and getattr(value, "is_cuda", False))


def _as_cupy(value):
    import cupy

    return cupy.from_dlpack(value.detach()) if type(value).__module__.startswith("torch") else value


def _array_module(value):
    if type(value).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def _host(value) -> np.ndarray:
    return value.get() if hasattr(value, "get") and not isinstance(value, np.ndarray) else np.asarray(value)


def _concatenate(parts: list):
    if len(parts) == 1:
        return parts[0]
    if parts and not isinstance(parts[0], np.ndarray):
        import cupy
        return cupy.concatenate(parts)
    return np.concatenate(parts)


def _input_shape(model: onnx.ModelProto, name: str) -> list:
    for value in model.graph.input:
        if value.name == name:
            return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                    for d in value.type.tensor_type.shape.dim]
    raise NotAugmentedError(f"the recorded image input {name!r} is missing from the model")


def _num_classes(model: onnx.ModelProto) -> Optional[int]:
    for value in model.graph.output:
        if value.name == LOGITS:
            dims = value.type.tensor_type.shape.dim
            return dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None
    return None


def _format_shape(shape: Sequence) -> str:
    return "[" + ", ".join("N" if i == 0 and not isinstance(d, int) else str(d) for i, d in enumerate(shape)) + "]"
