"""Helpers for the audit tests: small digit PNGs, a folder of bad inputs, the audit command and its killing."""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

from onnx_gradcam.demo import load_digits

REPO = Path(__file__).resolve().parents[2]


def write_digits(folder: Path, count: int, start: int = 0, scale: int = 1) -> list[tuple[Path, int]]:
    """Write held-out digits start..start+count as PNGs under folder/<label>/; return (path, label) pairs."""
    images, labels = load_digits()
    written = []
    for index in range(start, start + count):
        image, label = images[index % len(images)], int(labels[index % len(labels)])
        if scale > 1:
            image = np.kron(image, np.ones((scale, scale), np.uint8))
        path = folder / str(label) / f"digit_{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), image)
        written.append((path, label))
    return written


def fake_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (its pixel data is a stub): enough for the size check."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    pixels = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def write_bad_inputs(folder: Path) -> dict[str, Path]:
    """One file per kind of bad (or unusual but valid) input; keys name the kind."""
    folder.mkdir(parents=True, exist_ok=True)
    images, _ = load_digits()
    images = images[::-1]  # the last digits, so no file here equals one write_digits makes
    digit = images[0]
    paths: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        paths[name] = folder / name
        paths[name].write_bytes(data)

    png = cv2.imencode(".png", digit)[1].tobytes()
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(digit, cv2.COLOR_GRAY2BGR))[1].tobytes()
    put("zero_byte.png", b"")
    put("corrupt.png", bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)))
    put("truncated.png", png[: len(png) // 2])
    put("truncated.jpg", jpeg[: len(jpeg) // 2])
    put("not_an_image.jpg", b"hello, I am a text file\n" * 10)
    put("huge.png", fake_png(20_000, 10_000))
    put("gray.png", png)
    put("rgba.png", cv2.imencode(".png", cv2.cvtColor(images[1], cv2.COLOR_GRAY2BGRA))[1].tobytes())
    put("sixteen_bit.png", cv2.imencode(".png", images[2].astype(np.uint16) * 257)[1].tobytes())
    put("color.jpg", jpeg)
    put("copy_of_gray.png", png)  # same bytes as gray.png: flagged as a duplicate
    paths["missing.png"] = folder / "missing.png"
    return paths


def audit_command() -> list[str]:
    """The `onnx-gradcam audit` command as a subprocess."""
    return [sys.executable, "-m", "onnx_gradcam.cli", "audit"]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def committed_parts(out: Path) -> list[Path]:
    """The parts an audit writing to out has committed so far, in order."""
    return sorted((out / "parts").glob("part-*.parquet"))


def run_and_kill(command: list[str], out: Path, parts_before: int, more_parts: int, timeout: float = 90) -> list[Path]:
    """Start the command, SIGKILL it once more_parts new parts are committed; return the parts committed."""
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while len(committed_parts(out)) < parts_before + more_parts:
            assert process.poll() is None, "the audit ended before it could be killed"
            assert time.monotonic() < deadline, "no parts were committed in time"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return committed_parts(out)


def tiny_plain_model(path: Path) -> Path:
    """A plain (not augmented) ONNX CNN for 1x28x28 inputs: Conv (8 channels, the fewest `target="auto"` takes),
    Relu, GlobalAveragePool, Flatten, Gemm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)
               for name, shape in [("conv_w", (8, 1, 3, 3)), ("conv_b", (8,)), ("fc_w", (10, 8)), ("fc_b", (10,))]]
    nodes = [helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           ["batch", 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


# ---------------------------------------------------------------- detect and segment audits

TASK_IMAGE_SIZE = (80, 96)  # (H, W) of write_task_images' PNGs; the task models take 64 x 64


def yolo_model(folder: Path) -> dict:
    """A plain YOLOv8-style ONNX detector (tests/test_tasks.py's YoloV8Like, 64 x 64, 3 classes) whose class
    scores depend enough on the image that, at conf 0.8, the white and grey images of write_task_images have
    no box; the tensor its neck writes (the explained layer); and the model augmented for a detect audit."""
    import onnx
    import torch

    from onnx_gradcam.prepare import prepare_model
    from tests.test_tasks import YoloV8Like, export, output_of

    torch.manual_seed(0)
    module = YoloV8Like().eval()
    with torch.no_grad():
        for layer in module.cls:
            layer.weight.mul_(60)
    plain = export(module)
    target = output_of(plain, "/neck/")
    onnx.save(plain, str(folder / "yolo.onnx"))
    # Augmented once here: subprocesses load it as it is, rather than each augmenting the plain model again.
    onnx.save(prepare_model(plain, "gradcam", target=target, task="detect").model, str(folder / "yolo.gradcam.onnx"))
    return {"path": str(folder / "yolo.onnx"), "target": target, "augmented": str(folder / "yolo.gradcam.onnx")}


def segmenter_model(folder: Path) -> dict:
    """A plain segmentation ONNX model (tests/test_tasks.py's SmallSegmenter: logits [N, 3, 64, 64]) with logits
    sharp enough for several classes per image, and the tensor its body writes (the explained layer)."""
    import onnx
    import torch

    from tests.test_tasks import SmallSegmenter, export, output_of

    torch.manual_seed(0)
    module = SmallSegmenter().eval()
    with torch.no_grad():
        module.classifier.weight.mul_(10)
    plain = export(module)
    onnx.save(plain, str(folder / "segmenter.onnx"))
    return {"path": str(folder / "segmenter.onnx"), "target": output_of(plain, "/body/")}


def write_task_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """count PNGs of TASK_IMAGE_SIZE: black, white, grey, then noise, every other one with a flat block."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        image = (rng.random((*TASK_IMAGE_SIZE, 3)) * 255).astype(np.uint8)
        if index < 3:
            image[:] = (0, 255, 128)[index]
        elif index % 2:
            image[10:50, 20:70] = rng.integers(0, 256, 3, dtype=np.uint8)
        path = folder / f"image_{index:03d}.png"
        assert cv2.imwrite(str(path), image)
        paths.append(str(path))
    return paths
