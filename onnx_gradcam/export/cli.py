"""`onnx-gradcam export torch|keras ...`: a framework model -> an augmented ONNX file.

The main command line (onnx_gradcam/cli.py) calls `add_export_parser`; each handler returns an
exit code and raises GradCamError subclasses for the main CLI to print.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Optional

from ..errors import ExportError
from ..preprocess import parse_preprocess


def add_export_parser(subparsers) -> None:
    """Add `export torch` and `export keras` to the main CLI's subparsers."""
    export = subparsers.add_parser(
        "export", help="export a PyTorch or Keras classifier to ONNX with the Grad-CAM outputs",
        description="Export a framework model to ONNX with the target layer exposed, and augment it.")
    frameworks = export.add_subparsers(dest="framework", required=True, metavar="{torch,keras}")

    torch_parser = frameworks.add_parser(
        "torch", help="export a PyTorch nn.Module",
        description="MODULE_SPEC is package.module:factory (e.g. torchvision.models:resnet50, called with "
                    "--arg KEY=VALUE), path/to/file.py:ClassOrFactory, or a TorchScript / pickled module file.")
    torch_parser.add_argument("module", metavar="MODULE_SPEC")
    torch_parser.add_argument("--target", default="auto",
                              help="module name as in named_modules() (e.g. layer4, features.33) or 'auto' (default)")
    torch_parser.add_argument("--weights", help="state_dict file (.pt/.pth) to load into the module")
    torch_parser.add_argument("--input-shape", type=_shape, default=(1, 3, 224, 224),
                              help="example input N,C,H,W (default 1,3,224,224); H and W are fixed in the export")
    torch_parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                              help="keyword argument for the factory, value as JSON (e.g. num_classes=10)")
    _add_common(torch_parser)
    torch_parser.set_defaults(func=_export_torch)

    keras_parser = frameworks.add_parser("keras", help="export a Keras 3 model (.keras / .h5), torch backend")
    keras_parser.add_argument("model", metavar="MODEL", help="a .keras or .h5 file")
    keras_parser.add_argument("--target", default="auto",
                              help="layer name (e.g. conv5_block3_out, max_pooling2d_1) or 'auto' (default)")
    keras_parser.add_argument("--input-shape", type=_shape, default=None,
                              help="H,W,C or N,H,W,C, for models whose input size is not fixed")
    _add_common(keras_parser)
    keras_parser.set_defaults(func=_export_keras)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", help="the augmented .onnx file to write")
    parser.add_argument("--list-targets", action="store_true", help="list layers with a 4-D output and exit")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--static-batch", action="store_true", help="fix the batch size instead of keeping it dynamic")
    parser.add_argument("--heatmap", action="store_true", help="also compute gradcam_heatmap in the graph")
    parser.add_argument("--preprocess", help="'imagenet', 'none', or a JSON spec/file to record in the model")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,3,224,224, got {text!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"dimensions must be positive integers, got {text!r}")
    return shape


def _export_torch(args: argparse.Namespace) -> int:
    import torch

    from .torch import export_torch, list_torch_targets

    module = load_torch_module(args.module, _factory_kwargs(args.arg))
    if args.weights:
        load_weights(module, args.weights)
    example = torch.zeros(args.input_shape)
    if args.list_targets:
        _print_targets(list_torch_targets(module, example))
        return 0
    model = export_torch(module, example, target=args.target, path=_required_output(args), opset=args.opset,
                         dynamic_batch=not args.static_batch, preprocess=parse_preprocess(args.preprocess),
                         heatmap=args.heatmap)
    _report(args.module, args.output, model)
    return 0


def _export_keras(args: argparse.Namespace) -> int:
    from .keras import export_keras, list_keras_targets

    if args.list_targets:
        _print_targets(list_keras_targets(args.model))
        return 0
    model = export_keras(args.model, target=args.target, path=_required_output(args),
                         preprocess=parse_preprocess(args.preprocess), input_shape=args.input_shape, opset=args.opset,
                         dynamic_batch=not args.static_batch, heatmap=args.heatmap)
    _report(args.model, args.output, model)
    return 0


def _required_output(args: argparse.Namespace) -> str:
    if not args.output:
        raise ExportError(f"export {args.framework} needs -o OUT.onnx (or --list-targets)")
    return args.output


def _print_targets(targets) -> None:
    print(f"{'name':<40} {'type':<24} output shape")
    for info in targets:
        print(info)


def _report(source: str, output: str, model) -> None:
    meta = {p.key: p.value for p in model.metadata_props}
    print(f"exported {source} -> {output}: target {meta.get('gradcam_target')} "
          f"{meta.get('gradcam_target_shape')}, score {meta.get('gradcam_score')}, "
          f"by {meta.get('gradcam_exporter')}")


def _factory_kwargs(pairs: list[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        if not separator or not key.isidentifier():
            raise ExportError(f"--arg expects KEY=VALUE, got {pair!r}")
        try:
            kwargs[key] = json.loads(text)
        except json.JSONDecodeError:
            kwargs[key] = text  # a bare word is a string
    return kwargs


def load_torch_module(spec: str, kwargs: Optional[dict] = None):
    """Return the nn.Module named by spec: 'package.module:attr', 'file.py:attr', or a module file."""
    from torch import nn

    kwargs = kwargs or {}
    if Path(spec).is_file() and not spec.endswith(".py"):
        if kwargs:
            raise ExportError(f"--arg is for factories; {spec} is a saved module")
        return _load_module_file(Path(spec))
    source, separator, attribute = spec.rpartition(":")
    if not separator or not source or not attribute:
        raise ExportError(f"MODULE_SPEC {spec!r} is neither a file nor package.module:name (e.g. "
                          "torchvision.models:resnet50) nor path/to/file.py:name")
    namespace = _import_source(source)
    obj: Any = namespace
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ExportError(f"{source} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        if kwargs:
            raise ExportError(f"{spec} is a module instance; --arg is only for factories and classes")
        return obj
    if not callable(obj):
        raise ExportError(f"{spec} is a {type(obj).__name__}, not an nn.Module, class or factory")
    try:
        module = obj(**kwargs)
    except Exception as error:
        raise ExportError(f"calling {spec}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: "
                          f"{type(error).__name__}: {error}") from error
    if not isinstance(module, nn.Module):
        raise ExportError(f"{spec}() returned {type(module).__name__}, not an nn.Module")
    return module


def _import_source(source: str):
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise ExportError(f"Python file not found: {path}")
        module_spec = importlib.util.spec_from_file_location(f"_onnx_gradcam_user_{path.stem}", path)
        namespace = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(namespace)
        except Exception as error:
            raise ExportError(f"running {path} failed: {type(error).__name__}: {error}") from error
        return namespace
    try:
        return importlib.import_module(source)
    except ImportError as error:
        raise ExportError(f"cannot import {source!r}: {error}") from error


def _load_module_file(path: Path):
    import torch
    from torch import nn

    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception:  # not TorchScript: try a pickled module next
        pass
    try:
        # A pickled nn.Module runs code from the file when loaded: only load files you trust.
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ExportError(f"{path} is neither a TorchScript nor a pickled torch module: "
                          f"{type(error).__name__}: {error}") from error
    if isinstance(obj, dict):
        raise ExportError(f"{path} holds a state_dict, not a module: pass the architecture as MODULE_SPEC "
                          f"(e.g. torchvision.models:resnet50) and this file as --weights")
    if not isinstance(obj, nn.Module):
        raise ExportError(f"{path} holds a {type(obj).__name__}, not an nn.Module")
    return obj


def load_weights(module, weights: str) -> None:
    """Load a state_dict file (optionally under 'state_dict' / 'model', with a DataParallel prefix)."""
    import torch

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ExportError(f"cannot read weights from {weights}: {type(error).__name__}: {error}") from error
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ExportError(f"{weights} holds a {type(state).__name__}, not a state_dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise ExportError(f"the weights in {weights} do not fit the module: {error}") from error
