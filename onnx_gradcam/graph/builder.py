"""A small helper that emits ONNX nodes so rules read like the math they build."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import OpsetTooLowError

Dim = Optional[object]  # int, a symbolic name (str), or None when unknown


class GraphBuilder:
    """Collects new nodes and constants for a model, with opset-aware helpers."""

    def __init__(self, model: onnx.ModelProto, prefix: str = "gradcam/") -> None:
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.prefix = prefix
        self.memo: dict[str, str] = {}  # forward values a rule derived once, for later passes
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.shapes: dict[str, list[Dim]] = {}
        self.dtypes: dict[str, int] = {}
        self.value_info: dict[str, onnx.ValueInfoProto] = {}  # shapes declared for new tensors
        self._count = 0
        self._constants: dict[tuple, str] = {}
        self._shape_of: dict[str, str] = {}
        self._values: dict[str, onnx.TensorProto] = {}
        graph = model.graph
        for info in list(graph.input) + list(graph.value_info) + list(graph.output):
            self._record(info)
        for tensor in graph.initializer:
            self.shapes[tensor.name] = list(tensor.dims)
            self.dtypes[tensor.name] = tensor.data_type
            self._values[tensor.name] = tensor
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute:
                attribute = node.attribute[0]
                value = helper.get_attribute_value(attribute)
                if attribute.name in ("value_int", "value_ints"):
                    value = numpy_helper.from_array(np.array(value, np.int64))
                elif attribute.name in ("value_float", "value_floats"):
                    value = numpy_helper.from_array(np.array(value, np.float32))
                if isinstance(value, onnx.TensorProto):
                    self.shapes[node.output[0]] = list(value.dims)
                    self.dtypes[node.output[0]] = value.data_type
                    self._values[node.output[0]] = value

    def _record(self, info: onnx.ValueInfoProto) -> None:
        tensor_type = info.type.tensor_type
        if tensor_type.elem_type:
            self.dtypes[info.name] = tensor_type.elem_type
        if tensor_type.HasField("shape"):
            self.shapes[info.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tensor_type.shape.dim]

    def note_shape(self, tensor: str, shape: Sequence[Dim], dtype: int | None = None) -> None:
        """Remember the shape (and type) a rule knows for a tensor it built, for later helpers to read.

        Unlike declare_like, nothing is written into the model: the shape may hold unknown dims.
        """
        self.shapes[tensor] = list(shape)
        if dtype is not None:
            self.dtypes[tensor] = dtype

    def declare_like(self, tensor: str, like: str) -> None:
        """Declare that new tensor has the shape and type of like (a gradient has its tensor's shape).

        ONNX shape inference cannot follow a reverse pass (its seed is built with Range), and ONNX
        Runtime keeps tensors in its blocked CPU layout only between nodes of proven equal shapes.
        """
        shape = self.shapes.get(like)
        if shape is None or tensor in self.shapes or tensor == like:
            return
        self.shapes[tensor] = list(shape)
        self.dtypes[tensor] = self.dtype(like)
        self.value_info[tensor] = helper.make_tensor_value_info(tensor, self.dtype(like), shape)

    def name(self, hint: str) -> str:
        """Return a fresh tensor name."""
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, outputs: int = 1, hint: str = "", **attrs) -> str | list[str]:
        """Emit one node and return its output name (or names when outputs > 1)."""
        names = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        attrs = {key: value for key, value in attrs.items() if value is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), names,
                                           name=self.name(op_type), **attrs))
        return names[0] if outputs == 1 else names

    def const(self, value, dtype: int | np.dtype | None = None) -> str:
        """Return an initializer holding value (cached for small constants)."""
        np_dtype = helper.tensor_dtype_to_np_dtype(dtype) if isinstance(dtype, int) else dtype
        array = np.asarray(value, dtype=np_dtype)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 16 else None
        if key is not None and key in self._constants:
            return self._constants[key]
        name = self.name("const")
        self.initializers.append(numpy_helper.from_array(array, name))
        self.shapes[name] = list(array.shape)
        self.dtypes[name] = helper.np_dtype_to_tensor_dtype(array.dtype)
        if key is not None:
            self._constants[key] = name
        return name

    def constant_value(self, tensor: str) -> np.ndarray | None:
        """Value of an initializer or Constant output, None for computed tensors."""
        proto = self._values.get(tensor)
        return None if proto is None else numpy_helper.to_array(proto)

    def scalar_like(self, value: float, tensor: str) -> str:
        """Return a scalar constant with the element type of tensor."""
        return self.const(value, self.dtype(tensor))

    def dtype(self, tensor: str) -> int:
        """Element type of tensor (float32 when unknown)."""
        return self.dtypes.get(tensor, TensorProto.FLOAT)

    def rank(self, tensor: str) -> int | None:
        shape = self.shapes.get(tensor)
        return None if shape is None else len(shape)

    def shape(self, tensor: str) -> str:
        """Return a Shape node of tensor, one per tensor."""
        if tensor not in self._shape_of:
            self._shape_of[tensor] = self.op("Shape", tensor, hint="shape")
        return self._shape_of[tensor]

    def static_dims(self, tensor: str, axes: Optional[Sequence[int]] = None) -> Optional[list[int]]:
        """The dims of tensor (on axes, when given) if all are known and non-negative, else None."""
        shape = self.shapes.get(tensor)
        if shape is None:
            return None
        try:
            dims = list(shape) if axes is None else [shape[axis] for axis in axes]
        except IndexError:
            return None
        return dims if all(isinstance(d, int) and d >= 0 for d in dims) else None

    def dims(self, tensor: str, axes: Sequence[int]) -> str:
        """1-D int64 tensor of tensor's dims on axes: a constant when they are known, else read from its Shape."""
        known = self.static_dims(tensor, axes)
        if known is not None:
            return self.const(known, np.int64)
        return self.op("Gather", self.shape(tensor), self.const(list(axes), np.int64), axis=0)

    def per_image_dims(self, tensor: str) -> Optional[list[int]]:
        """The dims after the batch axis when all are known and positive, else None."""
        dims = self.shapes.get(tensor)
        if not dims or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
            return None
        return list(dims[1:])

    def reshape_like(self, value: str, like: str) -> str:
        """value reshaped to the shape of like: a constant shape when like's is static but for the batch.

        A Shape node would make the runtime keep like (often a forward activation) until it runs.
        """
        rest = self.per_image_dims(like)
        if rest is not None:
            first = self.shapes[like][0]
            first = first if isinstance(first, int) and first > 0 else -1
            return self.op("Reshape", value, self.const([first] + rest, np.int64))
        return self.op("Reshape", value, self.shape(like))

    def unsqueeze(self, tensor: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", tensor, self.const(list(axes), np.int64))
        return self.op("Unsqueeze", tensor, axes=list(axes))

    def squeeze(self, tensor: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Squeeze", tensor, self.const(list(axes), np.int64))
        return self.op("Squeeze", tensor, axes=list(axes))

    def reduce(self, op_type: str, tensor: str, axes: Sequence[int], keepdims: int = 1) -> str:
        """Emit a Reduce* node; axes moved from attribute to input at opset 13 (ReduceSum) or 18."""
        axes_as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if axes_as_input:
            return self.op(op_type, tensor, self.const(list(axes), np.int64), keepdims=keepdims)
        return self.op(op_type, tensor, axes=list(axes), keepdims=keepdims)

    def slice(self, tensor: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int]) -> str:
        return self.op("Slice", tensor, self.const(list(starts), np.int64),
                       self.const(list(ends), np.int64), self.const(list(axes), np.int64))

    def slice_reversed(self, tensor: str, axes: Sequence[int]) -> str:
        """tensor with the order of its elements reversed along axes."""
        low = np.iinfo(np.int64).min
        return self.op("Slice", tensor, self.const([-1] * len(axes), np.int64), self.const([low] * len(axes), np.int64),
                       self.const(list(axes), np.int64), self.const([-1] * len(axes), np.int64))

    def pad(self, tensor: str, pads: str | Sequence[int], axes: str = "") -> str:
        """Constant zero padding by pads ([begins..., ends...], a tensor or ints); negative pads crop.

        Pads given as a tensor (computed at run time) need opset >= 11, as do negative pads.
        """
        if self.opset < 11:
            if isinstance(pads, str):
                raise OpsetTooLowError("padding by amounts computed at run time needs opset >= 11", needed=11)
            return self.op("Pad", tensor, pads=[int(p) for p in pads])
        if not isinstance(pads, str):
            pads = self.const([int(p) for p in pads], np.int64)
        return self.op("Pad", tensor, pads, *(["", axes] if axes else []))

    def at_least(self, tensor: str, low: int) -> str:
        """Elementwise max(tensor, low) of an int64 tensor (integer Max needs opset 12)."""
        bound = self.const(low, np.int64)
        return self.op("Where", self.op("Less", tensor, bound), bound, tensor)

    def at_most(self, tensor: str, high: str | int) -> str:
        """Elementwise min(tensor, high) of int64 tensors (high broadcasts)."""
        bound = high if isinstance(high, str) else self.const(high, np.int64)
        return self.op("Where", self.op("Greater", tensor, bound), bound, tensor)

    def cast(self, tensor: str, to: int) -> str:
        return self.op("Cast", tensor, to=to)

    def zeros_like(self, tensor: str) -> str:
        value = numpy_helper.from_array(np.zeros(1, helper.tensor_dtype_to_np_dtype(self.dtype(tensor))))
        return self.op("ConstantOfShape", self.shape(tensor), value=value)

    def element_count_ratio(self, numerator: str, denominator: str, dtype: int) -> str:
        """Size(numerator) / Size(denominator) as a scalar of dtype (elements folded per output)."""
        top, bottom = self.per_image_dims(numerator), self.per_image_dims(denominator)
        if top is not None and bottom is not None and self.shapes[numerator][0] == self.shapes[denominator][0]:
            ratio = np.prod(top, dtype=np.int64) // np.prod(bottom, dtype=np.int64)  # a constant: no tensor kept
            return self.const(np.asarray(ratio, helper.tensor_dtype_to_np_dtype(dtype)))
        ratio = self.op("Div", self.op("Size", numerator), self.op("Size", denominator))
        return self.cast(ratio, dtype)
