"""target="auto" for a score fed by several branches (graph.locate.branch_targets): the map each scale shares.

Small seeded torch modules exported by torch.onnx.export; the oracle is the module's own structure
(which module's output every branch of a scale forks from), and PyTorch autograd for which picked map
a box's score reaches.
"""
from __future__ import annotations

import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from onnx_gradcam import augment
from onnx_gradcam.graph.augment import GRADIENT, SEED, augmented_metadata, numbered

CLASSES = 8  # >= 8 channels: each branch's last conv is a usable map, as in YOLOv8's Detect head
SIZE = 64


def conv(inputs: int, outputs: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride, 1), nn.SiLU())


class TwoScalesTwoBranches(nn.Module):
    """YOLOv8's Detect head in small: two scales, each a box branch and a class branch, [N, 16 + C, A].

    neck="chain": the stride-16 map is made from the stride-8 one (SSD-like). neck="pan": it also takes
    a backbone map past the stride-8 one (YOLOv8's PAN), so the stride-8 map does not dominate it.
    head="joined": each scale's box and class maps are concatenated first (older Ultralytics exports);
    head="apart": boxes and classes are flattened and joined over the scales apart (newer ones).
    """

    def __init__(self, neck: str, head: str = "joined") -> None:
        super().__init__()
        self.neck, self.head = neck, head
        self.stem = nn.Sequential(conv(3, 8, 2), conv(8, 16, 2), conv(16, 16, 2))  # stride 8
        self.deep = conv(16, 16, 2)  # stride 16, used by the PAN neck only
        self.p3 = conv(16, 16)
        self.down = conv(16, 16, 2)
        self.p4 = conv(32 if neck == "pan" else 16, 16)
        self.box = nn.ModuleList(nn.Sequential(conv(16, 16), nn.Conv2d(16, 16, 1)) for _ in range(2))
        self.cls = nn.ModuleList(nn.Sequential(conv(16, 16), nn.Conv2d(16, CLASSES, 1)) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c3 = self.stem(x)
        p3 = self.p3(c3)
        lateral = self.down(p3)
        p4 = self.p4(torch.cat([lateral, self.deep(c3)], 1) if self.neck == "pan" else lateral)
        features = (p3, p4)
        if self.head == "apart":
            boxes = torch.cat([self.box[i](feature).flatten(2) for i, feature in enumerate(features)], 2)
            classes = torch.cat([self.cls[i](feature).flatten(2) for i, feature in enumerate(features)], 2)
            return torch.cat([boxes.softmax(1), classes.sigmoid()], 1)
        heads = [torch.cat([self.box[i](feature), self.cls[i](feature)], 1).flatten(2)
                 for i, feature in enumerate(features)]
        return torch.cat(heads, 2)


class OneBranchPerScale(nn.Module):
    """YOLOv5's head in small: one 1x1 prediction conv per scale, [N, 3 * (5 + C), h*w] joined."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv(3, 8, 2), conv(8, 16, 2), conv(16, 16, 2))
        self.down = conv(16, 16, 2)
        self.heads = nn.ModuleList(nn.Conv2d(16, 3 * (5 + CLASSES), 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.stem(x)
        return torch.cat([head(feature).flatten(2) for head, feature in zip(self.heads, (p3, self.down(p3)))], 2)


class ThinBranches(nn.Module):
    """Two scales whose box and class convs have fewer than 8 channels (never targets): the stride-8 map
    reaches the score past the stride-16 one through them only."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv(3, 8, 2), conv(8, 16, 2), conv(16, 16, 2))
        self.down = conv(16, 16, 2)
        self.box = nn.ModuleList(nn.Conv2d(16, 4, 1) for _ in range(2))
        self.cls = nn.ModuleList(nn.Conv2d(16, 3, 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.stem(x)
        return torch.cat([torch.cat([self.box[i](f), self.cls[i](f)], 1).flatten(2)
                          for i, f in enumerate((p3, self.down(p3)))], 2)


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(3, 8, 2), conv(8, 16, 2), conv(16, 16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


def export(module: nn.Module) -> onnx.ModelProto:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.onnx.export(module.eval(), torch.zeros(1, 3, SIZE, SIZE), buffer, input_names=["images"],
                      output_names=["output0"], dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}},
                      opset_version=17, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def output_of(model: onnx.ModelProto, prefix: str) -> str:
    """The tensor a torch module writes: the output of the last node exported under its name."""
    return [node.output[0] for node in model.graph.node if node.name.startswith(prefix)][-1]


def auto_targets(model: onnx.ModelProto) -> list[str]:
    """The targets augment(model, seed=True) picks for target="auto" (graph.locate.branch_targets)."""
    return json.loads(augmented_metadata(augment(model, seed=True))["targets"])


@pytest.mark.parametrize("neck, head", [("chain", "joined"), ("pan", "joined"), ("pan", "apart")])
def test_two_scales_of_two_branches_get_the_map_each_scale_forks_from(neck, head):
    torch.manual_seed(0)
    plain = export(TwoScalesTwoBranches(neck, head))
    necks = [output_of(plain, "/p3/"), output_of(plain, "/p4/")]

    assert auto_targets(plain) == necks  # not the four branches' last convs


def test_each_box_score_reaches_the_map_of_its_own_scale_as_autograd_says():
    torch.manual_seed(0)
    module = TwoScalesTwoBranches("pan").eval()
    plain = export(module)
    augmented = augment(plain, seed=True)
    images = np.random.default_rng(0).random((1, 3, SIZE, SIZE), np.float32)
    session = ort.InferenceSession(augmented.SerializeToString(), providers=["CPUExecutionProvider"])
    kept = []
    hooks = [layer.register_forward_hook(lambda _module, _inputs, output: kept.append(output))
             for layer in (module.p3, module.p4)]
    try:
        output = module(torch.from_numpy(images))
    finally:
        for hook in hooks:
            hook.remove()
    anchors = output.shape[2]
    for anchor, scale in ((0, 0), (anchors - 1, 1)):  # a stride-8 box and a stride-16 box, class 0
        seed = np.zeros((1, 16 + CLASSES, anchors), np.float32)
        seed[0, 16, anchor] = 1
        gradients = session.run([numbered(GRADIENT, number) for number in range(2)], {"images": images, SEED: seed})
        expected = torch.autograd.grad(output[0, 16, anchor], kept, retain_graph=True, allow_unused=True)
        for number, (gradient, wanted) in enumerate(zip(gradients, expected)):
            wanted = np.zeros_like(gradient) if wanted is None else wanted.numpy()
            np.testing.assert_allclose(gradient, wanted, atol=1e-5)
            assert (np.abs(gradient).max() > 0) == (number <= scale)  # p3 feeds p4: a stride-16 box reaches both


def test_one_prediction_conv_per_scale_gives_way_to_the_map_it_reads():
    plain = export(OneBranchPerScale())  # the score reads the 1x1 convs' outputs value by value
    assert auto_targets(plain) == [output_of(plain, "/stem/"), output_of(plain, "/down/")]


def test_a_scale_scored_through_thin_convs_still_gets_its_map():
    plain = export(ThinBranches())
    assert auto_targets(plain) == [output_of(plain, "/stem/"), output_of(plain, "/down/")]


def test_a_plain_chain_gets_its_deepest_map_alone_as_without_a_seed():
    plain = export(Chain())
    assert auto_targets(plain) == [augmented_metadata(augment(plain))["target"]] == [output_of(plain, "/body/")]
