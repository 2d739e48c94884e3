"""Memory of the full-network reverse pass: the kept bytes recorded at augment time, and the Explainer's
chunking of input-gradient batches under backward_memory_mb.

Oracles: the tensor sizes of the small CNN worked out by hand, and the same explanation computed in
one run (chunking must not change a single value beyond float rounding).
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from onnx_gradcam import Explainer, InputError, augment  # noqa: E402
from onnx_gradcam.graph.augment import GUIDED_GRADIENT, INPUT_GRADIENT, augmented_metadata  # noqa: E402
from tests.test_explainer import CLASSES, SIZE, export, seeded  # noqa: E402

FLOAT = 4
# SmallCNN: Conv(3->8) Relu [8,32,32] -> MaxPool -> Conv(8->16) Relu [16,16,16] -> GAP -> Linear(16->10).
# The reverse pass reads both ReLU outputs (their masks; the first is also the MaxPool input) and the
# logits (the explained class and its score).
KEPT_PER_IMAGE = FLOAT * (8 * SIZE * SIZE + 16 * (SIZE // 2) ** 2 + CLASSES)


@pytest.fixture(scope="module")
def augmented():
    return augment(export(seeded()), input_gradient=True, guided=True)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(4).standard_normal((5, 3, SIZE, SIZE)).astype(np.float32)


class _RecordingSession:
    def __init__(self, session) -> None:
        self.session, self.sizes = session, []

    def run(self, feeds, outputs):
        self.sizes.append(len(feeds["input"]))
        return self.session.run(feeds, outputs)


def _record_gradient_runs(explainer: Explainer, method: str) -> _RecordingSession:
    """Wrap the session that computes the input gradient for method (created by a first call)."""
    explainer.explain(np.zeros((1, 3, SIZE, SIZE), np.float32), method=method, samples=3)
    (key,) = [key for key in explainer._sessions if {INPUT_GRADIENT, GUIDED_GRADIENT} & key]
    recorder = explainer._sessions[key] = _RecordingSession(explainer._sessions[key])
    return recorder


def test_augment_records_the_bytes_the_reverse_pass_keeps_per_image(augmented):
    assert int(augmented_metadata(augmented)["backward_bytes_per_image"]) == KEPT_PER_IMAGE


def test_a_cam_only_model_records_no_backward_bytes():
    assert "backward_bytes_per_image" not in augmented_metadata(augment(export(seeded())))


@pytest.mark.parametrize("method", ["saliency", "guided_backprop", "smoothgrad"])
def test_input_gradient_batches_run_in_even_chunks_within_the_memory_limit(augmented, images, method):
    whole = Explainer(augmented, batch_size=8).explain(images, method=method, samples=3)
    limit_mb = 2.5 * KEPT_PER_IMAGE / 2**20  # room for two images
    explainer = Explainer(augmented, batch_size=8, backward_memory_mb=limit_mb)
    assert explainer.backward_batch_size == 2
    recorder = _record_gradient_runs(explainer, method)
    chunked = explainer.explain(images, method=method, samples=3)
    runs = len(images) * (3 if method == "smoothgrad" else 1)
    assert recorder.sizes == [2] * (runs // 2) + [1]
    np.testing.assert_allclose(chunked.attribution, whole.attribution, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(chunked.classes, whole.classes)


def test_eight_images_under_a_limit_of_six_run_as_two_chunks_of_four(augmented):
    batch = np.random.default_rng(5).standard_normal((8, 3, SIZE, SIZE)).astype(np.float32)
    explainer = Explainer(augmented, batch_size=8, backward_memory_mb=6.5 * KEPT_PER_IMAGE / 2**20)
    recorder = _record_gradient_runs(explainer, "saliency")
    explainer.explain(batch, method="saliency")
    assert recorder.sizes == [4, 4]


def test_cam_methods_keep_the_batch_size(augmented, images):
    explainer = Explainer(augmented, batch_size=8, backward_memory_mb=1.5 * KEPT_PER_IMAGE / 2**20)
    explainer.explain(images[:1])
    (key,) = list(explainer._sessions)
    recorder = explainer._sessions[key] = _RecordingSession(explainer._sessions[key])
    explainer.explain(images)
    assert recorder.sizes == [5]


def test_the_default_limit_leaves_a_small_model_unchunked(augmented):
    assert Explainer(augmented, batch_size=8).backward_batch_size > 1000


@pytest.mark.parametrize("value", [0, -1.0])
def test_a_non_positive_memory_limit_raises_input_error(augmented, value):
    with pytest.raises(InputError, match="backward_memory_mb"):
        Explainer(augmented, backward_memory_mb=value)
