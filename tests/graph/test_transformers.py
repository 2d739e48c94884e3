"""Transformer and ConvNeXt targets: the Explainer's heatmaps equal pytorch-grad-cam's for every CAM method.

Small seeded members of torchvision's ViT, Swin and ConvNeXt families, built from their classes and
exported with a plain torch.onnx.export (they know nothing of onnx-gradcam). Each is augmented at the
tensor of the layer pytorch-grad-cam's documentation targets (ViT: the last block's ln_1 with its
reshape_transform; Swin: the last block's norm1; ConvNeXt: the last stage), found in the ONNX graph
by its values, and with target="auto". Oracle: pytorch-grad-cam on the torch model, same class.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torchvision
from onnx import helper
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchvision.models.convnext import CNBlock, CNBlockConfig, ConvNeXt
from torchvision.models.swin_transformer import SwinTransformer

import onnx_gradcam

PEERS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM,
         "hirescam": HiResCAM, "layercam": LayerCAM}
SIZE = 32
TOLERANCE = 1e-4


def vit_tokens_on_grid(tensor: torch.Tensor, height: int = 4, width: int = 4) -> torch.Tensor:
    """pytorch-grad-cam's ViT reshape_transform: drop the class token, fold the patch tokens to [N, C, h, w]."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def channels_last_to_first(tensor: torch.Tensor) -> torch.Tensor:
    """torchvision's Swin blocks are [N, H, W, C]: pytorch-grad-cam needs [N, C, H, W]."""
    return tensor.permute(0, 3, 1, 2)


def _random_head(model: torchvision.models.VisionTransformer) -> torchvision.models.VisionTransformer:
    """torchvision initializes the ViT classifier to zeros: every logit, hence every gradient, would be 0."""
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)
    torch.nn.init.normal_(model.heads.head.bias, std=0.5)
    return model


def _layer_scaled(model: ConvNeXt) -> ConvNeXt:
    """ConvNeXt with layer scales of trained size: at their 1e-6 init each block's output equals its input."""
    for module in model.modules():
        if isinstance(module, CNBlock):
            torch.nn.init.uniform_(module.layer_scale, 0.2, 1.0)
    return model


@dataclass
class Family:
    build: Callable[[], torch.nn.Module]
    layer: Callable[[torch.nn.Module], torch.nn.Module]  # the layer pytorch-grad-cam's docs target
    reshape: Optional[Callable]
    auto_layer: Callable[[torch.nn.Module], torch.nn.Module]  # the layer target="auto" should find
    auto_reshape: Optional[Callable]
    layout: str  # of the named target's tensor in the graph


FAMILIES = {
    "vit": Family(
        lambda: _random_head(torchvision.models.VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2,
                                                                  num_heads=2, hidden_dim=32, mlp_dim=64,
                                                                  num_classes=10)),
        lambda model: model.encoder.layers[-1].ln_1, vit_tokens_on_grid,
        # After the last attention only the class token reaches the head: auto takes the same ln_1.
        lambda model: model.encoder.layers[-1].ln_1, vit_tokens_on_grid, "NTC"),
    "swin": Family(
        lambda: SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                                window_size=[4, 4], num_classes=10),
        lambda model: model.features[-1][-1].norm1, channels_last_to_first,
        # The deepest map before the pooling: the final norm, permuted to NCHW.
        lambda model: model.permute, None, "NHWC"),
    "convnext": Family(
        lambda: _layer_scaled(ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)),
        lambda model: model.features[-1], None,
        lambda model: model.features[-1], None, "NCHW"),
}
EXPORTERS = ["torchscript", "dynamo"]


def export(model: torch.nn.Module, images: torch.Tensor, path, exporter: str) -> onnx.ModelProto:
    common = dict(input_names=["input"], output_names=["logits"])
    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=512)
        torch.onnx.export(model, (images,), str(path), dynamo=True, dynamic_shapes=({0: batch},), **common)
    else:
        torch.onnx.export(model, (images,), str(path), dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **common)
    return onnx.load(str(path))


def layer_output(model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    kept = {}
    hook = layer.register_forward_hook(lambda module, inputs, output: kept.__setitem__("output", output))
    with torch.no_grad():
        model(images)
    hook.remove()
    return kept["output"].numpy()


def tensor_named_by_values(plain: onnx.ModelProto, expected: np.ndarray, images: np.ndarray) -> str:
    """The first candidate target of the graph whose values are the torch layer's output."""
    names = [info.name for info in onnx_gradcam.list_targets(plain)]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(plain)
    exposed.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    session = onnxruntime.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    for name, value in zip(names, session.run(names, {"input": images})):
        if value.shape == expected.shape and np.allclose(value, expected, rtol=1e-5, atol=1e-6):
            return name
    raise AssertionError(f"no candidate target carries the layer's values {expected.shape}")


@pytest.fixture(scope="module", params=[(family, exporter) for family in FAMILIES for exporter in EXPORTERS],
                ids=lambda param: "-".join(param))
def case(request, tmp_path_factory):
    family_name, exporter = request.param
    family = FAMILIES[family_name]
    torch.manual_seed(0)
    model = family.build().eval()
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    plain = export(model, images, tmp_path_factory.mktemp(family_name) / "model.onnx", exporter)
    named = tensor_named_by_values(plain, layer_output(model, family.layer(model), images), images.numpy())
    auto_named = tensor_named_by_values(plain, layer_output(model, family.auto_layer(model), images),
                                        images.numpy())
    return dict(family=family, model=model, images=images, plain=plain, named=named, auto_named=auto_named,
                augmented={}, explainers={})


def augmented(case: dict, which: str) -> onnx.ModelProto:
    """The model augmented at the named target or with target="auto" (made once per case)."""
    if which not in case["augmented"]:
        target = case["named"] if which == "named" else "auto"
        case["augmented"][which] = onnx_gradcam.augment(case["plain"], target=target)
    return case["augmented"][which]


def explainer(case: dict, which: str) -> onnx_gradcam.Explainer:
    if which not in case["explainers"]:
        case["explainers"][which] = onnx_gradcam.Explainer(augmented(case, which))
    return case["explainers"][which]


def peer_heatmaps(case: dict, method: str, layer: torch.nn.Module, reshape, classes) -> np.ndarray:
    with PEERS[method](case["model"], [layer], reshape_transform=reshape) as peer:
        return peer(case["images"], [ClassifierOutputTarget(int(c)) for c in classes])


def test_targets_are_the_documented_layers_in_their_graph_layout(case):
    named = {p.key: p.value for p in augmented(case, "named").metadata_props}
    assert (named["gradcam_target"], named["gradcam_target_layout"]) == (case["named"], case["family"].layout)
    auto = {p.key: p.value for p in augmented(case, "auto").metadata_props}
    assert auto["gradcam_target"] == case["auto_named"]


@pytest.mark.parametrize("method", list(PEERS))
def test_named_target_heatmaps_equal_pytorch_grad_cam(case, method):
    family = case["family"]
    ours = explainer(case, "named").explain(case["images"].numpy(), target_class=[-1, 3], method=method)
    expected = peer_heatmaps(case, method, family.layer(case["model"]), family.reshape, ours.classes)
    assert ours.heatmaps.shape == expected.shape == (2, SIZE, SIZE)
    assert (expected.max(axis=(1, 2)) - expected.min(axis=(1, 2)) > 0.5).all(), "a degenerate map proves nothing"
    np.testing.assert_allclose(ours.heatmaps, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("method", list(PEERS))
def test_auto_target_heatmaps_equal_pytorch_grad_cam_at_the_layer_auto_should_find(case, method):
    family = case["family"]
    ours = explainer(case, "auto").explain(case["images"].numpy(), target_class=[-1, 7], method=method)
    expected = peer_heatmaps(case, method, family.auto_layer(case["model"]), family.auto_reshape, ours.classes)
    assert (expected.max(axis=(1, 2)) - expected.min(axis=(1, 2)) > 0.5).all(), "a degenerate map proves nothing"
    np.testing.assert_allclose(ours.heatmaps, expected, rtol=0, atol=TOLERANCE)


MODULE_NAMES = {"vit": "encoder.layers.encoder_layer_1.ln_1", "swin": "features.3.1.norm1", "convnext": "features.3"}


@pytest.mark.parametrize("name", sorted(MODULE_NAMES))
def test_export_torch_with_the_documented_module_name_equals_pytorch_grad_cam(name):
    family = FAMILIES[name]
    torch.manual_seed(0)
    model = family.build().eval()
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    exported = onnx_gradcam.export_torch(model, images[:1], target=MODULE_NAMES[name])
    ours = onnx_gradcam.Explainer(exported).explain(images.numpy(), target_class=[-1, 2])
    expected = peer_heatmaps({"model": model, "images": images}, "gradcam", family.layer(model), family.reshape,
                             ours.classes)
    assert (expected.max(axis=(1, 2)) - expected.min(axis=(1, 2)) > 0.5).all(), "a degenerate map proves nothing"
    np.testing.assert_allclose(ours.heatmaps, expected, rtol=0, atol=TOLERANCE)
