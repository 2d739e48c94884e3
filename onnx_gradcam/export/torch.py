"""PyTorch nn.Module -> ONNX with the target module's output exposed -> augmented model.

The target module's output is returned as an extra model output (forward hooks) so the
exporter gives it a known name; `augment` differentiates the graph back to that tensor;
the extra output is dropped again. The TorchScript exporter (`dynamo=False`) is used: it
gives plain Conv/Gemm/Flatten graphs and a dynamic batch axis, where the dynamo exporter
lowers pooling and flattening to Gather-style ops that have no differentiation rule.
"""
from __future__ import annotations

import inspect
import os
import tempfile
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Union

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import ExportError, TargetNotFoundError
from ..graph.augment import augment
from . import LayerOutput, check_target_output, close_names, finish, first_line, format_shape, listing, preprocess_spec

INPUT_NAME = "input"
LOGITS_NAME = "logits"
ModuleTarget = Union[str, nn.Module]


def export_torch(module: nn.Module, example_input: Any, target: ModuleTarget = "auto",
                 path: Optional[Union[str, os.PathLike]] = None, opset: Optional[int] = None,
                 dynamic_batch: bool = True, preprocess: Any = None, heatmap: bool = False) -> onnx.ModelProto:
    """Return the augmented ONNX model of module explained at target (saved to path when given).

    module: a single-input image classifier returning [N, classes] scores (a tensor, the first of
        a tuple, or a dict/object with `logits`).
    example_input: one float image batch, [N, C, H, W] (or [N, H, W, C] for channels-last models);
        H and W are fixed in the export, the batch stays dynamic unless dynamic_batch=False.
    target: a module name as in `named_modules()` ("layer4", "features.33"), the submodule itself,
        or "auto" (the last 4-D activation before the spatial collapse). A module called several
        times is explained at its last call.
    preprocess: dict or Preprocess recorded in the metadata, so raw images can be fed; its size and
        layout are filled in from example_input.
    heatmap: also compute gradcam_heatmap in the graph.
    """
    example = _example_tensor(module, example_input)
    with _eval_mode(module):
        if isinstance(module, torch.jit.ScriptModule):
            _refuse_named_target(target)
            _logits(_run(module, example))
            target_name = None
        else:
            outputs, model_output = _probe(module, example)
            _logits(model_output)
            target_name = None if _is_auto(target) else _resolve_target(module, target, outputs)
        target_tensor = None if target_name is None else _tensor_name(target_name)
        output_names = [LOGITS_NAME] + ([target_tensor] if target_tensor else [])
        with _exposed(module, target_name):
            exported = trace_to_onnx(module, example, INPUT_NAME, output_names, dynamic_batch, opset, hint=(
                f"Check that the model runs at input size {format_shape(example.shape)} (e.g. AdaptiveAvgPool2d "
                "exports only when its output size divides its input size, so torchvision VGG needs 224x224)"))
    if target_tensor is not None and target_tensor not in {o.name for o in exported.graph.output}:
        raise ExportError(f"the exporter did not keep the output of module {target_name!r} as its own tensor "
                          "(is it an identity of another tensor?); pick a module that computes something")
    layout, channels, size = _image_geometry(example)
    augmented = augment(exported, target=target_tensor or "auto", heatmap=heatmap,
                        preprocess=preprocess_spec(preprocess, size, channels, layout))
    info = {"framework": "torch", "torch": torch.__version__, "model": type(module).__qualname__,
            "target_module": target_name or "auto", "input_shape": list(example.shape)}
    return finish(augmented, target_tensor, info, None if path is None else os.fspath(path))


def list_torch_targets(module: nn.Module, example_input: Any) -> list[LayerOutput]:
    """Return the submodules whose output is 4-D on example_input, in the order they finish."""
    example = _example_tensor(module, example_input)
    if isinstance(module, torch.jit.ScriptModule):
        raise ExportError("TorchScript modules cannot be hooked; export with target='auto' and use "
                          "onnx_gradcam.list_targets on the ONNX file instead")
    with _eval_mode(module):
        outputs, _ = _probe(module, example)
    return [info for info in outputs.values() if len(info.shape) == 4]


# ---------------------------------------------------------------- inputs and outputs

def _example_tensor(module: nn.Module, example_input: Any) -> torch.Tensor:
    """The single float 4-D image batch the model is exported with, or a clear error."""
    if not isinstance(module, nn.Module):
        raise ExportError(f"export_torch needs a torch.nn.Module, got {type(module).__name__}")
    if isinstance(example_input, dict):
        raise ExportError(f"the example input is a dict of {len(example_input)} inputs; Grad-CAM export takes "
                          "models with one image input: wrap the model so it takes the image only")
    if isinstance(example_input, (tuple, list)):
        if len(example_input) != 1:
            raise ExportError(f"the example input holds {len(example_input)} inputs; Grad-CAM export takes models "
                              "with one image input: wrap the model in an nn.Module that takes the image and "
                              "fixes the other inputs")
        example_input = example_input[0]
    if isinstance(example_input, np.ndarray):
        example_input = torch.from_numpy(example_input)
    if not isinstance(example_input, torch.Tensor):
        raise ExportError(f"example_input must be a tensor (an image batch), got {type(example_input).__name__}")
    required = _required_positional_parameters(module)
    if required > 1:
        raise ExportError(f"{type(module).__name__}.forward takes {required} required inputs; Grad-CAM export "
                          "takes models with one image input: wrap the model so it takes the image only")
    if not example_input.is_floating_point():
        raise ExportError(f"the example input has dtype {example_input.dtype}; Grad-CAM explains image models "
                          "whose input is a float image batch (token ids or other non-image inputs cannot be "
                          "explained with a spatial heatmap)")
    if example_input.dim() != 4:
        raise ExportError(f"the example input has shape {format_shape(example_input.shape)}; Grad-CAM explains "
                          "image models: pass a 4-D image batch [N, C, H, W] (non-image models have no "
                          "spatial activation to localize)")
    return example_input


def _required_positional_parameters(module: nn.Module) -> int:
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError, RuntimeError):  # TorchScript and C++ modules may hide their signature
        return 0
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in parameters if p.kind in kinds and p.default is inspect.Parameter.empty)


def _logits(output: Any) -> torch.Tensor:
    """The [N, classes] score tensor of a model output (tensor, first of a tuple, or `logits`)."""
    scores = output
    if isinstance(scores, (tuple, list)) and scores:
        scores = scores[0]
    elif isinstance(scores, dict):
        scores = scores.get("logits", next(iter(scores.values()), None))
    elif not isinstance(scores, torch.Tensor) and hasattr(scores, "logits"):
        scores = scores.logits
    if not isinstance(scores, torch.Tensor):
        raise ExportError(f"the model returned {type(output).__name__}; Grad-CAM needs a classifier that returns "
                          "[N, classes] scores (a tensor, a tuple starting with one, or a dict with 'logits')")
    if scores.dim() != 2 or not scores.is_floating_point():
        raise ExportError(f"the model output has shape {format_shape(scores.shape)} and dtype {scores.dtype}; "
                          "Grad-CAM needs a classifier whose output is [N, classes] float scores")
    return scores


def _image_geometry(example: torch.Tensor) -> tuple[str, int, tuple[int, int]]:
    """(layout, channels, (H, W)) of an image batch; channels-last only when the shape says so."""
    _, second, third, last = example.shape
    if last in (1, 3, 4) and second not in (1, 3, 4):
        return "NHWC", int(last), (int(second), int(third))
    return "NCHW", int(second), (int(third), int(last))


# ---------------------------------------------------------------- target

def _is_auto(target: ModuleTarget) -> bool:
    return isinstance(target, str) and target == "auto"


def _refuse_named_target(target: ModuleTarget) -> None:
    if not _is_auto(target):
        raise ExportError("a TorchScript module cannot be hooked to expose a submodule's output; export it with "
                          "target='auto', or export to ONNX and pass a tensor name to onnx_gradcam.augment")


def _resolve_target(module: nn.Module, target: ModuleTarget, outputs: dict[str, LayerOutput]) -> str:
    """The name of the target module, checked to give a 4-D output with spatial extent."""
    candidates = list(outputs.values())
    known = dict(module.named_modules())
    if isinstance(target, nn.Module):
        if target is module:
            raise TargetNotFoundError("the target is the whole model; pass one of its submodules "
                                      "(see list_torch_targets)")
        name = next((n for n, sub in known.items() if sub is target), None)
        if name is None:
            raise TargetNotFoundError(f"the target {type(target).__name__} module is not a submodule of the "
                                      "model; pass a module from model.named_modules() or its name")
    elif isinstance(target, str):
        name = target
        if name == "" or name not in known:
            close = close_names(name, [n for n in known if n])
            hint = f" Did you mean {close}?" if close else ""
            raise TargetNotFoundError(f"the model has no module named {name!r}.{hint} "
                                      f"Modules with a 4-D output:\n{listing(candidates)}")
    else:
        raise TargetNotFoundError(f"target must be 'auto', a module name or an nn.Module, "
                                  f"got {type(target).__name__}")
    info = outputs.get(name)
    if info is None:
        raise TargetNotFoundError(f"module {name!r} is not called when the model runs on the example input, "
                                  f"so it has no activation to explain. Modules with a 4-D output:\n"
                                  f"{listing(candidates)}")
    check_target_output(info, "module", candidates)
    if info.calls > 1:
        warnings.warn(f"module {name!r} runs {info.calls} times per forward pass; its last call is explained",
                      stacklevel=3)
    return name


def _tensor_name(module_name: str) -> str:
    """ONNX name of the exposed target tensor: the module name, kept apart from the I/O names."""
    return f"{module_name}_output" if module_name in (INPUT_NAME, LOGITS_NAME) else module_name


# ---------------------------------------------------------------- running and exporting

@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Evaluation mode (BatchNorm running stats, no dropout) for the duration, then the caller's mode back."""
    training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(training)


def _run(module: nn.Module, example: torch.Tensor) -> Any:
    try:
        with torch.no_grad():
            return module(example)
    except Exception as error:
        raise ExportError(f"running the model on the example input {format_shape(example.shape)} failed: "
                          f"{type(error).__name__}: {first_line(error)}") from error


def _probe(module: nn.Module, example: torch.Tensor) -> tuple[dict[str, LayerOutput], Any]:
    """Run module once and record every submodule's output shape (in finishing order) and the model output."""
    outputs: dict[str, LayerOutput] = {}

    def record(name: str):
        def hook(submodule, inputs, output):
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
            calls = outputs[name].calls + 1 if name in outputs else 1
            outputs.pop(name, None)  # re-insert: a module called again finishes later
            outputs[name] = LayerOutput(name, type(submodule).__name__, shape, calls=calls)
        return hook

    handles = [sub.register_forward_hook(record(name)) for name, sub in module.named_modules() if name]
    try:
        model_output = _run(module, example)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, model_output


@contextmanager
def _exposed(module: nn.Module, target_name: Optional[str]) -> Iterator[None]:
    """Make module return (logits, target activation) while exporting; only logits when target_name is None."""
    captured: dict[str, torch.Tensor] = {}

    def keep(submodule, inputs, output):
        captured["activation"] = output
        # The rest of the model gets a copy: an in-place op after the target (ReLU(inplace=True),
        # `out += identity`) would otherwise change the exposed tensor. The exporter drops the copy.
        return output.clone()

    def expose(root, inputs, output):
        scores = _logits(output)
        return scores if target_name is None else (scores, captured["activation"])

    if isinstance(module, torch.jit.ScriptModule):
        yield
        return
    handles = [module.register_forward_hook(expose)]
    if target_name is not None:
        handles.append(module.get_submodule(target_name).register_forward_hook(keep))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        captured.clear()


def trace_to_onnx(module: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str],
                  dynamic_batch: bool, opset: Optional[int], hint: str = "") -> onnx.ModelProto:
    """Export with the TorchScript exporter through a temporary file (large models get external data)."""
    dynamic_axes = {name: {0: "batch"} for name in [input_name, *output_names]} if dynamic_batch else None
    with tempfile.TemporaryDirectory(prefix="onnx-gradcam-export-") as folder:
        file = os.path.join(folder, "model.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings and the TorchScript exporter's deprecation notice
            try:
                torch.onnx.export(module, (example,), file, dynamo=False, input_names=[input_name],
                                  output_names=output_names, dynamic_axes=dynamic_axes, opset_version=opset,
                                  do_constant_folding=True)
            except Exception as error:
                raise ExportError(f"torch.onnx.export failed: {type(error).__name__}: {first_line(error)}"
                                  + (f". {hint}" if hint else "")) from error
        return onnx.load(file)
