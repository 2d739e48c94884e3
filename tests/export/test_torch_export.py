"""export_torch on the tutorial models, checked against PyTorch autograd at the same module.

Oracle: torch.autograd.grad of the chosen class logit with respect to the target module's
output (captured by a forward hook), on the same seeded random weights.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torch import nn  # noqa: E402

from onnx_gradcam.errors import ExportError, TargetNotFoundError  # noqa: E402
from onnx_gradcam.export.torch import DYNAMO, TORCHSCRIPT, export_torch, list_torch_targets  # noqa: E402
from onnx_gradcam.graph.rules import RULES  # noqa: E402
from tools.build_demo_model import cifar_cnn  # noqa: E402

from export_oracle import assert_matches_autograd, chosen_classes, exporter_noise, run_augmented  # noqa: E402


def autograd_at(model: nn.Module, module: nn.Module, images: torch.Tensor, target_class) -> tuple:
    """(activation, gradient, logits) of module's output for the chosen class, from torch autograd."""
    captured = {}

    def keep(submodule, inputs, output):
        captured["activation"] = output
        return output.clone()  # later in-place ops must not change the captured activation

    model.eval()
    handle = module.register_forward_hook(keep)
    try:
        logits = model(images)
    finally:
        handle.remove()
    classes = torch.from_numpy(chosen_classes(logits.detach().numpy(), target_class))
    score = logits.gather(1, classes[:, None]).sum()
    gradient, = torch.autograd.grad(score, captured["activation"])
    return captured["activation"].detach().numpy(), gradient.numpy(), logits.detach().numpy()


def check_tutorial_model(model: nn.Module, target: str, images: torch.Tensor, target_class) -> dict:
    """Export at target with one image, run a batch, compare with autograd; return the outputs."""
    return check_export(export_torch(model, images[:1], target=target, heatmap=True), model, target, images,
                        target_class)


def check_export(exported: onnx.ModelProto, model: nn.Module, target: str, images: torch.Tensor,
                 target_class) -> dict:
    """Run the exported model on a batch, compare with autograd at target; return the outputs."""
    outputs = run_augmented(exported, images.numpy(), target_class)
    activation, gradient, logits = autograd_at(model, model.get_submodule(target), images, target_class)
    np.testing.assert_allclose(outputs["logits"], logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(outputs["gradcam_class"], chosen_classes(logits, target_class))
    assert_matches_autograd(outputs, activation, gradient, tuple(images.shape[2:]))
    assert target not in [o.name for o in exported.graph.output]  # the helper output is dropped
    return outputs


def test_resnet18_layer4_gradient_equals_torch_autograd():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    images = torch.randn(2, 3, 112, 112)
    outputs = check_tutorial_model(model, "layer4", images, [-1, 7])
    assert outputs["gradcam_gradient"].shape == (2, 512, 4, 4)


def test_cifar10_cnn_conv3_gradient_equals_torch_autograd():
    torch.manual_seed(0)
    model = cifar_cnn()
    images = torch.randn(3, 3, 32, 32)
    outputs = check_tutorial_model(model, "conv3", images, [-1, 0, 9])
    assert outputs["gradcam_gradient"].shape == (3, 64, 7, 7)


@pytest.mark.slow
@pytest.mark.skipif("Conv" not in RULES, reason="features.33 sits before the last Conv: needs a Conv "
                    "differentiation rule in onnx_gradcam/graph/rules/")
def test_vgg19_features33_gradient_equals_torch_autograd():
    torch.manual_seed(0)
    model = torchvision.models.vgg19(weights=None)
    # 224x224: the TorchScript exporter handles AdaptiveAvgPool2d(7) only when 7 divides the
    # input, and a smaller image gives pool5 of 1x1 or 3x3.
    images = torch.randn(1, 3, 224, 224)
    outputs = check_tutorial_model(model, "features.33", images, [-1])
    assert outputs["gradcam_gradient"].shape == (1, 512, 14, 14)


def test_target_followed_by_in_place_ops_exposes_the_module_output():
    """`out += identity` and ReLU(inplace=True) after the target must not change the exposed tensor."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.relu = nn.ReLU(inplace=True)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            out = self.bn(self.conv(x))
            out += x.mean(dim=1, keepdim=True)
            return self.fc(torch.flatten(self.pool(self.relu(out)), 1))

    torch.manual_seed(0)
    model = Block()
    model.bn.running_mean.uniform_(-1, 1)
    images = torch.randn(2, 3, 8, 8)
    outputs = check_tutorial_model(model, "bn", images, [-1, 2])
    assert outputs["gradcam_activation"].min() < 0  # before the in-place ReLU


class ChannelRMSNormNet(nn.Module):
    """Conv stem, RMSNorm over channels (channels-last, as in ConvNeXt-style blocks), conv, linear head.

    The TorchScript exporter has no symbolic for aten::rms_norm; the dynamo exporter has one.
    """

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.RMSNorm(8)
        self.conv = nn.Conv2d(8, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = self.norm(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


class CumulativeMaxNet(nn.Module):
    """A running maximum along the width: aten::cummax has no ONNX export in either exporter."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(torch.cummax(x, dim=3).values).mean(dim=(2, 3)))


def test_model_torchscript_cannot_export_goes_through_dynamo_and_equals_torch_autograd(recwarn, capfd):
    torch.manual_seed(0)
    model = ChannelRMSNormNet()
    images = torch.randn(2, 3, 10, 8)
    exported = export_torch(model, images[:1], target="conv", heatmap=True)
    outputs = check_export(exported, model, "conv", images, [-1, 3])
    assert outputs["gradcam_gradient"].shape == (2, 6, 10, 8)
    assert _metadata(exported)["gradcam_exporter"] == DYNAMO == "torch.onnx.export(dynamo=True)"
    assert exported.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch stays dynamic
    assert exporter_noise(recwarn, capfd) == []  # the failed TorchScript attempt stayed quiet


def test_model_neither_exporter_can_export_names_both_failures(recwarn, capfd):
    with pytest.raises(ExportError) as error:
        export_torch(CumulativeMaxNet(), torch.zeros(1, 3, 8, 8), target="conv")
    message = str(error.value)
    torchscript, dynamo = message.split("; torch.onnx.export(dynamo=True)")
    assert "torch.onnx.export(dynamo=False) raised UnsupportedOperatorError: " in torchscript
    assert "aten::cummax" in torchscript and "aten.cummax" in dynamo
    assert dynamo.startswith(" raised ConversionError from DispatchError: ")
    assert "\x1b[" not in message and "onnx_gradcam.augment" in message  # plain text, with a way out
    assert exporter_noise(recwarn, capfd) == []  # no graph dumps, no deprecation notices


def test_auto_target_and_module_object_target_match_named_target():
    torch.manual_seed(0)
    model = cifar_cnn()
    images = torch.randn(2, 3, 32, 32)
    by_name = run_augmented(export_torch(model, images[:1], target="pool3"), images.numpy(), [-1, 3])
    by_module = run_augmented(export_torch(model, images[:1], target=model.pool3), images.numpy(), [-1, 3])
    auto = export_torch(model, images[:1])
    by_auto = run_augmented(auto, images.numpy(), [-1, 3])
    for outputs in (by_module, by_auto):
        np.testing.assert_array_equal(outputs["gradcam_gradient"], by_name["gradcam_gradient"])
        np.testing.assert_array_equal(outputs["gradcam_activation"], by_name["gradcam_activation"])
    assert json.loads(_metadata(auto)["gradcam_export"])["target_module"] == "auto"


def test_export_saves_file_with_metadata_and_dynamic_batch(tmp_path):
    from onnx_gradcam.preprocess import Preprocess

    torch.manual_seed(0)
    model = cifar_cnn()
    path = tmp_path / "cifar.onnx"
    exported = export_torch(model, torch.randn(1, 3, 32, 32), target="conv3", path=path,
                            preprocess=Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    loaded = onnx.load(path)
    assert [o.name for o in loaded.graph.output] == [o.name for o in exported.graph.output]
    metadata = _metadata(loaded)
    assert metadata["gradcam_target"] == "conv3"
    preprocess = json.loads(metadata["gradcam_preprocess"])
    assert preprocess["size"] == [32, 32] and preprocess["layout"] == "NCHW" and preprocess["mean"] == [0.5] * 3
    export_info = json.loads(metadata["gradcam_export"])
    assert export_info["framework"] == "torch" and export_info["target_module"] == "conv3"
    assert metadata["gradcam_exporter"] == TORCHSCRIPT == "torch.onnx.export(dynamo=False)"
    outputs = run_augmented(loaded, np.random.default_rng(0).normal(size=(5, 3, 32, 32)), [-1] * 5)
    assert outputs["gradcam_gradient"].shape == (5, 64, 7, 7)
    assert model.training  # the caller's mode is restored


def test_static_batch_and_opset():
    model = cifar_cnn()
    exported = export_torch(model, torch.randn(2, 3, 32, 32), target="conv3", dynamic_batch=False, opset=17)
    assert next(o.version for o in exported.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert exported.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_list_torch_targets_names_4d_modules():
    targets = {info.name: info for info in list_torch_targets(cifar_cnn(), torch.zeros(1, 3, 32, 32))}
    assert targets["conv3"].shape == (1, 64, 7, 7) and targets["pool3"].shape == (1, 64, 3, 3)
    assert "fc1" not in targets


# ---------------------------------------------------------------- clear errors

@pytest.fixture(scope="module")
def small_resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=4)


def test_wrong_module_name_lists_close_names(small_resnet):
    with pytest.raises(TargetNotFoundError, match=r"no module named 'layer5'.*Did you mean.*'layer4'") as error:
        export_torch(small_resnet, torch.zeros(1, 3, 64, 64), target="layer5")
    assert "layer4.1.relu" in str(error.value)  # the listing of usable modules


def test_module_after_the_spatial_collapse_is_refused(small_resnet):
    example = torch.zeros(1, 3, 64, 64)
    with pytest.raises(TargetNotFoundError, match=r"'avgpool'.*\[1, 512, 1, 1\].*spatial collapse.*'layer4'"):
        export_torch(small_resnet, example, target="avgpool")
    with pytest.raises(TargetNotFoundError, match=r"'fc' outputs \[1, 4\] \(2-D\).*spatial collapse"):
        export_torch(small_resnet, example, target="fc")
    with pytest.raises(TargetNotFoundError, match="whole model"):
        export_torch(small_resnet, example, target=small_resnet)
    with pytest.raises(TargetNotFoundError, match="not a submodule"):
        export_torch(small_resnet, example, target=nn.Conv2d(3, 3, 1))


def test_multi_input_models_are_refused():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, image, mask):
            return self.fc(self.conv(image * mask).mean(dim=(2, 3)))

    images = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ExportError, match="2 required inputs.*one image input"):
        export_torch(TwoInputs(), images, target="conv")
    with pytest.raises(ExportError, match="holds 2 inputs.*one image input"):
        export_torch(TwoInputs(), (images, images), target="conv")


def test_non_image_models_are_refused():
    mlp = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(ExportError, match=r"shape \[4, 20\].*image"):
        export_torch(mlp, torch.zeros(4, 20))
    embedding = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(ExportError, match="dtype torch.int64.*image"):
        export_torch(embedding, torch.zeros(1, 3, dtype=torch.int64))
    segmenter = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1))
    with pytest.raises(ExportError, match=r"output has shape \[1, 5, 8, 8\].*\[N, classes\]"):
        export_torch(segmenter, torch.zeros(1, 3, 8, 8))


def test_torchscript_module_takes_auto_target_only():
    scripted = torch.jit.script(cifar_cnn())
    with pytest.raises(ExportError, match="TorchScript.*target='auto'"):
        export_torch(scripted, torch.zeros(1, 3, 32, 32), target="conv3")
    exported = export_torch(scripted, torch.zeros(1, 3, 32, 32))
    assert "gradcam_gradient" in [o.name for o in exported.graph.output]


def test_preprocess_size_must_match_the_export():
    with pytest.raises(ExportError, match="size"):
        export_torch(cifar_cnn(), torch.zeros(1, 3, 32, 32), target="conv3", preprocess={"size": [64, 64]})


def _metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def test_shared_module_is_explained_at_its_last_call_with_a_warning():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    images = torch.randn(1, 3, 64, 64)
    with pytest.warns(UserWarning, match="runs 2 times"):
        exported = export_torch(model, images, target="layer4.1.relu")
    outputs = run_augmented(exported, images.numpy(), [-1])
    activation, gradient, _ = autograd_at(model, model.layer4, images, [-1])  # the block's last ReLU
    np.testing.assert_allclose(outputs["gradcam_activation"], activation, rtol=0, atol=1e-4)
    np.testing.assert_allclose(outputs["gradcam_gradient"], gradient, rtol=0, atol=1e-6)


def test_package_exposes_the_exporters_lazily():
    import onnx_gradcam
    import onnx_gradcam.export

    assert onnx_gradcam.export_torch is export_torch
    assert onnx_gradcam.export.export_torch is export_torch
