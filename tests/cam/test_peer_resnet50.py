"""End to end: the Explainer's heatmaps equal pytorch-grad-cam's on ResNet-50 for every method."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import onnx_gradcam

PEERS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM,
         "hirescam": HiResCAM, "layercam": LayerCAM}


@pytest.fixture(scope="module")
def resnet50_case(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    path = tmp_path_factory.mktemp("resnet50") / "resnet50.onnx"
    torch.onnx.export(model, (images,), str(path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return model, images, onnx_gradcam.Explainer(onnx_gradcam.augment(path))


@pytest.mark.slow
@pytest.mark.parametrize("method", list(PEERS))
def test_heatmaps_equal_pytorch_grad_cam(resnet50_case, method):
    model, images, explainer = resnet50_case
    ours = explainer.explain(images.numpy(), target_class=[-1, 17], method=method)
    with PEERS[method](model, [model.layer4[-1]]) as peer:
        expected = peer(images, [ClassifierOutputTarget(int(c)) for c in ours.classes])
    assert ours.heatmaps.shape == expected.shape == (2, 224, 224)
    np.testing.assert_allclose(ours.heatmaps, expected, rtol=0, atol=1e-4)
