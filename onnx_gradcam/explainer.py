"""The user-facing Explainer: images in, heatmaps, classes and scores out."""
from __future__ import annotations

import contextlib
import json
import operator
import os
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import onnx
import onnxruntime as ort

from .arrays import array_module, concatenate, host
from .cam import attribution, gradient_free, reference
from .cam.methods import Family, Method, get_method, normalize_method
from .errors import GradCamError, InputError, NotAugmentedError
from .found import Finder, SplitSessions, found_rows
from .graph.augment import (ACTIVATION, CLASS, GRADIENT, GUIDED_GRADIENT, INPUT_GRADIENT, LOGITS,
                            SCORE, SEED, TARGET_CLASS, augmented_metadata, numbered)
from .graph.io import ModelLike, load_model
from .graph.prune import keep_outputs
from .graph.split import split_seeded
from .prepare import prepare_model, require_outputs
from .preprocess import Preprocess
from .render import read_image
from .runtime import Session, parse_device, providers_for
from .targets import Class, Target, seeds_for

ImageInput = Union[np.ndarray, str, os.PathLike, Sequence[Union[np.ndarray, str, os.PathLike]]]
TargetInput = Union[Target, Sequence[Target]]


@dataclass
class Explanation:
    """Heatmaps [N,H,W] in [0,1] with the explained class, its score and the logits of each image.

    On a model augmented with seed=True, ``scores`` is Y = sum(seed * score) of each image, ``logits``
    the score tensor (any shape) and ``classes`` the targets' class (-1 where a seed or a similarity
    names none). With several target layers, ``activation`` and ``gradient`` are lists, one per layer.
    """

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
        if self.logits.ndim != 2:
            raise InputError(f"probabilities need [N, classes] logits; this model's score is "
                             f"{list(self.logits.shape)}: read explanation.logits instead")
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
        # seed=True models take gradcam_seed (shaped like the score) instead of gradcam_target_class.
        self.seeded = self.metadata.get("seed") == "true"
        self.selector_name = SEED if self.seeded else TARGET_CLASS
        self.seed_shape = _input_shape(proto, SEED) if self.seeded else None
        self.seed_dtype = _input_dtype(proto, SEED) if self.seeded else None
        self.layer_count = len(json.loads(self.metadata.get("targets") or "[]")) or 1
        self.summary_outputs = [SCORE, LOGITS] if self.seeded else SUMMARY
        self.preprocess = self._preprocess_spec(prepared.preprocess)
        # A model given as a file is read again for each new session rather than held here: its
        # weights would otherwise stay in memory beside every session's own copy.
        self._source = model if isinstance(model, (str, os.PathLike)) else proto
        self.device_spec, self.providers = device, providers
        self.session_options = session_options
        self.output_names = [o.name for o in proto.graph.output]
        self._model_inputs = _graph_inputs(proto)
        self._sessions: dict[frozenset, Session] = {}  # created on first use: each holds the weights
        self._session_inputs: dict[frozenset, list[str]] = {}  # the inputs each session reads
        self._score_shapes: dict[tuple, tuple] = {}  # one image's score shape by input shape (seeded models)
        self._splits: dict[frozenset, Optional[SplitSessions]] = {}  # forward and reverse parts by outputs
        self._split_unusable = False
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
        xp = array_module(batch)
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
                baseline: Optional[np.ndarray] = None, seed: Any = None, as_numpy: bool = False,
                target: Optional[TargetInput] = None) -> Explanation:
        """Explain a batch: heatmaps [N,H,W] in [0,1], classes, scores, logits (and tensors on request).

        What to explain, one of: target_class (int, or one per image; None / -1: the top class);
        target, an onnx_gradcam.targets object (Class, Detection, Segmentation, Similarity) or one per
        image; seed, a float array [N, *score_shape[1:]] fed to gradcam_seed as is. Target and seed
        need a model augmented with seed=True (targets are turned into seeds from a forward pass
        first); on such a model target_class means Class targets, and a plain classifier takes
        Class targets as target_class. Passing more than one of them is an InputError.

        CAM methods (onnx_gradcam.METHODS) need only the augmented model; input-gradient methods need
        it augmented with input_gradient=True (saliency, smoothgrad, integrated_gradients) or guided=True
        (guided_backprop, guided_gradcam). smoothgrad uses `samples` noisy copies (16; noise std =
        noise_level * value range, 0.15; an int `seed` is the noise seed, 0); integrated_gradients uses `steps`
        Gauss-Legendre points (32) from `baseline` (zeros by default); both run as batches. Options a
        method does not take are ignored; None means the method's default (cam.methods). On
        device="cuda" CAM heatmaps (and tensors) stay CuPy arrays unless as_numpy=True, and a CuPy
        seed stays on the GPU.
        """
        entry = self._entry(method)
        run = self._runner(entry)
        batch = self.prepare(images)
        if len(batch) == 0:
            raise InputError("no images to explain: the batch is empty")
        gradient_seed, noise_seed = _split_seed(seed)
        size = tuple(batch.shape[1:3] if self.layout == "NHWC" else batch.shape[2:4])
        targets = self._targets_to_find(len(batch), target_class, target, gradient_seed)
        if targets is not None and entry.family == Family.CAM:  # seeds from the forward pass, run once
            explanation = self._explain_cam_found(batch, targets, entry, size, keep_tensors, progress)
        else:
            selector, classes = self._selector(batch, target_class, target, gradient_seed, targets)
            options = entry.resolve_options(samples=samples, noise_level=noise_level, steps=steps,
                                            baseline=baseline, seed=noise_seed)
            explanation = run(batch, selector, entry, size, keep_tensors=keep_tensors, progress=progress, **options)
            if classes is not None:
                explanation.classes = classes
        if as_numpy:
            for name in ("heatmaps", "activation", "gradient"):
                setattr(explanation, name, _on_host(getattr(explanation, name)))
        return explanation

    def predict(self, images: ImageInput) -> np.ndarray:
        """Return the float32 score tensor of a batch: the logits [N, classes] of a classifier, any shape on a
        seed=True model (the forward pass only, in batch_size chunks)."""
        batch = self.prepare(images)
        if len(batch) == 0:
            raise InputError("no images to predict: the batch is empty")
        return np.asarray(self._forward(batch), np.float32)

    def warm_up(self, method: Optional[str] = None) -> "Explainer":
        """Create now the ONNX Runtime sessions a method needs (otherwise made by its first call)."""
        entry = self._entry(method)
        output_sets = self._output_sets(entry)
        if self.seeded and entry.family == Family.CAM:  # seeds from the forward pass: the split model
            (outputs,) = output_sets
            if self.split_sessions([name for name in outputs if name != LOGITS]) is not None:
                return self
        if self.seeded:  # targets become seeds from a forward pass first
            output_sets.insert(0, [LOGITS])
        for outputs in output_sets:
            self._session(outputs)
        return self

    def _entry(self, method: Optional[str]) -> Method:
        """The registry entry of method (default: the Explainer's), checked against the model's outputs."""
        entry = get_method(method or self.method)
        require_outputs(entry, self.output_names)
        return entry

    def _runner(self, entry: Method):
        """The method that explains a batch for entry's family (one runner per Family)."""
        runners = {Family.CAM: self._explain_cam, Family.INPUT_GRADIENT: self._explain_input,
                   Family.GRADIENT_FREE: partial(gradient_free.explain_gradient_free, self)}
        return runners[entry.family]

    def _output_sets(self, entry: Method) -> list[list[str]]:
        """The outputs of each session a method runs, in the order it runs them."""
        outputs = list(entry.outputs)
        if entry.family == Family.CAM:  # every target layer's activation (and gradient)
            outputs = [numbered(name, layer) for layer in range(self.layer_count) for name in entry.outputs]
        if entry.sample is not None:
            return [self.summary_outputs, outputs]  # the clean image's summary, then the samples' gradients
        return [outputs + self.summary_outputs]

    # ---------------------------------------------------------------- what to explain

    def _targets_to_find(self, count: int, target_class, target, gradient_seed) -> Optional[list[Target]]:
        """One target per image when a seeded model's seeds come from its forward pass (None otherwise)."""
        _check_one_given(target_class, target, gradient_seed)
        if not self.seeded or gradient_seed is not None:
            return None
        targets = target if target is not None else self._class_targets(target_class, count)
        targets = [targets] * count if isinstance(targets, Target) else list(targets)
        if len(targets) != count or not all(isinstance(item, Target) for item in targets):
            raise InputError(f"got {len(targets)} targets for a batch of {count} images; pass one "
                             "onnx_gradcam.targets object per image, or a single one for all of them")
        return targets

    def _selector(self, batch, target_class, target, gradient_seed,
                  targets: Optional[list[Target]]) -> tuple[Any, Optional[np.ndarray]]:
        """The gradcam_target_class [N] or gradcam_seed [N, ...] feed, and the explained classes when known
        before the run (None: read from the run); targets: _targets_to_find's."""
        count = len(batch)
        if not self.seeded:
            if gradient_seed is not None:
                raise InputError("this model takes no gradcam_seed: augment the plain model with seed=True "
                                 "(`onnx-gradcam augment MODEL -o OUT --seed`), or pass target_class")
            if target is not None:
                target_class = _class_indices(target, count)
            return self._target_classes(target_class, count), None
        if gradient_seed is not None:
            return self._check_seed(gradient_seed, batch), None
        seeds = seeds_for(targets, self._forward(batch))
        return self._check_seed(seeds, batch), _explained_classes(targets, seeds)

    def _class_targets(self, target_class, count: int) -> list[Target]:
        """Class targets for target_class on a seeded model (None / -1: each image's top class)."""
        if target_class is None and len(self.seed_shape) != 2:
            raise InputError(f"this model's score is {_format_shape(self.seed_shape)} (augmented with seed=True): "
                             "say what to explain with target= (onnx_gradcam.targets.Detection, Segmentation, "
                             "Similarity) or seed=; onnx_gradcam.tasks explains boxes, masks and embeddings")
        return [Class(None if index < 0 else int(index)) for index in self._target_classes(target_class, count)]

    def _check_seed(self, seed, batch):
        """seed as a contiguous array of the model's seed dtype, on the device it came from; InputError unless
        it has the score's shape for this batch."""
        if _on_device(seed):
            if self.device != "cuda":
                raise InputError("a GPU seed needs Explainer(device='cuda'); pass a NumPy seed on the CPU")
            seed = _as_cupy(seed)
        elif not isinstance(seed, np.ndarray):
            seed = np.asarray(seed)
        if seed.dtype.kind != "f":
            raise InputError(f"seed must be a float array shaped like the score, got dtype {seed.dtype}; "
                             "build seeds with onnx_gradcam.targets.seeds_for or pass float32")
        if seed.ndim != len(self.seed_shape) or len(seed) != len(batch) or any(
                isinstance(want, int) and want != got for want, got in zip(self.seed_shape[1:], seed.shape[1:])):
            raise _seed_shape_error(seed, [len(batch), *self.seed_shape[1:]])
        expected = [len(batch), *self._score_shape(batch)]
        if list(seed.shape) != expected:  # the dims the graph leaves dynamic, checked against a forward pass
            raise _seed_shape_error(seed, expected)
        xp = array_module(seed)
        if not bool(xp.isfinite(seed).all()):
            raise InputError("seed contains NaN or infinite values")
        return xp.ascontiguousarray(seed.astype(self.seed_dtype, copy=False))

    def _score_shape(self, batch) -> tuple:
        """One image's score shape for images shaped like batch's (a forward pass of one image when the graph
        leaves some of its dims dynamic, once per image shape)."""
        if all(isinstance(dim, int) for dim in self.seed_shape[1:]):
            return tuple(self.seed_shape[1:])
        key = tuple(batch.shape[1:])
        if key not in self._score_shapes:
            self._forward(batch[:1])
        return self._score_shapes[key]

    def _forward(self, batch):
        """The score tensor (gradcam_logits) of a batch on the host, from a forward-only session."""
        scores = concatenate([host(result[LOGITS]) for result in self._run(batch, None, [LOGITS], False, [])])
        self._score_shapes[tuple(batch.shape[1:])] = tuple(scores.shape[1:])
        return scores

    # ---------------------------------------------------------------- runners

    def _explain_cam(self, batch, selector, entry: Method, size, keep_tensors: bool = False,
                     progress: bool = False) -> Explanation:
        part_list = []
        (outputs,) = self._output_sets(entry)
        maps = self._cam_rows(self._run(batch, selector, outputs, progress, part_list), entry, size, keep_tensors)
        return Explanation(method=entry.name, **_join_summary(part_list), **maps)

    def _explain_cam_found(self, batch, targets: list[Target], entry: Method, size, keep_tensors: bool,
                           progress: bool) -> Explanation:
        """CAM of seeds made from the forward pass (targets, one per image), the forward pass run once."""
        classes, logits = [], []

        def find(start: int, score: np.ndarray):
            chunk = targets[start:start + len(score)]
            seeds = seeds_for(chunk, score)
            classes.append(_explained_classes(chunk, seeds))
            logits.append(score)
            return np.arange(len(score)), lambda rows: seeds[rows]

        rows = self.explain_found(batch, find, entry.name, keep_tensors, progress=progress)
        return Explanation(method=entry.name, classes=np.concatenate(classes), logits=np.concatenate(logits), **rows)

    def explain_found(self, images: ImageInput, find: Finder, method: Optional[str] = None,
                      keep_tensors: bool = False, as_numpy: bool = False, progress: bool = False) -> dict:
        """Explain what find picks from the model's own score, one row per seed; seed=True models only.

        find(start, score) gets each chunk's score tensor (NumPy, batch_size images from batch index start)
        and returns (image index [R] into the chunk, seeds(rows: slice) -> float32 seeds of those rows);
        onnx_gradcam.tasks finds boxes and masks this way. Returns heatmaps [R,H,W], scores [R] (the seeded
        score of each row) and, with keep_tensors, activation and gradient [R,K,h,w]. CAM methods run the
        forward pass once per image (found.py); other methods run it again for the seeded rows.
        """
        if not self.seeded:
            raise InputError("explain_found needs a model augmented with seed=True")
        entry = self._entry(method)
        batch = self.prepare(images)
        size = tuple(batch.shape[1:3] if self.layout == "NHWC" else batch.shape[2:4])
        if entry.family == Family.CAM:
            (outputs,) = self._output_sets(entry)
            scores = []

            def results() -> Iterator[dict]:
                for _, result in found_rows(self, batch, find, [name for name in outputs if name != LOGITS],
                                            progress):
                    scores.append(host(result[SCORE]))
                    yield result

            rows = self._cam_rows(results(), entry, size, keep_tensors)
            rows["scores"] = np.concatenate(scores) if scores else np.zeros(0, np.float32)
        else:  # methods that run their own passes (samples, baselines): explain on the seeded rows
            def explain_rows(images, seeds) -> dict:
                explanation = self.explain(images, seed=seeds, method=entry.name, keep_tensors=keep_tensors)
                return {name: getattr(explanation, name) for name in ("heatmaps", "scores", "activation", "gradient")}

            parts = [result for _, result in found_rows(self, batch, find, None, progress, explain_rows)]
            rows = ({name: _join_rows([part[name] for part in parts]) for name in parts[0]} if parts else
                    {"heatmaps": np.zeros((0, *size), np.float32), "scores": np.zeros(0, np.float32),
                     "activation": None, "gradient": None})
        if as_numpy:
            rows.update({name: _on_host(rows[name]) for name in ("heatmaps", "activation", "gradient")})
        return rows

    def _cam_rows(self, results: Iterable[dict], entry: Method, size: tuple[int, int],
                 keep_tensors: bool = False) -> dict:
        """heatmaps (and with keep_tensors activation and gradient) of runs' results, one row per result row."""
        heatmaps, kept = [], []
        for result in results:
            pairs = [(result[numbered(ACTIVATION, layer)], result.get(numbered(GRADIENT, layer)))
                     for layer in range(self.layer_count)]
            heatmaps.append(self._heatmaps(pairs, entry, size))
            if keep_tensors:
                kept.append(pairs)
        activation, gradient = _joined_tensors(kept, self.layer_count)
        if not heatmaps:
            return {"heatmaps": np.zeros((0, *size), np.float32), "activation": None, "gradient": None}
        return {"heatmaps": concatenate(heatmaps), "activation": activation, "gradient": gradient}

    def _explain_input(self, batch, selector, entry: Method, size, keep_tensors: bool = False,
                       progress: bool = False, **options) -> Explanation:
        batch, output_sets = host(batch), self._output_sets(entry)
        if entry.sample is not None:
            # The explained class is the clean image's: fix it before sampling around the image.
            summary = _join_summary(list(self._run(batch, selector, output_sets[0], False, [])))
            drawn = entry.sample(batch, self.layout, **options)
            fixed = selector if self.seeded else summary["classes"]
            repeated = array_module(fixed).repeat(fixed, drawn.repeat, axis=0)
            gradients = concatenate([host(r[entry.gradient_output]) for r in self._run(
                drawn.inputs, repeated, output_sets[1], progress, [])])
            result = entry.combine(gradients, drawn)
        else:
            chunks, part_list = [], []
            for output in self._run(batch, selector, output_sets[0], progress, part_list):
                chunks.append(entry.attribute({name: host(value) for name, value in output.items()}, size))
            summary, result = _join_summary(part_list), concatenate(chunks)
        return Explanation(heatmaps=attribution.attribution_heatmaps(result), method=entry.name,
                           attribution=result, **summary)

    # ---------------------------------------------------------------- sessions and runs

    def _session(self, outputs: Sequence[str]) -> Session:
        """A session computing just these outputs (ONNX Runtime would run every node otherwise)."""
        key = frozenset(outputs)
        if key not in self._sessions:
            wanted = [name for name in self.output_names if name in key]
            if set(self.output_names) <= key:
                model, inputs = self._source, self._model_inputs
            else:
                model = _without_unused_inputs(keep_outputs(load_model(self._source), wanted))
                inputs = _graph_inputs(model)
            self._sessions[key] = Session(model, device=self.device_spec, providers=self.providers,
                                          options=self.session_options or _default_session_options())
            self._session_inputs[key] = inputs
        return self._sessions[key]

    def split_sessions(self, outputs: Sequence[str]) -> Optional[SplitSessions]:
        """The forward and reverse sessions of this seeded model split for outputs (found.py), made on first
        use; None when the graph cannot be split (it then runs whole)."""
        key = frozenset(outputs)
        if self._split_unusable:
            return None
        if key not in self._splits:
            try:
                split = split_seeded(load_model(self._source), [*outputs, LOGITS])
            except (ValueError, GradCamError):  # a graph the split does not handle runs whole
                self._splits[key] = None
                return None
            try:
                self._splits[key] = SplitSessions(split, lambda model: Session(
                    model, device=self.device_spec, providers=self.providers,
                    options=self.session_options or _default_session_options()))
            except Exception as error:  # ONNX Runtime refusing a part: the whole graph still gives the answer
                warnings.warn(f"the seeded model's forward and reverse parts did not load ({error}); "
                              "explaining with the whole graph instead", RuntimeWarning)
                self._splits[key] = None
        return self._splits[key]

    def drop_split(self) -> None:
        """Run every seeded explanation as one graph from now on (a split that proved unusable)."""
        self._split_unusable = True

    def _run(self, batch: np.ndarray, selector, outputs: Sequence[str], progress: bool,
             summaries: list) -> Iterator[dict]:
        """Run batch in chunks of batch_size with its selector (classes or seeds; None for forward-only
        outputs); yield each chunk's outputs, collect score, logits (and class)."""
        session = self._session(outputs)
        inputs = self._session_inputs[frozenset(outputs)]
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
            chunk = batch[start:start + size]
            chunk_selector = None if selector is None else selector[start:start + size]
            count = len(chunk)
            if self.static_batch and count < self.static_batch:  # pad to the model's fixed batch
                chunk, chunk_selector = self._padded(chunk, chunk_selector)
            feeds = {name: value for name, value in ((self.input_name, chunk), (self.selector_name, chunk_selector))
                     if name in inputs}
            result = self._run_fitting(session, feeds, list(outputs))
            if len(chunk) > count:
                result = {name: value[:count] for name, value in result.items()}
            summaries.append({name: host(result[name]) for name in SUMMARY if name in result})
            yield result

    def _padded(self, chunk, selector):
        """chunk (and its selector) padded with zeros (class -1) to the model's fixed batch size."""
        missing = self.static_batch - len(chunk)
        xp = array_module(chunk)
        chunk = xp.concatenate([chunk, xp.zeros((missing,) + chunk.shape[1:], chunk.dtype)])
        if selector is not None:
            xp = array_module(selector)
            padding = xp.full((missing,) + selector.shape[1:], -1 if not self.seeded else 0, selector.dtype)
            selector = xp.concatenate([selector, padding])
        return chunk, selector

    def _run_fitting(self, session: Session, feeds: dict, outputs: list[str]) -> dict:
        """Run once; a run too large for the GPU is split in halves along the rows of every feed, not crashed."""
        try:
            return session.run(feeds, outputs)
        except Exception as error:  # ONNX Runtime raises its own exception types, by message
            message = str(error).lower()
            rows = len(next(iter(feeds.values())))
            if rows < 2 or self.static_batch or not ("out of memory" in message or "allocate" in message):
                raise
        half = (rows + 1) // 2
        self.batch_size = max(1, min(self.batch_size, half))  # later chunks start at a size that fits
        parts = [self._run_fitting(session, {name: value[part] for name, value in feeds.items()}, outputs)
                 for part in (slice(0, half), slice(half, None))]
        return {name: concatenate([part[name] for part in parts]) for name in outputs}

    def _heatmaps(self, pairs: list[tuple[Any, Any]], entry: Method, size: tuple[int, int]):
        """[N,H,W] heatmaps from each target layer's (activation, gradient); several layers are aggregated."""
        if self.device == "cuda":  # a method without a kernel id gets its map from NumPy there (cam.fused)
            from .cam import fused
            if len(pairs) == 1:
                return fused.heatmaps(*pairs[0], entry, size)
            # Per layer: the kernel's ReLU and min-max at the layer's own size; then resize, mean, min-max.
            # (The kernel's second min-max at the same size rescales a map by 1 + ~1e-7 / its raw range.)
            return _aggregate_normalized([fused.heatmaps(activation, gradient, entry, activation.shape[2:])
                                          for activation, gradient in pairs], size)
        if len(pairs) == 1:
            return reference.heatmaps(*pairs[0], entry, size)
        return reference.aggregate_layers([reference.raw_cam(a, g, entry) for a, g in pairs], size)


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
    """classes, scores and logits of the chunks' summaries (classes -1 where the model outputs none)."""
    scores = np.concatenate([p[SCORE] for p in parts])
    classes = (np.concatenate([p[CLASS] for p in parts]) if parts and CLASS in parts[0]
               else np.full(len(scores), -1, np.int64))
    return {"classes": classes, "scores": scores, "logits": np.concatenate([p[LOGITS] for p in parts])}


def _seed_shape_error(seed, expected: list) -> InputError:
    return InputError(f"seed has shape {list(seed.shape)} but the score of these {expected[0]} images is "
                      f"{_format_shape(expected)}: one seed row per image, shaped like the model's score "
                      "(explainer.predict(images) gives it)")


def _on_host(value):
    """An array, a list of arrays (one per target layer) or None, on the host."""
    if value is None:
        return None
    return [host(part) for part in value] if isinstance(value, list) else host(value)


def _join_rows(values: list):
    """The rows of several runs' values joined: arrays, lists of arrays (one per target layer), or None."""
    if values[0] is None:
        return None
    if isinstance(values[0], list):
        return [concatenate([value[layer] for value in values]) for layer in range(len(values[0]))]
    return concatenate(values)


def _check_one_given(target_class, target, gradient_seed) -> None:
    """InputError when more than one way to say what to explain is given."""
    given = [name for name, value in (("target_class", target_class), ("target", target),
                                      ("seed", gradient_seed)) if value is not None]
    if len(given) > 1:
        raise InputError(f"pass one of target_class, target and seed, got {' and '.join(given)}: a seed is "
                         "the objective itself, targets and classes are turned into seeds")


def _split_seed(seed) -> tuple[Any, Optional[int]]:
    """(gradient seed array, SmoothGrad noise seed) from explain's seed: an int is the noise seed."""
    if seed is None:
        return None, None
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return None, operator.index(seed)
    return seed, None


def _class_indices(target: Any, count: int) -> np.ndarray:
    """target_class for Class targets on a classifier without a seed input (-1: the top class)."""
    targets = [target] * count if isinstance(target, Target) else list(target)
    if not all(isinstance(item, Class) for item in targets):
        kinds = sorted({type(item).__name__ for item in targets if not isinstance(item, Class)})
        raise InputError(f"{', '.join(kinds)} targets need a model augmented with seed=True "
                         "(`onnx-gradcam augment MODEL -o OUT --seed`, or prepare_model(..., task=...)); "
                         "this model explains classes only (targets.Class or target_class)")
    if len(targets) != count:
        raise InputError(f"got {len(targets)} targets for a batch of {count} images; "
                         "pass one target per image, or a single target for all of them")
    return np.array([-1 if item.class_index is None else item.class_index for item in targets], np.int64)


def _explained_classes(targets: Any, seeds: np.ndarray) -> np.ndarray:
    """The class each image's target explains, read from its seed (-1 where it names none)."""
    per_image = [targets] * len(seeds) if isinstance(targets, Target) else list(targets)
    return np.array([target.explained_class(seed) for target, seed in zip(per_image, seeds)], np.int64)


def _joined_tensors(kept: list[list[tuple[Any, Any]]], layers: int) -> tuple[Any, Any]:
    """(activation, gradient) of the kept chunks: arrays for one target layer, lists for several; None if unkept."""
    if not kept:
        return None, None
    joined = []
    for index in (0, 1):  # activation, gradient
        if kept[0][0][index] is None:  # a method that reads no gradient
            joined.append(None)
            continue
        per_layer = [concatenate([pairs[layer][index] for pairs in kept]) for layer in range(layers)]
        joined.append(per_layer[0] if layers == 1 else per_layer)
    return joined[0], joined[1]


def _aggregate_normalized(maps: list, size: tuple[int, int]):
    """reference.aggregate_layers after its per-layer ReLU and min-max: maps [N,h_l,w_l] in [0,1] are
    resized to size, averaged and min-max normalized, with NumPy or CuPy (on the maps' device)."""
    total = _resize_bilinear(maps[0], size)
    for layer_map in maps[1:]:
        total = total + _resize_bilinear(layer_map, size)
    return reference.normalize(total / np.float32(len(maps)))


def _resize_bilinear(maps, size: tuple[int, int]):
    """[N,h,w] float32 -> [N,H,W], bilinear with half-pixel centres and clamped edges, in
    cv2.resize(INTER_LINEAR)'s order (rows of each source row first, then between rows); NumPy or CuPy."""
    xp = array_module(maps)
    with maps.device if xp is not np else contextlib.nullcontext():  # CuPy: taps on the maps' GPU
        top, bottom, top_weight, bottom_weight = (xp.asarray(tap) for tap in _bilinear_taps(maps.shape[1], size[0]))
        left, right, left_weight, right_weight = (xp.asarray(tap) for tap in _bilinear_taps(maps.shape[2], size[1]))
        rows = maps[:, :, left] * left_weight + maps[:, :, right] * right_weight
        return rows[:, top] * top_weight[:, None] + rows[:, bottom] * bottom_weight[:, None]


def _bilinear_taps(source: int, target: int) -> tuple[np.ndarray, ...]:
    """(first, second, weight of first, weight of second) for each of target output positions, as OpenCV
    computes them: position (i + 0.5) * source / target - 0.5 in float32, clamped to the edge pixels."""
    scale = 1 / (target / source)  # OpenCV's scale, the inverse of its inverse scale
    position = ((np.arange(target) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    fraction = position - first.astype(np.float32)
    fraction[(first < 0) | (first >= source - 1)] = 0
    first = np.clip(first, 0, source - 1)
    second = np.minimum(first + 1, source - 1)
    return first, second, np.float32(1) - fraction, fraction


def _on_device(value) -> bool:
    module = type(value).__module__
    return module.startswith("cupy") or (module.startswith("torch") and getattr(value, "is_cuda", False))


def _as_cupy(value):
    import cupy

    return cupy.from_dlpack(value.detach()) if type(value).__module__.startswith("torch") else value


def _input_shape(model: onnx.ModelProto, name: str) -> list:
    for value in model.graph.input:
        if value.name == name:
            return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                    for d in value.type.tensor_type.shape.dim]
    raise NotAugmentedError(f"the input {name!r} recorded in the metadata is missing from the model")


def _input_dtype(model: onnx.ModelProto, name: str) -> np.dtype:
    (value,) = [value for value in model.graph.input if value.name == name]
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))


def _graph_inputs(model: onnx.ModelProto) -> list[str]:
    """The inputs a run must feed (initializers listed as inputs are not fed)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [value.name for value in model.graph.input if value.name not in initializers]


def _without_unused_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """model without the graph inputs no node reads (a pruned forward-only graph needs no class or seed,
    and ONNX Runtime refuses a run that does not feed every input)."""
    read = {name for node in model.graph.node for name in node.input}
    read.update(output.name for output in model.graph.output)
    unused = [value for value in model.graph.input if value.name not in read]
    for value in unused:
        model.graph.input.remove(value)
    return model


def _num_classes(model: onnx.ModelProto) -> Optional[int]:
    for value in model.graph.output:
        if value.name == LOGITS:
            dims = value.type.tensor_type.shape.dim
            return dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None
    return None


def _format_shape(shape: Sequence) -> str:
    return "[" + ", ".join("N" if i == 0 and not isinstance(d, int) else "?" if d is None else str(d)
                           for i, d in enumerate(shape)) + "]"
