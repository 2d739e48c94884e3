"""Loading ONNX models from paths, bytes or protos, with errors a user can act on."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import onnx
from onnx import helper
from google.protobuf.message import DecodeError

from ..errors import ModelLoadError

ModelLike = Union[str, os.PathLike, bytes, onnx.ModelProto]
PROTOBUF_LIMIT = 2**31 - 1


def save_model(model: onnx.ModelProto, path: Union[str, os.PathLike]) -> None:
    """Write model to path atomically (weights in an external file beside it when over 2 GB)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    large = model.ByteSize() >= PROTOBUF_LIMIT
    if large:  # onnx.save moves the weights out of the proto it writes: keep the caller's intact
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    onnx.save(model, temporary, save_as_external_data=large,
              location=os.path.basename(path) + ".data" if large else None)
    os.replace(temporary, path)


def load_model(model: ModelLike) -> onnx.ModelProto:
    """Return the ModelProto for a path, serialized bytes or an existing proto."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return _parse(bytes(model), "<bytes>")
    path = Path(model)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file is empty (0 bytes): {path}")
    try:
        proto = onnx.load(str(path))
    except (DecodeError, RuntimeError, ValueError, OSError) as error:
        raise ModelLoadError(f"{path} is not a readable ONNX model ({error}); "
                             "expected a file written by onnx.save or an exporter") from error
    _check_graph(proto, str(path))
    return proto


def _parse(data: bytes, origin: str) -> onnx.ModelProto:
    try:
        proto = onnx.load_from_string(data)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise ModelLoadError(f"{origin} is not an ONNX model ({error})") from error
    _check_graph(proto, origin)
    return proto


def _check_graph(proto: onnx.ModelProto, origin: str) -> None:
    if not proto.graph.node or not proto.graph.output:
        raise ModelLoadError(f"{origin} holds no ONNX graph (no nodes or no outputs); "
                             "is it really an .onnx model?")


def without_weights(model: onnx.ModelProto, threshold: int = 1024) -> onnx.ModelProto:
    """A copy of model whose large initializers become typed graph inputs (same name, type, dims).

    Shape inference and the checker serialize the whole model; on a 500 MB network that costs
    tens of seconds, for tensors whose values neither of them reads.
    """
    skeleton = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(skeleton, field, getattr(model, field))
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph, source = skeleton.graph, model.graph
    graph.name = source.name or "graph"
    for field in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(graph, field).extend(getattr(source, field))
    declared = {value.name for value in source.input}
    for tensor in source.initializer:
        if int(np.prod(tensor.dims)) <= threshold:
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return skeleton
