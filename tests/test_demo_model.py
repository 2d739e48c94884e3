"""The demo model shipped in onnx_gradcam/data/ and the tutorial architectures that build it.

Oracle: the held-out sklearn digits written by tools/build_demo_model.py, and the
layer shapes documented in the tutorials the architectures come from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # tools/ is a maintainer folder, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from tools.build_demo_model import cifar_cnn, mnist_cnn  # noqa: E402

DATA_DIR = REPO_ROOT / "onnx_gradcam" / "data"
MODEL_PATH = DATA_DIR / "digits_cnn.onnx"
ONE_MB = 1_000_000


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((DATA_DIR / "digits_cnn.json").read_text())


def test_demo_model_accuracy_on_held_out_digits_at_least_97_percent(record):
    onnxruntime = pytest.importorskip("onnxruntime")
    test_set = np.load(DATA_DIR / "digits_test.npz")
    images, labels = test_set["images"], test_set["labels"]
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
    assert labels.dtype == np.int64 and len(labels) == len(images)

    scaled = images.astype(np.float32) / 255.0
    inputs = ((scaled - record["mean"]) / record["std"]).astype(np.float32)[:, None]

    session = onnxruntime.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])
    feeds = {"input": inputs}
    input_names = {node.name for node in session.get_inputs()}
    if "gradcam_target_class" in input_names:  # augmented model: explain the top class
        feeds["gradcam_target_class"] = np.full(len(images), -1, dtype=np.int64)
    (logits,) = session.run(["logits"], feeds)

    assert logits.shape == (len(images), 10)
    accuracy = float((logits.argmax(axis=1) == labels).mean())
    assert accuracy >= 0.97
    assert accuracy == pytest.approx(record["accuracy"], abs=1e-3)


def test_demo_data_is_under_one_megabyte():
    assert MODEL_PATH.stat().st_size < ONE_MB
    total = sum(path.stat().st_size for path in DATA_DIR.iterdir() if path.is_file())
    assert total < ONE_MB


def test_demo_labels_are_the_ten_digits():
    names = (DATA_DIR / "digits_labels.txt").read_text().splitlines()
    assert names == [str(digit) for digit in range(10)]


def test_mnist_cnn_shapes_match_tutorial():
    model = mnist_cnn().eval()
    batch = torch.zeros(2, 1, 28, 28)
    with torch.no_grad():
        assert model(batch).shape == (2, 10)
        assert model[:5](batch).shape == (2, 64, 14, 14)  # relu2: output of the last conv block
        assert model[:6](batch).shape == (2, 64, 7, 7)  # pool2: last 4-D tensor, fed to Flatten


def test_cifar_cnn_shapes_match_tutorial():
    model = cifar_cnn().eval()
    batch = torch.zeros(2, 3, 32, 32)
    with torch.no_grad():
        assert model(batch).shape == (2, 10)
        assert model[:8](batch).shape == (2, 64, 7, 7)  # relu3: output of the last conv block
        assert model[:9](batch).shape == (2, 64, 3, 3)  # pool3: last 4-D tensor, fed to Flatten
    assert model.fc1.out_features == 2000
