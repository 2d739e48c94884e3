"""Framework model -> ONNX with the Grad-CAM target exposed, then augmented (export/ -> graph/).

`export_torch` (PyTorch) and `export_keras` (Keras 3 on the torch backend) are imported lazily,
so `import onnx_gradcam` never pulls in torch or keras. The helpers below are shared by both
exporters: they only touch ONNX protos and plain Python values.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import onnx

from ..errors import ExportError, TargetNotFoundError

__all__ = ["export_torch", "export_keras", "list_torch_targets", "list_keras_targets", "LayerOutput"]

# Where each lazily imported name lives.
_LAZY = {"export_torch": "torch", "list_torch_targets": "torch",
         "export_keras": "keras", "list_keras_targets": "keras"}
EXPORT_METADATA_KEY = "gradcam_export"
EXPORTER_METADATA_KEY = "gradcam_exporter"  # which torch.onnx exporter made the graph
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*m")  # the dynamo exporter colours its messages


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class LayerOutput:
    """A module (PyTorch) or layer (Keras) and the shape of its output (its last call when called twice)."""

    name: str
    type: str
    shape: tuple  # () when the output is not a single tensor; None for an unknown dimension
    layout: str = "NCHW"  # how a 4-D output is laid out: "NCHW" or "NHWC"
    calls: int = 1

    @property
    def spatial_size(self) -> tuple:
        """(H, W) of a 4-D output."""
        return (self.shape[1], self.shape[2]) if self.layout == "NHWC" else (self.shape[2], self.shape[3])

    @property
    def spatial(self) -> bool:
        """True for a 4-D output with more than one spatial position (a usable Grad-CAM target)."""
        if len(self.shape) != 4:
            return False
        height, width = self.spatial_size
        return height is None or width is None or height * width > 1

    def __str__(self) -> str:
        layout = self.layout if len(self.shape) == 4 else ""
        return f"{self.name:<40} {self.type:<24} {format_shape(self.shape)} {layout}".rstrip()


def suggestion(outputs: Sequence[LayerOutput], name: str) -> str:
    """'choose an earlier ... such as X. ' naming the last spatial output before name, or ''."""
    names = [info.name for info in outputs]
    earlier = outputs[:names.index(name)] if name in names else outputs
    spatial = [info.name for info in earlier if info.spatial]
    return f"choose an earlier one such as {spatial[-1]!r}. " if spatial else ""


def listing(outputs: Sequence[LayerOutput], limit: int = 15) -> str:
    """Indented lines naming the 4-D outputs (the last `limit` of them)."""
    shown = [info for info in outputs if len(info.shape) == 4]
    if not shown:
        return "  (none)"
    more = f"  ... and {len(shown) - limit} earlier\n" if len(shown) > limit else ""
    return more + "\n".join(f"  {info}" for info in shown[-limit:])


def check_target_output(info: LayerOutput, kind: str, outputs: Sequence[LayerOutput]) -> None:
    """Raise TargetNotFoundError unless info is a 4-D output with spatial extent, or a token tensor [N, T, C]."""
    where = f"{kind.capitalize()}s with a 4-D output:\n{listing(outputs)}"
    if info.shape == ():
        raise TargetNotFoundError(f"{kind} {info.name!r} returns no single tensor; pick a {kind} that returns "
                                  f"the activation tensor. {where}")
    if len(info.shape) == 3 and isinstance(info.shape[1], int) and info.shape[1] > 1:
        return  # tokens [N, T, C]: augment places them on the patch grid, or says why it cannot
    if len(info.shape) != 4:
        raise TargetNotFoundError(
            f"{kind} {info.name!r} outputs {format_shape(info.shape)} ({len(info.shape)}-D): Grad-CAM needs a "
            f"4-D activation from before the spatial collapse (global pooling / flatten); "
            f"{suggestion(outputs, info.name)}{where}")
    if not info.spatial:
        raise TargetNotFoundError(
            f"{kind} {info.name!r} outputs {format_shape(info.shape)}: a single spatial position, so it comes "
            "after the spatial collapse (or the input is too small) and its heatmap would be uniform; "
            f"{suggestion(outputs, info.name)}{where}")


def close_names(name: str, names: Sequence[str], count: int = 5) -> list[str]:
    """Up to count names from names that look like name (for 'did you mean' hints)."""
    return difflib.get_close_matches(name, list(names), n=count, cutoff=0.5)


def first_line(error: BaseException, limit: int = 400) -> str:
    """The first line of an exception message, cut to limit characters (exporters dump whole graphs)."""
    lines = _TERMINAL_CODES.sub("", str(error)).strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[:limit] + "..."


def format_shape(shape: Sequence) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def preprocess_spec(preprocess: Any, size: tuple[int, int], channels: int, layout: str) -> Optional[dict]:
    """The preprocess dict to record, with size, layout and gray channel order filled in from the model.

    preprocess: None, a dict (keys of onnx_gradcam.preprocess.Preprocess) or an object with to_dict().
    The layout always follows the exported model, which alone decides it.
    """
    if preprocess is None:
        return None
    if not isinstance(preprocess, dict) and not hasattr(preprocess, "to_dict"):
        raise ExportError(f"preprocess must be a dict or a Preprocess, got {type(preprocess).__name__}")
    spec = dict(preprocess.to_dict() if hasattr(preprocess, "to_dict") else preprocess)
    if spec.get("size") is None:
        spec["size"] = [int(size[0]), int(size[1])]
    elif [int(s) for s in spec["size"]] != [int(size[0]), int(size[1])]:
        raise ExportError(f"preprocess size {list(spec['size'])} differs from the exported input size "
                          f"{list(size)} (H, W); export with an example input of the size images are resized to")
    spec["layout"] = layout
    order = spec.get("channel_order")
    if channels == 1:
        spec["channel_order"] = "GRAY"
    elif order == "GRAY":
        raise ExportError(f"preprocess channel_order 'GRAY' gives 1 channel but the model takes {channels}")
    elif order is None:
        spec["channel_order"] = "RGB"
    return spec


def finish(model: onnx.ModelProto, extra_output: Optional[str], export_info: dict, exporter: str,
           path: Optional[str]) -> onnx.ModelProto:
    """Drop the helper output that exposed the target, record how and by which exporter the model was
    exported, save it."""
    from ..graph.io import save_model

    if extra_output is not None:
        outputs = [o for o in model.graph.output if o.name != extra_output]
        del model.graph.output[:]
        model.graph.output.extend(outputs)
    _set_metadata(model, EXPORT_METADATA_KEY, json.dumps(export_info))
    _set_metadata(model, EXPORTER_METADATA_KEY, exporter)
    if path is not None:
        save_model(model, path)
    return model


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    prop = next((p for p in model.metadata_props if p.key == key), None) or model.metadata_props.add()
    prop.key, prop.value = key, value
