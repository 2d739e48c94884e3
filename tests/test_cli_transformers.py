"""`onnx-gradcam explain` on transformer and ConvNeXt classifiers exported by a plain torch.onnx.export,
with no option beyond the model, the images and the output folder.

Oracle: the Explainer's heatmap on the same model augmented by hand at the same auto target, which the
graph tests check against pytorch-grad-cam; here the command line must reach it on its own.
"""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch

import onnx_gradcam
from onnx_gradcam.cli import main
from onnx_gradcam.render import read_image, write_image

from graph.test_transformers import FAMILIES, SIZE


def _export(name: str, path) -> None:
    torch.manual_seed(3)
    model = FAMILIES[name].build().eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 3, SIZE, SIZE), buffer, dynamo=False)
    onnx.save(onnx.load_from_string(buffer.getvalue()), str(path))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_explain_writes_the_overlay_of_the_auto_target_heatmap(name, tmp_path, capsys):
    model_path, image_path, out = tmp_path / f"{name}.onnx", tmp_path / "picture.png", tmp_path / "out"
    _export(name, model_path)
    image = np.random.default_rng(4).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    write_image(image_path, image)

    assert main(["explain", str(model_path), str(image_path), "-o", str(out)]) == 0

    written = read_image(out / "picture_gradcam.png")
    assert written.shape == image.shape
    explainer = onnx_gradcam.Explainer(onnx_gradcam.augment(str(model_path)),
                                       preprocess=onnx_gradcam.Preprocess.imagenet())
    heatmap = explainer.explain([image]).heatmaps[0]
    assert heatmap.max() - heatmap.min() > 0.5  # a real map, not a constant
    expected = onnx_gradcam.overlay(image, np.asarray(
        __import__("cv2").resize(heatmap, (image.shape[1], image.shape[0]))))
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1
    assert "explained" in capsys.readouterr().out
