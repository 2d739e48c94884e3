"""Make the README's detection and segmentation pictures (docs/detection.jpg, docs/segmentation.jpg).

Each picture is what `onnx-gradcam explain --task detect|segment` writes, run through the command line
itself (onnx_gradcam.cli.main), laid side by side:

- detection: Ultralytics' YOLOv8n with seeded random weights (tools/random_yolov8n.py; no trained weights
  can be downloaded here), exported by Ultralytics at 640x640, on scikit-learn's china.jpg. Its boxes and
  labels mean nothing; the picture shows the output: every box with its label and score over the maximum
  of the box heatmaps, then the first two boxes each over its own heatmap.
- segmentation: a small fully convolutional segmenter trained here for a minute on synthetic pictures of
  discs and squares in random colours over textured backgrounds (classes background, disc, square); the
  picture is a new one with a disc and a square in each of two colours, then the HiResCAM heatmap of the
  disc class and of the square class (Grad-CAM's channel averages light up every shape alike here).

Needs the dev extra and Ultralytics (.ci/run installs it). Deterministic on one machine (fixed seeds, one
torch thread). Run from the repository root: python tools/make_docs_pictures.py
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from onnx_gradcam.cli import main as cli  # noqa: E402
from onnx_gradcam.render import read_image, write_image  # noqa: E402
from tools.random_yolov8n import NECK_TENSORS, export_onnx, model_input, offline_environment  # noqa: E402

DOCS = REPO_ROOT / "docs"
PANEL_WIDTH = 360  # pixels per panel in the pictures
SHAPES_SIZE = 160
SHAPES_CLASSES = ("background", "disc", "square")
SHAPES_TARGET = "/context2/context2.2/Relu_output_0"  # the last feature map before the classifier


def side_by_side(pictures: list[np.ndarray], width: int = PANEL_WIDTH, gap: int = 6) -> np.ndarray:
    """The RGB pictures resized to one width, in a row on white with gaps between them."""
    panels = [cv2.resize(picture, (width, round(picture.shape[0] * width / picture.shape[1])),
                         interpolation=cv2.INTER_AREA) for picture in pictures]
    height = max(panel.shape[0] for panel in panels)
    row = np.full((height, len(panels) * (width + gap) - gap, 3), 255, np.uint8)
    for index, panel in enumerate(panels):
        row[:panel.shape[0], index * (width + gap):index * (width + gap) + width] = panel
    return row


def save_jpeg(path: Path, picture: np.ndarray) -> None:
    """An RGB picture as a JPEG of quality 90 (the noisy textures would make PNGs of 300 KB)."""
    if not cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]):
        raise SystemExit(f"cannot write {path}")


# ---------------------------------------------------------------- detection

def detection_picture(workdir: Path) -> Path:
    """docs/detection.jpg: `explain --task detect` on a random-weight YOLOv8n and china.jpg."""
    os.environ.update(offline_environment(workdir / "config"))
    from sklearn.datasets import load_sample_image
    from tools.random_yolov8n import random_yolov8n

    photo = load_sample_image("china.jpg")
    image_path = workdir / "china.jpg"
    cv2.imwrite(str(image_path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    calibration = model_input(cv2.resize(photo, (640, 640), interpolation=cv2.INTER_AREA)[None])
    yolo = random_yolov8n(calibration, class_bias=-2.0)
    model = export_onnx(yolo, workdir / "yolov8n.onnx", 640, dynamic=False)
    # The model built from the yaml names its classes 0..79: the COCO names from Ultralytics' dataset file.
    from ultralytics.utils import ROOT, YAML

    names = YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"]
    labels = workdir / "coco.txt"
    labels.write_text("\n".join(names[index] for index in sorted(names)) + "\n")
    out = workdir / "detect"
    command = ["explain", str(model), str(image_path), "--task", "detect", "-o", str(out),
               "--target", ",".join(NECK_TENSORS), "--max-det", "3", "--labels", str(labels)]
    if cli(command) != 0:
        raise SystemExit("onnx-gradcam explain --task detect failed")
    pictures = [read_image(out / name) for name in ("china_detections.png", "china_box0.png", "china_box1.png")]
    target = DOCS / "detection.jpg"
    save_jpeg(target, side_by_side(pictures))
    return target


# ---------------------------------------------------------------- segmentation

def shapes(count: int, rng: np.random.Generator, size: int = SHAPES_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """count synthetic pictures (uint8 RGB [N,H,W,3]) of discs and squares, and their label maps (int64 [N,H,W])."""
    pictures = np.empty((count, size, size, 3), np.uint8)
    labels = np.zeros((count, size, size), np.int64)
    rows, columns = np.mgrid[:size, :size]
    for index in range(count):
        # A textured background: a colour gradient plus noise, so that colour alone does not give the classes.
        low, high = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        ramp = (rows + columns)[..., None] / (2 * size)
        background = low * (1 - ramp) + high * ramp + rng.normal(0, 18, (size, size, 3))
        picture = np.clip(background, 0, 255).astype(np.uint8)
        for _ in range(rng.integers(1, 5)):
            kind = int(rng.integers(1, 3))
            radius = int(rng.integers(size // 16, size // 7))
            y, x = (int(value) for value in rng.integers(radius, size - radius, 2))
            color = tuple(int(value) for value in rng.integers(0, 256, 3))
            if kind == 1:
                inside = (rows - y) ** 2 + (columns - x) ** 2 <= radius ** 2
            else:
                inside = (abs(rows - y) <= radius) & (abs(columns - x) <= radius)
            picture[inside] = color
            labels[index][inside] = kind
        pictures[index] = picture
    return pictures, labels


def showcase(size: int = SHAPES_SIZE) -> np.ndarray:
    """The explained picture: two discs and two squares, in colours of both kinds, on a textured gradient."""
    rng = np.random.default_rng(7)
    rows, columns = np.mgrid[:size, :size]
    ramp = (rows + columns)[..., None] / (2 * size)
    background = np.array([70, 110, 150]) * (1 - ramp) + np.array([190, 170, 120]) * ramp
    picture = np.clip(background + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
    for kind, (y, x), radius, color in ((1, (42, 44), 17, (230, 60, 50)), (1, (118, 112), 14, (40, 200, 90)),
                                        (2, (112, 40), 15, (40, 200, 90)), (2, (44, 116), 13, (230, 60, 50))):
        if kind == 1:
            inside = (rows - y) ** 2 + (columns - x) ** 2 <= radius ** 2
        else:
            inside = (abs(rows - y) <= radius) & (abs(columns - x) <= radius)
        picture[inside] = color
    return picture


def shapes_segmenter() -> nn.Module:
    """Per-pixel logits [N, 3, H, W]: four convolutions to stride 4, a 1x1 classifier, bilinear x4 upsampling."""

    def block(inputs: int, outputs: int, stride: int = 1, dilation: int = 1) -> nn.Module:
        return nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride, dilation, dilation), nn.BatchNorm2d(outputs),
                             nn.ReLU())

    return nn.Sequential(OrderedDict([
        ("stem", block(3, 16, 2)), ("down", block(16, 32, 2)),
        ("context1", block(32, 32, dilation=2)), ("context2", block(32, 32, dilation=4)),  # the explained layer
        ("classifier", nn.Conv2d(32, len(SHAPES_CLASSES), 1)),
        ("upsample", nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False))]))


def train_segmenter(steps: int = 600, batch: int = 16) -> nn.Module:
    """The shapes segmenter trained on freshly drawn synthetic pictures (cross-entropy, Adam)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = shapes_segmenter()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        pictures, labels = shapes(batch, rng)
        loss = nn.functional.cross_entropy(model(torch.from_numpy(model_input(pictures))), torch.from_numpy(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"segmenter step {step}: loss {loss.item():.3f}", flush=True)
    model.eval()
    pictures, labels = shapes(32, np.random.default_rng(1))
    with torch.no_grad():
        predicted = model(torch.from_numpy(model_input(pictures))).argmax(1).numpy()
    print(f"segmenter pixel accuracy on 32 new pictures: {(predicted == labels).mean():.3f}")
    return model


def segmentation_picture(workdir: Path) -> Path:
    """docs/segmentation.jpg: `explain --task segment` on the shapes segmenter and a new synthetic picture."""
    model = train_segmenter()
    buffer = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 3, SHAPES_SIZE, SHAPES_SIZE), buffer, input_names=["images"],
                      output_names=["out"], dynamic_axes={"images": {0: "batch"}, "out": {0: "batch"}},
                      dynamo=False)
    model_path = workdir / "shapes.onnx"
    onnx.save(onnx.load_from_string(buffer.getvalue()), str(model_path))
    picture = showcase()
    image_path, labels = workdir / "shapes.png", workdir / "shapes.txt"
    write_image(image_path, picture)
    labels.write_text("\n".join(SHAPES_CLASSES) + "\n")
    out = workdir / "segment"
    command = ["explain", str(model_path), str(image_path), "--task", "segment", "-o", str(out),
               "--target", SHAPES_TARGET, "--labels", str(labels), "--preprocess", "none", "--method", "hirescam"]
    if cli(command) != 0:
        raise SystemExit("onnx-gradcam explain --task segment failed")
    overlays = [read_image(out / f"shapes_class{index}.png") for index in (1, 2)]
    target = DOCS / "segmentation.jpg"
    save_jpeg(target, side_by_side([picture, *overlays], width=240))
    return target


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as workdir:
        for make in (detection_picture, segmentation_picture):
            target = make(Path(workdir))
            print(f"wrote {target.relative_to(REPO_ROOT)} ({target.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
