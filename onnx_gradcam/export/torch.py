"""PyTorch nn.Module -> ONNX with the target module's output exposed -> augmented model.

The target module's output is returned as an extra model output (forward hooks) so the
exporter gives it a known name; `augment` differentiates the graph back to that tensor;
the extra output is dropped again. The TorchScript exporter (`dynamo=False`) is tried first:
it is fast and gives plain Conv/Gemm/Flatten graphs with a dynamic batch axis. A model it
cannot export (traced shapes where it needs constants, ops it has no symbolic for) goes
through the dynamo exporter instead; the model's `gradcam_exporter` metadata says which one
made it.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import os
import sys
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
# The exporters, as recorded in the augmented model's gradcam_exporter metadata.
TORCHSCRIPT = "torch.onnx.export(dynamo=False)"
DYNAMO = "torch.onnx.export(dynamo=True)"
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

    The TorchScript exporter is tried first, the dynamo exporter where it fails; the model's
    `gradcam_exporter` metadata names the one used.
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
            exported, exporter = export_onnx(module, example, INPUT_NAME, output_names, dynamic_batch, opset, hint=(
                f"Check that the model runs at input size {format_shape(example.shape)} (e.g. AdaptiveAvgPool2d "
                "exports only when its output size divides its input size, so torchvision VGG needs 224x224)"))
    layout, channels, size = _image_geometry(example)
    augmented = augment(exported, target=target_tensor or "auto", heatmap=heatmap,
                        preprocess=preprocess_spec(preprocess, size, channels, layout))
    info = {"framework": "torch", "torch": torch.__version__, "model": type(module).__qualname__,
            "target_module": target_name or "auto", "input_shape": list(example.shape)}
    return finish(augmented, target_tensor, info, exporter, None if path is None else os.fspath(path))


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


def export_onnx(module: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str],
                dynamic_batch: bool, opset: Optional[int], hint: str = "") -> tuple[onnx.ModelProto, str]:
    """Return (ONNX model, the exporter that made it): TorchScript first, the dynamo exporter where it fails.

    TorchScript comes first: it takes a fraction of a second where dynamo takes seconds, and its graphs
    are the ones the differentiation rules were built on. Models fail one exporter or the other for
    their own reasons (TorchScript: rms_norm, antialiased resizing, Keras' LayerNormalization, whose
    traced shape it needs as a constant; dynamo: branches on tensor values), so the other one is
    tried. A graph that lost a named output (the exposed target) counts as a failure. Raise
    ExportError naming both failures when neither works.
    """
    failures: list[tuple[str, BaseException]] = []
    for exporter, export in ((TORCHSCRIPT, _torchscript_export), (DYNAMO, _dynamo_export)):
        try:
            with _quiet():
                model = export(module, example, input_name, output_names, dynamic_batch, opset)
        except Exception as error:
            failures.append((exporter, error))
            continue
        kept = {output.name for output in model.graph.output}
        missing = [name for name in output_names if name not in kept]
        if not missing:
            return model, exporter
        failures.append((exporter, ExportError(
            f"the graph has no output {missing[0]!r} of its own (is it an identity of another tensor? pick a "
            "module or layer that computes something)")))
    reasons = "; ".join(f"{exporter} raised {describe_failure(error)}" for exporter, error in failures)
    raise ExportError(f"neither torch ONNX exporter could export the model: {reasons}. "
                      + (f"{hint}. " if hint else "")
                      + "Replace the op named in the messages, or export the model to ONNX yourself and pass "
                        "the file and the target tensor name to onnx_gradcam.augment") from failures[0][1]


def describe_failure(error: BaseException) -> str:
    """'Type: first line' of an exporter's exception, through the wrappers to the cause that says why.

    The dynamo exporter wraps the real error in a 'step 1/3 failed' banner (TorchExportError,
    ConversionError) whose own first line names no op and no layer.
    """
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    via = f"{type(error).__name__} from " if cause is not error else ""
    return f"{via}{type(cause).__name__}: {first_line(cause)}"


def _torchscript_export(module: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str],
                        dynamic_batch: bool, opset: Optional[int]) -> onnx.ModelProto:
    """The TorchScript exporter, through a temporary file (large models get external data)."""
    dynamic_axes = {name: {0: "batch"} for name in [input_name, *output_names]} if dynamic_batch else None
    with tempfile.TemporaryDirectory(prefix="onnx-gradcam-export-") as folder:
        file = os.path.join(folder, "model.onnx")
        with _stdout_descriptor_silenced():
            torch.onnx.export(module, (example,), file, dynamo=False, input_names=[input_name],
                              output_names=output_names, dynamic_axes=dynamic_axes, opset_version=opset,
                              do_constant_folding=True)
        return onnx.load(file)


def _dynamo_export(module: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str],
                   dynamic_batch: bool, opset: Optional[int]) -> onnx.ModelProto:
    """The torch.export-based exporter, on a one-input wrapper so the batch axis can be declared dynamic."""
    wrapper = _ImageInput(module).eval()
    dynamic_shapes = None
    if dynamic_batch:
        # torch.export specializes a dimension of size 1 to a constant, so the example gets two images.
        example = torch.cat([example, example]) if example.shape[0] == 1 else example
        dynamic_shapes = ({0: torch.export.Dim("batch")},)
    program = torch.onnx.export(wrapper, (example,), dynamo=True, dynamic_shapes=dynamic_shapes,
                                opset_version=opset, verbose=False)
    model = program.model_proto
    graph = model.graph
    if len(graph.output) != len(output_names):
        raise ExportError(f"the exported graph has {len(graph.output)} outputs, {len(output_names)} were expected "
                          f"({', '.join(output_names)})")
    _name_values(graph, input_name, output_names)
    return model


def _name_values(graph: onnx.GraphProto, input_name: str, output_names: list[str]) -> None:
    """Name the graph's input and outputs, moving aside inner values that already have those names.

    The dynamo exporter names values after the ops that make them (conv2d_1, relu), which are Keras'
    default layer names too, and its own output_names renaming leaves two values with one name. An
    output that is the same value as an earlier one gets an Identity copy.
    """
    wanted = {input_name, *output_names}
    taken = {value.name for value in [*graph.input, *graph.initializer]}
    taken |= {name for node in graph.node for name in node.output}
    for name in sorted(taken & wanted):
        fresh = _fresh(name, taken | wanted)
        _rename_value(graph, name, fresh)
        taken.add(fresh)
    _rename_value(graph, graph.input[0].name, input_name)
    named: set[str] = set()
    for output, name in zip(graph.output, output_names):
        if output.name in named:  # renamed already, as an earlier output
            graph.node.append(onnx.helper.make_node("Identity", [output.name], [name], name=f"{name}/copy"))
            output.name = name
        else:
            _rename_value(graph, output.name, name)
        named.add(name)


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        if value.name == old:
            value.name = new


def _fresh(name: str, taken: set[str]) -> str:
    number = 1
    while f"{name}__{number}" in taken:
        number += 1
    return f"{name}__{number}"


class _ImageInput(nn.Module):
    """module behind forward(image): Keras models take *args, which dynamic_shapes cannot describe."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, image: torch.Tensor) -> Any:
        return self.module(image)


@contextmanager
def _quiet() -> Iterator[None]:
    """Keep an export off the console: the TorchScript exporter's deprecation notices and tracer
    warnings, and what the exporters print or log when they fail (whole graphs, tens of lines)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        # Raised inside torch.onnx: its deprecations, "Constant folding ... not applied" notices.
        warnings.filterwarnings("ignore", module=r"torch\.onnx\.")
        # torch's log handlers write to the current sys.stderr, so the redirect silences them too.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield


@contextmanager
def _stdout_descriptor_silenced() -> Iterator[None]:
    """Point file descriptor 1 at os.devnull for the duration.

    torch.onnx's TorchScript exporter switches its C++ ONNX log on (setup_onnx_logging tests the
    function `_jit_is_onnx_log_enabled`, always true, instead of calling it), and that log prints the
    whole TorchScript graph to the process's stdout, past sys.stdout, when an export fails.
    """
    try:
        saved: Optional[int] = os.dup(1)
    except OSError:  # no stdout descriptor at all: nothing to protect
        saved = None
    if saved is None:
        yield
        return
    if sys.__stdout__ is not None:
        sys.__stdout__.flush()  # what Python wrote before still reaches the console
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
