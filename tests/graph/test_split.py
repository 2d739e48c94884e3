"""Splitting a seed=True model into a forward part and a reverse part (graph.split).

Oracle: the whole seeded graph run by ONNX Runtime on the repeated images, itself checked against
PyTorch autograd in test_seed.py: the forward part once per image, then the reverse part on rows of
its saved values, must give the same activations, gradients and scores.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torchvision
from torch import nn

from onnx_gradcam import Explainer, augment
from onnx_gradcam import explainer as explainer_module
from onnx_gradcam.graph.augment import ACTIVATION, GRADIENT, LOGITS, SCORE, SEED
from onnx_gradcam.graph.split import split_seeded
from onnx_gradcam.targets import Segmentation, seeds_for
from tests.export_helpers import export
from tests.graph.test_seed import Segmenter, run

OUTPUTS = [ACTIVATION, GRADIENT, SCORE, LOGITS]
FLOATS = (np.float32, np.float16, np.float64)


class Flattening(nn.Module):
    """x.view(x.size(0), -1) before the classifier: Shape -> Gather -> Concat -> Reshape in the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                      nn.Hardswish())
        self.fc = nn.Linear(8 * 8 * 8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        return self.fc(features.view(features.size(0), -1))


def split_run(model: onnx.ModelProto, images: np.ndarray, index: np.ndarray, seeds: np.ndarray) -> dict:
    """The outputs of rows index (images[index] with seeds) from the split: forward once per image."""
    split = split_seeded(model, OUTPUTS)
    forward = dict(zip([*split.forward_outputs, *split.saved],
                       run(split.forward, {"images": images}, [*split.forward_outputs, *split.saved])))
    for name in split.saved:
        assert forward[name].dtype in FLOATS and forward[name].shape[0] == len(images), name
    feeds = {name: forward[name][index] for name in split.saved}
    reverse = dict(zip(split.reverse_outputs, run(split.reverse, {**feeds, SEED: seeds}, list(split.reverse_outputs))))
    return {**{name: forward[name][index] for name in split.forward_outputs}, **reverse}


def whole_run(model: onnx.ModelProto, images: np.ndarray, seeds: np.ndarray) -> dict:
    return dict(zip(OUTPUTS, run(model, {"images": images, SEED: seeds}, OUTPUTS)))


def assert_same(split: dict, whole: dict) -> None:
    for name in OUTPUTS:
        np.testing.assert_allclose(split[name], whole[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.abs(whole[GRADIENT]).max() > 0


def random_images(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 3, height, width)).astype(np.float32)


@pytest.mark.parametrize("size", [(16, 16), (12, 20)])
def test_rows_of_the_split_equal_the_whole_graph_on_repeated_images(size):
    torch.manual_seed(0)
    model = augment(export(Segmenter().eval(), (1, 3, 16, 16), dynamic_size=True), target="auto", seed=True)
    images = random_images(2, *size)
    index = np.array([0, 0, 1, 1, 1])
    seeds = np.random.default_rng(1).normal(size=(len(index), 4, *size)).astype(np.float32)
    assert_same(split_run(model, images, index, seeds), whole_run(model, images[index], seeds))


def test_a_reshape_to_the_batch_size_is_recomputed_in_the_reverse_part():
    torch.manual_seed(0)
    model = augment(export(Flattening().eval(), (1, 3, 16, 16)), target="auto", seed=True)
    split = split_seeded(model, OUTPUTS)
    reshaped = {node.output[0] for node in model.graph.node if node.op_type == "Shape"}
    assert reshaped and not reshaped & set(split.saved)  # a shape holds the batch size: never saved
    images = random_images(3, 16, 16)
    index = np.array([2, 0, 2, 1])
    seeds = np.random.default_rng(1).normal(size=(len(index), 6)).astype(np.float32)
    assert_same(split_run(model, images, index, seeds), whole_run(model, images[index], seeds))


def test_values_derived_for_the_reverse_pass_are_recomputed_there_not_saved():
    torch.manual_seed(0)
    plain = export(Flattening().eval(), (1, 3, 16, 16))
    first_conv = next(node.output[0] for node in plain.graph.node if node.op_type == "Conv")
    model = augment(plain, target=first_conv, seed=True)  # the reverse pass runs back through SiLU
    split = split_seeded(model, OUTPUTS)
    # SiLU's derivative s * (1 + x * (1 - s)) is computed from x and s = sigmoid(x) by nodes augment added:
    # the reverse part computes it again rather than the forward part passing on its intermediate products.
    derived = {out for node in model.graph.node if node.name.startswith("gradcam/") for out in node.output}
    assert not derived & set(split.saved)
    assert "Sigmoid" in {node.op_type for node in split.reverse.graph.node}
    images = random_images(2, 16, 16)
    index = np.array([1, 0, 0])
    seeds = np.random.default_rng(1).normal(size=(len(index), 6)).astype(np.float32)
    assert_same(split_run(model, images, index, seeds), whole_run(model, images[index], seeds))


def test_a_model_with_a_fixed_batch_splits_and_gives_the_whole_graph_outputs():
    torch.manual_seed(0)
    buffer_model = export(Flattening().eval(), (2, 3, 16, 16))
    for value in list(buffer_model.graph.input) + list(buffer_model.graph.output):  # batch of 2, fixed
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = 2
    model = augment(buffer_model, target="auto", seed=True)
    images = random_images(2, 16, 16)
    index = np.array([1, 1])
    seeds = np.random.default_rng(2).normal(size=(2, 6)).astype(np.float32)
    assert_same(split_run(model, images, index, seeds), whole_run(model, images[index], seeds))


def test_a_torchvision_classifier_splits_with_every_saved_value_one_row_per_image():
    torch.manual_seed(0)
    module = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10).eval()
    model = augment(export(module, (1, 3, 64, 64)), target="auto", seed=True)
    images = random_images(2, 64, 64)
    index = np.array([1, 0, 1])
    seeds = np.zeros((3, 10), np.float32)
    seeds[[0, 1, 2], [3, 7, 9]] = 1
    assert_same(split_run(model, images, index, seeds), whole_run(model, images[index], seeds))


def test_a_model_without_a_seed_input_is_refused():
    torch.manual_seed(0)
    model = augment(export(Segmenter().eval(), (1, 3, 16, 16)), target="auto", score="output", seed=False)
    with pytest.raises(ValueError, match="gradcam_seed"):
        split_seeded(model, [ACTIVATION, GRADIENT])


# ---------------------------------------------------------------- the Explainer's split run and its fallbacks

@pytest.fixture(scope="module")
def seeded_segmenter():
    torch.manual_seed(0)
    return augment(export(Segmenter().eval(), (1, 3, 16, 16)), target="auto", seed=True)


def test_explain_with_targets_runs_the_split_and_equals_the_whole_graph(seeded_segmenter):
    images = random_images(3, 16, 16)
    split = Explainer(seeded_segmenter, batch_size=2)
    result = split.explain(images, target=Segmentation(0), keep_tensors=True)
    assert [sessions is not None for sessions in split._splits.values()] == [True]
    whole = Explainer(seeded_segmenter, batch_size=2)
    whole.drop_split()
    expected = whole.explain(images, target=Segmentation(0), keep_tensors=True)
    assert not whole._splits
    assert np.abs(expected.gradient).max() > 0 and (expected.heatmaps.max(axis=(1, 2)) > 0.5).all()
    np.testing.assert_allclose(result.gradient, expected.gradient, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.heatmaps, expected.heatmaps, atol=1e-6)
    np.testing.assert_allclose(result.scores, expected.scores, rtol=1e-5)
    np.testing.assert_array_equal(result.classes, expected.classes)
    np.testing.assert_array_equal(result.logits, expected.logits)


def test_parts_onnx_runtime_refuses_to_load_warn_and_run_whole(seeded_segmenter, monkeypatch):
    images = random_images(2, 16, 16)
    expected = Explainer(seeded_segmenter).explain(images, target=Segmentation(2))

    def refuse(*_args, **_kwargs):
        raise RuntimeError("cannot load")

    monkeypatch.setattr(explainer_module, "SplitSessions", refuse)
    explainer = Explainer(seeded_segmenter)
    with pytest.warns(RuntimeWarning, match="whole graph"):
        result = explainer.explain(images, target=Segmentation(2))
    assert (expected.heatmaps.max(axis=(1, 2)) > 0.5).all()
    np.testing.assert_allclose(result.heatmaps, expected.heatmaps, atol=1e-6)


def test_a_saved_value_without_a_row_per_image_drops_the_split(seeded_segmenter):
    images = random_images(2, 16, 16)
    expected = Explainer(seeded_segmenter).explain(images, target=Segmentation(0))
    explainer = Explainer(seeded_segmenter)
    explainer.explain(images[:1], target=Segmentation(0))  # makes the split
    (sessions,) = explainer._splits.values()
    forward = sessions.forward

    class ExtraRow:  # a forward part whose saved values come with one row too many
        def run(self, feeds, outputs):
            result = forward.run(feeds, outputs)
            return {name: np.concatenate([value, value[:1]]) if name in sessions.split.saved else value
                    for name, value in result.items()}

    sessions.forward = ExtraRow()
    with pytest.warns(RuntimeWarning, match="whole graph"):
        result = explainer.explain(images, target=Segmentation(0))
    assert explainer.split_sessions(["anything"]) is None  # dropped for good
    assert (expected.heatmaps.max(axis=(1, 2)) > 0.5).all()
    np.testing.assert_allclose(result.heatmaps, expected.heatmaps, atol=1e-6)


def test_methods_with_passes_of_their_own_explain_the_found_rows_with_their_seeds():
    torch.manual_seed(0)
    model = augment(export(Segmenter().eval(), (1, 3, 16, 16)), target="auto", seed=True, input_gradient=True)
    explainer = Explainer(model, batch_size=2)
    images = random_images(3, 16, 16)
    logits = explainer.predict(images)
    index = np.array([2, 0, 0, 1])
    seeds = seeds_for([Segmentation(0), Segmentation(0), Segmentation(2), Segmentation(2)], logits[index])

    def find(start, score):
        rows = np.flatnonzero((index >= start) & (index < start + len(score)))
        return index[rows] - start, lambda part: seeds[rows][part]

    found = explainer.explain_found(images, find, method="saliency")
    expected = explainer.explain(images[index], seed=seeds, method="saliency")
    assert np.abs(expected.heatmaps).max() > 0
    np.testing.assert_allclose(found["heatmaps"], expected.heatmaps[np.argsort(index, kind="stable")], atol=1e-6)
    np.testing.assert_allclose(found["scores"], expected.scores[np.argsort(index, kind="stable")], rtol=1e-6)
