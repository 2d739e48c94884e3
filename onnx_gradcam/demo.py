"""The built-in demo: a CNN trained on scikit-learn's digits, shipped inside the package."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from .explainer import Explainer, Explanation
from .labels import label_name
from .render import contact_sheet, overlay, write_image


def data_path(name: str) -> Path:
    """Path of a file shipped in onnx_gradcam/data."""
    return Path(str(resources.files("onnx_gradcam") / "data" / name))


def demo_model_path() -> Path:
    return data_path("digits_cnn.onnx")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Held-out digits: uint8 images [M,28,28] and labels [M]."""
    with np.load(data_path("digits_test.npz")) as data:
        return data["images"], data["labels"]


def write_contact_sheet(out_dir: Path, count: int = 40, method: str = "hirescam") -> Explanation:
    """Explain the first held-out digits and write out_dir/contact_sheet.png (overlay, prediction, ok/x).

    HiResCAM is the default here: this model flattens its 7x7 feature map into a dense layer, and
    Grad-CAM's averaged gradients cancel out on such heads (many maps would be empty).
    """
    images, labels = load_digits()
    images, labels = images[:count], labels[:count]
    explanation = Explainer(demo_model_path(), method=method).explain(list(images))
    names = [line.strip() for line in data_path("digits_labels.txt").read_text().splitlines()]
    tiles, captions = [], []
    for image, heatmap, predicted, label in zip(images, explanation.heatmaps, explanation.classes, labels):
        tiles.append(overlay(np.kron(image, np.ones((4, 4), np.uint8)), heatmap))  # 112 px: visible heat
        captions.append(f"{label_name(names, int(predicted))} ({'ok' if predicted == label else 'x'})")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_image(out_dir / "contact_sheet.png", contact_sheet(tiles, columns=10, captions=captions))
    return explanation
