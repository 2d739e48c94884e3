"""Memory of the full-network reverse pass: the kept bytes recorded at augment time, and the Explainer's
chunking of input-gradient batches under backward_memory_mb.

Oracles: the tensor sizes of the small CNN worked out by hand, a ViT's tensors as ONNX Runtime returns
them at two batch sizes, and the same explanation computed in one run (chunking must not change a
single value beyond float rounding).
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


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_vit_records_the_bytes_its_reverse_pass_keeps_as_measured_at_run_time(exporter, tmp_path):
    """Token tensors too: the TorchScript export leaves a token dim to run-time Shape arithmetic."""
    import onnx
    import onnxruntime as ort
    import torch

    from tests.graph.test_transformers import FAMILIES, SIZE as VIT_SIZE, export as export_vit

    torch.manual_seed(0)
    images = torch.randn(2, 3, VIT_SIZE, VIT_SIZE)  # a batch of 1 would make the dynamo export's batch fixed
    augmented = augment(export_vit(FAMILIES["vit"].build().eval(), images, tmp_path / "vit.onnx", exporter),
                        input_gradient=True)
    recorded = int(augmented_metadata(augmented)["backward_bytes_per_image"])
    # Oracle: every forward tensor a reverse-pass node reads, fetched from ONNX Runtime at two batch sizes;
    # a tensor's bytes per image are its growth from 2 to 3 images (0 for shapes and weights).
    reverse = [node for node in augmented.graph.node if node.name.startswith("gradcam/")]
    produced = {out for node in reverse for out in node.output}
    constants = {tensor.name for tensor in augmented.graph.initializer} | {"gradcam_target_class"}
    read = sorted({name for node in reverse for name in node.input
                   if name and name not in produced and name not in constants})
    fetching = onnx.ModelProto()
    fetching.CopyFrom(augmented)
    listed = {value.name for value in fetching.graph.output}
    fetching.graph.output.extend(onnx.ValueInfoProto(name=name) for name in read if name not in listed)
    session = ort.InferenceSession(fetching.SerializeToString(), providers=["CPUExecutionProvider"])
    sizes = []
    for count in (2, 3):
        batch = np.random.default_rng(count).standard_normal((count, 3, VIT_SIZE, VIT_SIZE)).astype(np.float32)
        feeds = {"input": batch, "gradcam_target_class": np.full(count, -1, np.int64)}
        sizes.append(sum(value.nbytes for value in session.run(read, feeds)))
    assert recorded == sizes[1] - sizes[0]
