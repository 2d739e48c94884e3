"""ONNX Runtime sessions: providers, IO binding on CUDA, and runs that return named outputs."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import onnx
import onnxruntime as ort

from .errors import GradCamError, InputError
from .graph.io import save_model

DEVICES = ("cpu", "cuda")


def parse_device(device: str) -> tuple[str, int]:
    """Split 'cuda:1' into ('cuda', 1); 'cpu' into ('cpu', 0)."""
    kind, _, index = str(device).lower().partition(":")
    if kind not in DEVICES or (index and not index.isdigit()):
        raise InputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return kind, int(index or 0)


def providers_for(device: str) -> list:
    """The ONNX Runtime providers for a device, with a clear error when CUDA is not available."""
    kind, index = parse_device(device)
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise GradCamError(
            f"device={device!r} needs ONNX Runtime's CUDAExecutionProvider, but this onnxruntime "
            f"offers only {available}. Install the GPU build: pip install 'onnx-gradcam[gpu]' "
            "(and uninstall the CPU-only 'onnxruntime' package first), or use device='cpu'.")
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


class Session:
    """One InferenceSession, created once and reused; outputs on the host (CPU) or the GPU (CUDA)."""

    def __init__(self, model: Union[onnx.ModelProto, str, os.PathLike], device: str = "cpu",
                 providers: Optional[Sequence[Any]] = None,
                 options: Optional[ort.SessionOptions] = None) -> None:
        self.device, self.device_id = parse_device(device)
        if self.device == "cuda" and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        with tempfile.TemporaryDirectory(prefix="onnx-gradcam-", ignore_cleanup_errors=True) as folder:
            if isinstance(model, onnx.ModelProto):
                # From a file rather than serialized bytes: no second in-memory copy of the weights
                # while the session loads, and models over protobuf's 2 GB limit load too.
                path = os.path.join(folder, "model.onnx")
                save_model(model, path)
            else:
                path = os.fspath(model)
            self.session = ort.InferenceSession(path, sess_options=options,
                                                providers=list(providers or providers_for(device)))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        """Run once; NumPy results on CPU, CuPy arrays that stay on the GPU on CUDA."""
        if self.device == "cpu":
            host_feeds = {name: _to_host(value) for name, value in feeds.items()}
            return dict(zip(outputs, self.session.run(list(outputs), host_feeds)))
        return self._run_bound(feeds, outputs)

    def _run_bound(self, feeds: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        import cupy

        binding = self.session.io_binding()
        kept = []  # device inputs must outlive the run
        with cupy.cuda.Device(self.device_id):
            for name, value in feeds.items():
                array = _to_device(value)
                kept.append(array)
                binding.bind_input(name, "cuda", self.device_id, array.dtype, list(array.shape), array.data.ptr)
            for name in outputs:
                binding.bind_output(name, "cuda", self.device_id)
            self.session.run_with_iobinding(binding)
            # DLPack hands the OrtValue's memory to CuPy, which keeps it alive as long as the array.
            return {name: cupy.from_dlpack(value) for name, value in zip(outputs, binding.get_outputs())}


def _to_host(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "get") and type(value).__module__.startswith("cupy"):
        return value.get()
    if type(value).__module__.startswith("torch"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _to_device(value: Any):
    import cupy

    if type(value).__module__.startswith("torch"):
        value = value.detach()
        value = cupy.from_dlpack(value) if value.is_cuda else cupy.asarray(value.numpy())
    return cupy.ascontiguousarray(cupy.asarray(value))
