"""Build the demo model shipped in ``onnx_gradcam/data/``.

Trains the MNIST-tutorial CNN on scikit-learn's bundled 8x8 digits (upsampled
to 28x28, so no download is needed), exports it to ONNX, augments it with the
Grad-CAM outputs and writes the held-out test set next to it.

Run from the repository root::

    python tools/build_demo_model.py

Deterministic (fixed seeds, CPU, deterministic algorithms); about a minute on
two cores. Importing this module is cheap: it only defines the architectures.
"""

from __future__ import annotations

from collections import OrderedDict
import sys
from pathlib import Path

import torch
from torch import nn

SEED = 0
IMAGE_SIZE = 28
NUM_CLASSES = 10
REQUIRED_ACCURACY = 0.97
PLAIN_MODEL_PATH = Path("/tmp/digits_cnn_plain.onnx")
REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "onnx_gradcam" / "data"


def mnist_cnn() -> nn.Module:
    """Return the MNIST-tutorial CNN: 1x28x28 input, last 4-D tensor (pool2) 64x7x7, logits [N, 10]."""
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(1, 32, kernel_size=3, padding=1)),
                ("relu1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(2)),  # 28 -> 14
                ("conv2", nn.Conv2d(32, 64, kernel_size=3, padding=1)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(2)),  # 14 -> 7
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(64 * 7 * 7, NUM_CLASSES)),
            ]
        )
    )


def cifar_cnn() -> nn.Module:
    """Return the CIFAR-10-tutorial CNN (conv5-pool3 x3, fc 2000, fc 10): 3x32x32 input, logits [N, 10]."""
    # MaxPool2d(3, stride=2) without ceil_mode (PyTorch's default, unlike Caffe's
    # ceil) maps 32 -> 15 -> 7 -> 3: relu3 is 64x7x7 and the last 4-D tensor,
    # the one Flatten sees, is 64x3x3.
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 32, kernel_size=5, padding=2)),
                ("relu1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(3, stride=2)),
                ("conv2", nn.Conv2d(32, 32, kernel_size=5, padding=2)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(3, stride=2)),
                ("conv3", nn.Conv2d(32, 64, kernel_size=5, padding=2)),
                ("relu3", nn.ReLU()),
                ("pool3", nn.MaxPool2d(3, stride=2)),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(64 * 3 * 3, 2000)),
                ("relu4", nn.ReLU()),
                ("fc2", nn.Linear(2000, NUM_CLASSES)),
            ]
        )
    )


def load_digit_images():
    """Return (images uint8 [M, 28, 28], labels int64 [M]) from sklearn's bundled digits."""
    import cv2
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.empty((len(digits.images), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for index, image in enumerate(digits.images):
        upsampled = cv2.resize(
            image.astype(np.float32), (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR
        )
        # Pixel values are 0..16; store them as ordinary 0..255 grayscale so the
        # shipped test images go through the same preprocessing as a real photo.
        images[index] = np.clip(np.rint(upsampled * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def _random_shift(batch: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with the background value."""
    count, _, height, width = batch.shape
    background = batch.amin(dim=(1, 2, 3), keepdim=True)
    padded = nn.functional.pad(batch - background, [max_shift] * 4) + background
    offsets = torch.randint(0, 2 * max_shift + 1, (count, 2), generator=generator)
    return torch.stack(
        [padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


def _accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        predictions = model(inputs).argmax(dim=1)
    return float((predictions == labels).float().mean())


def main() -> None:
    import datetime
    import json
    import shutil

    import numpy as np
    from sklearn.model_selection import train_test_split

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)

    images, labels = load_digit_images()
    train_images, test_images, train_labels, test_labels = train_test_split(
        images, labels, test_size=0.25, stratify=labels, random_state=SEED
    )
    scaled_train = train_images.astype(np.float32) / 255.0
    mean = float(scaled_train.mean())
    std = float(scaled_train.std())

    def to_input(batch_uint8: np.ndarray) -> torch.Tensor:
        scaled = batch_uint8.astype(np.float32) / 255.0
        return torch.from_numpy((scaled - mean) / std).unsqueeze(1)

    train_inputs, test_inputs = to_input(train_images), to_input(test_images)
    train_targets, test_targets = torch.from_numpy(train_labels), torch.from_numpy(test_labels)

    model = mnist_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(SEED)
    epochs, batch_size = 20, 64
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_inputs), generator=generator)
        epoch_loss = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = _random_shift(train_inputs[index], max_shift=2, generator=generator)
            loss = nn.functional.cross_entropy(model(batch), train_targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item() * len(index)
        accuracy = _accuracy(model, test_inputs, test_targets)
        print(f"epoch {epoch:2d}  train loss {epoch_loss / len(order):.4f}  test accuracy {accuracy:.4f}")
    print(f"final test accuracy {accuracy:.4f} on {len(test_labels)} held-out digits")
    assert accuracy >= REQUIRED_ACCURACY, f"test accuracy {accuracy:.4f} < {REQUIRED_ACCURACY}"

    model.eval()
    torch.onnx.export(
        model,
        test_inputs[:1],
        str(PLAIN_MODEL_PATH),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
    )
    print(f"wrote {PLAIN_MODEL_PATH}")

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    model_path = DATA_DIR / "digits_cnn.onnx"
    preprocess = {
        "size": [IMAGE_SIZE, IMAGE_SIZE],
        "mean": [mean],
        "std": [std],
        "scale": 1 / 255,
        "channel_order": "GRAY",
        "layout": "NCHW",
    }
    try:
        if str(REPO_ROOT) not in sys.path:  # run as a script: make the package importable
            sys.path.insert(0, str(REPO_ROOT))
        import onnx_gradcam

        onnx_gradcam.augment(
            str(PLAIN_MODEL_PATH),
            target="auto",
            output=str(model_path),
            heatmap=True,
            preprocess=preprocess,
        )
        augmented = True
        print(f"wrote augmented {model_path}")
    except Exception as error:  # augment() is optional for this script: ship what we have
        augmented = False
        print(f"augment unavailable ({type(error).__name__}: {error}); plain model kept at {PLAIN_MODEL_PATH}")
        # Ship the plain model so the demo data stays usable; rerun once augment() works.
        shutil.copyfile(PLAIN_MODEL_PATH, model_path)
        print(f"wrote plain (not augmented) {model_path}")

    np.savez_compressed(DATA_DIR / "digits_test.npz", images=test_images, labels=test_labels)
    (DATA_DIR / "digits_labels.txt").write_text("".join(f"{digit}\n" for digit in range(NUM_CLASSES)))
    record = {
        "accuracy": round(accuracy, 6),
        "test_images": int(len(test_labels)),
        "mean": mean,
        "std": std,
        "preprocess": preprocess,
        "seed": SEED,
        "epochs": epochs,
        "augmented": augmented,
        "torch_version": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }
    (DATA_DIR / "digits_cnn.json").write_text(json.dumps(record, indent=2) + "\n")
    total = sum(path.stat().st_size for path in DATA_DIR.iterdir() if path.is_file())
    print(f"wrote {DATA_DIR} ({total / 1024:.1f} KiB total)")
    assert total < 1_000_000, f"{DATA_DIR} is {total} bytes, over the 1 MB budget"


if __name__ == "__main__":
    main()
