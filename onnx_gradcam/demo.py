"""The built-in demo: a CNN trained on scikit-learn's digits, shipped inside the package."""
from __future__ import annotations

import json
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


def run_demo(out_dir: Path, count: int = 40, method: str = "hirescam") -> Explanation:
    """Explain held-out digits; write overlays and a contact sheet into out_dir.

    HiResCAM is the default here: this model flattens its 7x7 feature map into a dense layer, and
    Grad-CAM's averaged gradients cancel out on such heads (many maps would be empty).
    """
    images, labels = load_digits()
    images, labels = images[:count], labels[:count]
    explainer = Explainer(demo_model_path(), method=method)
    explanation = explainer.explain(list(images))
    names = [line.strip() for line in data_path("digits_labels.txt").read_text().splitlines()]
    out_dir.mkdir(parents=True, exist_ok=True)
    tiles, captions = [], []
    for index, (image, heatmap) in enumerate(zip(images, explanation.heatmaps)):
        large = np.kron(image, np.ones((4, 4), np.uint8))  # 112x112 so the heat is visible
        tile = overlay(large, heatmap)
        write_image(out_dir / f"digit_{index:03d}.png", tile)
        predicted = int(explanation.classes[index])
        tiles.append(tile)
        captions.append(f"{label_name(names, predicted)} ({'ok' if predicted == labels[index] else 'x'})")
    write_image(out_dir / "contact_sheet.png", contact_sheet(tiles, columns=10, captions=captions))
    accuracy = float((explanation.classes == labels).mean())
    (out_dir / "summary.json").write_text(json.dumps(
        {"images": int(len(images)), "accuracy": accuracy, "method": explanation.method}, indent=2))
    return explanation
