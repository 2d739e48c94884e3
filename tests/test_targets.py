"""Target seeds against torch autograd of pytorch-grad-cam's target functions on tiny seeded models.

A seed must be d objective / d score: fed to the graph as gradcam_seed it makes the returned
gradient d objective / d activation. Each test builds a small head (activation -> score) with the
score shape of that target kind, takes autograd of the peer's objective, and compares both the
gradient at the score (the seed itself) and the gradient at the activation (what Grad-CAM uses).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget

from onnx_gradcam.errors import InputError
from onnx_gradcam.targets import (ANCHORS_OBJ, XYWH_CLASSES, Class, Detection, Segmentation, Similarity,
                                  resolve_layout, seeds_for)

BATCH, CHANNELS, SIDE = 3, 6, 4


class SimilarityToConceptTarget:
    """pytorch-grad-cam's embeddings tutorial target (not shipped in the package): cos(output, concept)."""

    def __init__(self, features: torch.Tensor):
        self.features = features

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.nn.CosineSimilarity(dim=0)(model_output, self.features)


class PreNmsBoxScore:
    """One pre-NMS box's class score, read where each export layout stores it."""

    def __init__(self, anchor: int, category: int, layout: str):
        self.anchor, self.category, self.layout = anchor, category, layout

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        if self.layout == XYWH_CLASSES:
            return model_output[4 + self.category, self.anchor]
        return model_output[self.anchor, 5 + self.category]


def _activation(seed: int = 0) -> torch.Tensor:
    return torch.randn(BATCH, CHANNELS, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def _classifier_head(classes: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(CHANNELS, classes))


class _YoloHead(torch.nn.Module):
    """A 1x1 conv per grid cell -> [N, 4+C, A] (YOLOv8 export) or [N, A, 5+C] (YOLOv5 export)."""

    def __init__(self, classes: int, layout: str):
        super().__init__()
        self.layout = layout
        self.extra = 4 if layout == XYWH_CLASSES else 5
        self.conv = torch.nn.Conv2d(CHANNELS, self.extra + classes, 1)

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        raw = self.conv(activation).flatten(2)  # [N, extra + C, A]
        head = torch.cat([raw[:, :4] * 8, torch.sigmoid(raw[:, 4:])], dim=1)
        return head if self.layout == XYWH_CLASSES else head.transpose(1, 2)


def _autograd(head: torch.nn.Module, activation: torch.Tensor, targets: list) -> tuple[np.ndarray, ...]:
    """(score, d objective/d score, d objective/d activation), objective summed over images as pytorch-grad-cam does."""
    activation = activation.clone().requires_grad_(True)
    score = head(activation)
    objective = sum(target(output) for target, output in zip(targets, score))
    score_gradient, activation_gradient = torch.autograd.grad(objective, [score, activation])
    return score.detach().numpy(), score_gradient.numpy(), activation_gradient.numpy()


def _seeded_activation_gradient(head: torch.nn.Module, activation: torch.Tensor, seed: np.ndarray) -> np.ndarray:
    """d(Σ seed ⊙ score)/d activation: what the augmented model returns for this seed."""
    activation = activation.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(head(activation), activation, grad_outputs=torch.from_numpy(seed))
    return gradient.numpy()


def _assert_seed_matches(head, activation, targets, ours, exact=True):
    score, score_gradient, activation_gradient = _autograd(head, activation, targets)
    seed = seeds_for(ours, score)
    assert seed.dtype == np.float32 and seed.shape == score.shape
    if exact:
        np.testing.assert_array_equal(seed, score_gradient)
    else:
        np.testing.assert_allclose(seed, score_gradient, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_seeded_activation_gradient(head, activation, seed), activation_gradient,
                               rtol=1e-5, atol=1e-7)


def test_class_seed_equals_autograd_of_classifier_output_target():
    torch.manual_seed(1)
    head, activation = _classifier_head(5), _activation()
    _assert_seed_matches(head, activation, [ClassifierOutputTarget(c) for c in (4, 0, 2)],
                         [Class(4), Class(0), Class(2)])
    _assert_seed_matches(head, activation, [ClassifierOutputTarget(3)] * BATCH, Class(3))


def test_class_none_seeds_each_images_top_class_like_pytorch_grad_cam_default():
    torch.manual_seed(2)
    head, activation = _classifier_head(7), _activation(1)
    top = head(activation).argmax(1).tolist()
    _assert_seed_matches(head, activation, [ClassifierOutputTarget(c) for c in top], Class(None))


@pytest.mark.parametrize("layout", [XYWH_CLASSES, ANCHORS_OBJ])
def test_detection_seed_equals_autograd_of_pre_nms_box_score(layout):
    torch.manual_seed(3)
    head, activation = _YoloHead(3, layout), _activation(2)
    boxes = [(5, 2), (0, 0), (15, 1)]  # (anchor, class) per image
    _assert_seed_matches(head, activation, [PreNmsBoxScore(a, c, layout) for a, c in boxes],
                         [Detection(a, c) for a, c in boxes])  # layout="auto" finds it from the shape
    _assert_seed_matches(head, activation, [PreNmsBoxScore(a, c, layout) for a, c in boxes],
                         [Detection(a, c, layout=layout) for a, c in boxes])


@pytest.mark.parametrize("layout", [XYWH_CLASSES, ANCHORS_OBJ])
def test_detection_without_class_seeds_the_boxs_best_class(layout):
    torch.manual_seed(4)
    head, activation = _YoloHead(4, layout), _activation(3)
    score = head(activation).detach()
    classes = score[:, 4:, 7] if layout == XYWH_CLASSES else score[:, 7, 5:]
    targets = [PreNmsBoxScore(7, int(c), layout) for c in classes.argmax(1)]
    _assert_seed_matches(head, activation, targets, Detection(7))


def _segmentation_head(classes: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(CHANNELS, classes, 3, padding=1))


def test_segmentation_seed_equals_autograd_of_semantic_segmentation_target_with_mask():
    torch.manual_seed(5)
    head, activation = _segmentation_head(4), _activation(4)
    mask = np.random.default_rng(0).random((SIDE, SIDE)) > 0.5
    _assert_seed_matches(head, activation, [SemanticSegmentationTarget(2, np.float32(mask))] * BATCH,
                         Segmentation(2, mask))
    weights = np.random.default_rng(1).random((SIDE, SIDE), dtype=np.float32)
    _assert_seed_matches(head, activation, [SemanticSegmentationTarget(1, weights)] * BATCH,
                         Segmentation(1, weights))


def test_segmentation_default_mask_is_the_pixels_predicted_as_the_class():
    torch.manual_seed(6)
    head, activation = _segmentation_head(3), _activation(5)
    predicted = head(activation).argmax(1).numpy()
    assert all(0 < (image == 1).sum() < SIDE * SIDE for image in predicted)  # a real partial mask
    targets = [SemanticSegmentationTarget(1, np.float32(image == 1)) for image in predicted]
    _assert_seed_matches(head, activation, targets, Segmentation(1))


def _embedding_head(dimensions: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(CHANNELS * SIDE * SIDE, dimensions))


def test_cosine_seed_equals_autograd_of_similarity_to_concept_target():
    torch.manual_seed(7)
    head, activation = _embedding_head(10), _activation(6)
    concept = torch.randn(10, generator=torch.Generator().manual_seed(8))
    _assert_seed_matches(head, activation, [SimilarityToConceptTarget(concept)] * BATCH,
                         Similarity(concept.numpy(), kind="cosine"), exact=False)


def test_dot_seed_equals_autograd_of_dot_product_and_is_the_reference():
    torch.manual_seed(9)
    head, activation = _embedding_head(8), _activation(7)
    references = torch.randn(BATCH, 8, generator=torch.Generator().manual_seed(10))
    targets = [lambda output, r=r: output @ r for r in references]
    _assert_seed_matches(head, activation, targets, [Similarity(r.numpy(), kind="dot") for r in references])


def test_similarity_values_equal_torch_cosine_similarity_and_the_dot_product():
    embeddings = torch.randn(BATCH, 8, generator=torch.Generator().manual_seed(11))
    concept = torch.randn(8, generator=torch.Generator().manual_seed(12))
    cosine = Similarity(concept.numpy(), kind="cosine").similarity(embeddings.numpy())
    expected = [SimilarityToConceptTarget(concept)(embedding) for embedding in embeddings]
    np.testing.assert_allclose(cosine, torch.stack(expected).numpy(), rtol=1e-6)
    dot = Similarity(concept.numpy(), kind="dot").similarity(embeddings.numpy())
    np.testing.assert_allclose(dot, (embeddings @ concept).numpy(), rtol=1e-5)


@pytest.mark.parametrize("make, seed_shape, expected", [
    (lambda: Class(None), (5,), 2), (lambda: Segmentation(1), (3, 2, 2), 1),
    (lambda: Detection(2), (7, 10), 1), (lambda: Detection(2, layout=ANCHORS_OBJ), (4, 8), 1),
    (lambda: Similarity(np.ones(3)), (3,), -1)])
def test_explained_class_is_read_from_the_seed(make, seed_shape, expected):
    score = np.zeros(seed_shape, np.float32)
    target = make()
    if isinstance(target, Detection):  # the box's best class: 1
        index = (4 + 1, 2) if target.layout == "auto" else (2, 5 + 1)
        score[index] = 1
    elif isinstance(target, Class):
        score[2] = 1
    assert target.explained_class(target.seed(score)) == expected


def test_seed_accepts_one_image_or_a_batch():
    score = np.random.default_rng(0).standard_normal((BATCH, 5)).astype(np.float32)
    target = Class(None)
    np.testing.assert_array_equal(target.seed(score[1]), target.seed(score)[1])
    assert target.seed(score[1]).shape == (5,)


def test_seeds_for_picks_the_named_output():
    logits = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    outputs = {"boxes": np.zeros((2, 9, 3), np.float32), "logits": logits}
    np.testing.assert_array_equal(seeds_for(Class(3, output="logits"), outputs), np.eye(4, dtype=np.float32)[[3, 3]])
    np.testing.assert_array_equal(seeds_for(Class(1), {"only": logits}), np.eye(4, dtype=np.float32)[[1, 1]])


def test_resolve_layout_reads_fewer_channels_than_anchors():
    assert resolve_layout((1, 84, 8400)) == XYWH_CLASSES
    assert resolve_layout((2, 25200, 85)) == ANCHORS_OBJ
    assert resolve_layout((85, 25200)) == XYWH_CLASSES
    assert resolve_layout((1, 10, 3), XYWH_CLASSES) == XYWH_CLASSES  # a tiny head, layout given


@pytest.mark.parametrize("make, shape, message", [
    (lambda: Class(5), (2, 5), "out of range"),
    (lambda: Class(0), (2, 5, 3, 3), "rank"),
    (lambda: Detection(8400), (1, 84, 8400), "box_index 8400 is out of range"),
    (lambda: Detection(0, 80), (1, 84, 8400), "class_index 80 is out of range"),
    (lambda: Detection(0, 80), (1, 25200, 85), "class_index 80 is out of range"),
    (lambda: Detection(0), (1, 20, 20), "layout="),
    (lambda: Detection(0, layout=ANCHORS_OBJ), (1, 8400, 5), "more than 5 channels"),
    (lambda: Segmentation(3), (1, 3, 8, 8), "out of range"),
    (lambda: Segmentation(0, np.ones((4, 4), bool)), (2, 3, 8, 8), "resize the mask"),
    (lambda: Similarity(np.ones(5)), (2, 6), "has 5 values but the score has 6"),
    (lambda: Similarity(np.ones(5)), (2, 5, 1, 1), "rank"),
])
def test_check_rejects_targets_that_do_not_fit_the_score(make, shape, message):
    target = make()
    with pytest.raises(InputError, match=message):
        target.check(shape)
    with pytest.raises(InputError, match=message):
        target.seed(np.zeros(shape, np.float32))


@pytest.mark.parametrize("make, message", [
    (lambda: Class(-1), "non-negative"),
    (lambda: Class(1.5), "integer"),
    (lambda: Detection(0, layout="yolo"), "unknown detection layout"),
    (lambda: Segmentation(0, np.ones((2, 2, 2))), r"\[H, W\]"),
    (lambda: Similarity(np.ones((2, 3))), r"\[D\] vector"),
    (lambda: Similarity(np.array([1.0, np.nan])), "finite"),
    (lambda: Similarity(np.ones(3), kind="l2"), "'dot' or 'cosine'"),
])
def test_bad_target_arguments_raise_input_error(make, message):
    with pytest.raises(InputError, match=message):
        make()


def test_seeds_for_errors_name_the_way_out():
    logits = np.zeros((2, 4), np.float32)
    with pytest.raises(InputError, match="one target per image"):
        seeds_for([Class(0)] * 3, logits)
    with pytest.raises(InputError, match="add the batch axis"):
        seeds_for(Class(0), logits[0])
    with pytest.raises(InputError, match="output='a'"):
        seeds_for(Class(0), {"a": logits, "b": logits})
    with pytest.raises(InputError, match="no output named 'c'"):
        seeds_for(Class(0, output="c"), {"a": logits})
    with pytest.raises(InputError, match="different outputs"):
        seeds_for([Class(0, output="a"), Class(0, output="b")], {"a": logits, "b": logits})
    with pytest.raises(InputError, match="non-empty list"):
        seeds_for([], logits)
