"""export_keras (Keras 3, torch backend) on the tutorial models, checked against torch autograd.

Oracle: torch.autograd.grad, through the Keras model's own call on the torch backend, of the
chosen class's pre-softmax logit with respect to the target layer's output (NHWC, transposed to
the NCHW the augmented model exposes), on the same seeded random weights.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

if "keras" not in sys.modules:
    os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
if keras.backend.backend() != "torch":
    pytest.skip("Keras was imported with another backend than torch", allow_module_level=True)

from onnx_gradcam.cam.reference import heatmaps  # noqa: E402
from onnx_gradcam.errors import ExportError, TargetNotFoundError  # noqa: E402
from onnx_gradcam.export.keras import export_keras, list_keras_targets  # noqa: E402
from onnx_gradcam.export.torch import DYNAMO, TORCHSCRIPT  # noqa: E402

from export_oracle import assert_matches_autograd, chosen_classes, exporter_noise, run_augmented  # noqa: E402


def mnist_convnet(seed: int = 0) -> "keras.Model":
    """The keras.io 'Simple MNIST convnet' with seeded weights and the layer names of a fresh session."""
    keras.backend.clear_session()  # layer names count from zero again: conv2d_1, max_pooling2d_1
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        keras.layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        keras.layers.MaxPooling2D(pool_size=(2, 2)),
        keras.layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        keras.layers.MaxPooling2D(pool_size=(2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(10, activation="softmax"),
    ])


def autograd_at(model, layer_name: str, images: np.ndarray, target_class) -> tuple:
    """(activation, gradient, logits) at the layer, NCHW, from torch autograd through model's call."""
    head = model.layers[-1]  # Dense(softmax): the logit is its pre-activation
    split = keras.Model(model.inputs, [model.get_layer(layer_name).output, head.input])
    activation, features = split(torch.from_numpy(images), training=False)
    logits = torch.matmul(features, head.kernel.value) + head.bias.value
    classes = torch.from_numpy(chosen_classes(logits.detach().numpy(), target_class))
    gradient, = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), activation)
    to_nchw = (0, 3, 1, 2)
    return (activation.detach().numpy().transpose(to_nchw), gradient.numpy().transpose(to_nchw),
            logits.detach().numpy())


def check_tutorial_model(model, layer_name: str, images: np.ndarray, target_class, **options) -> dict:
    return check_export(export_keras(model, layer_name, heatmap=True, **options), model, layer_name, images,
                        target_class)


def check_export(exported, model, layer_name: str, images: np.ndarray, target_class) -> dict:
    """Run the exported model on images, compare with autograd at the layer; return the outputs."""
    outputs = run_augmented(exported, images, target_class)
    activation, gradient, logits = autograd_at(model, layer_name, images, target_class)
    np.testing.assert_allclose(outputs["gradcam_logits"], logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(outputs["gradcam_class"], chosen_classes(logits, target_class))
    assert_matches_autograd(outputs, activation, gradient, images.shape[1:3])
    assert layer_name not in [o.name for o in exported.graph.output]
    return outputs


@pytest.fixture(scope="module")
def random_mnist_convnet():
    return mnist_convnet()


@pytest.fixture(scope="module")
def digits():
    from sklearn.model_selection import train_test_split

    from tools.build_demo_model import load_digit_images

    images, labels = load_digit_images()
    return train_test_split(images, labels, test_size=0.2, random_state=0, stratify=labels)


def test_mnist_convnet_by_layer_name_gradients_equal_torch_autograd(random_mnist_convnet):
    images = np.random.default_rng(1).random((3, 28, 28, 1), dtype=np.float32)
    pooled = check_tutorial_model(random_mnist_convnet, "max_pooling2d_1", images, [-1, 2, 9])
    assert pooled["gradcam_activation"].shape == (3, 64, 5, 5)  # NCHW from a channels-last model
    last_conv = check_tutorial_model(random_mnist_convnet, "conv2d_1", images, [4, -1, -1])
    assert last_conv["gradcam_gradient"].shape == (3, 64, 11, 11)


@pytest.mark.slow
def test_resnet50_conv5_block3_out_gradients_equal_torch_autograd():
    keras.utils.set_random_seed(0)
    # 64x64 keeps the test fast: conv5 is then 2x2 (weights=None allows any size >= 32).
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    images = np.random.default_rng(1).random((2, 64, 64, 3), dtype=np.float32) * 255
    outputs = check_tutorial_model(model, "conv5_block3_out", images, [-1, 281])
    assert outputs["gradcam_gradient"].shape == (2, 2048, 2, 2)
    assert "predictions" in outputs  # the model's own output keeps its name


@pytest.mark.slow
def test_trained_mnist_convnet_heatmaps_highlight_strokes(digits, tmp_path):
    """One epoch on scikit-learn digits (28x28), saved as .keras, exported by layer name.

    Plain Grad-CAM of this Flatten+Dense head is negative almost everywhere (the mean of a
    position-specific dense weight is a poor channel weight), so its ReLU'd map is mostly zero;
    the gradient-aware methods of the heatmap contract read the same A and dY/dA and do light
    up the strokes. The export itself is checked against autograd above.
    """
    train_images, test_images, train_labels, test_labels = digits
    model = mnist_convnet()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train_images[..., None].astype(np.float32) / 255, train_labels, batch_size=32, epochs=1, verbose=0)
    path = tmp_path / "mnist_convnet.keras"
    model.save(path)

    images, labels = test_images[:50], test_labels[:50]
    stroke = images >= 128
    for layer_name in ("max_pooling2d_1", "conv2d_1"):
        exported = export_keras(str(path), layer_name, preprocess={"mean": [0.0], "std": [1.0]})
        outputs = run_augmented(exported, images[..., None].astype(np.float32) / 255, [-1] * len(images))
        assert (outputs["gradcam_class"] == labels).mean() >= 0.7
        for method in ("gradcam++", "layercam"):
            heat = heatmaps(outputs["gradcam_activation"], outputs["gradcam_gradient"], method, size=(28, 28))
            on_stroke = np.mean([h[s].mean() for h, s in zip(heat, stroke)])
            off_stroke = np.mean([h[~s].mean() for h, s in zip(heat, stroke)])
            assert on_stroke > off_stroke, (layer_name, method, on_stroke, off_stroke)
    preprocess = json.loads({p.key: p.value for p in exported.metadata_props}["gradcam_preprocess"])
    assert preprocess["layout"] == "NHWC" and preprocess["channel_order"] == "GRAY" and preprocess["size"] == [28, 28]


def test_auto_target_is_the_last_4d_layer_and_h5_files_load(random_mnist_convnet, tmp_path):
    assert [info.name for info in list_keras_targets(random_mnist_convnet)] == [
        "conv2d", "max_pooling2d", "conv2d_1", "max_pooling2d_1"]
    path = tmp_path / "mnist_convnet.h5"
    random_mnist_convnet.save(path)
    images = np.random.default_rng(2).random((2, 28, 28, 1), dtype=np.float32)
    auto = run_augmented(export_keras(path), images, [-1, -1])
    named = run_augmented(export_keras(random_mnist_convnet, "max_pooling2d_1"), images, [-1, -1])
    np.testing.assert_allclose(auto["gradcam_gradient"], named["gradcam_gradient"], rtol=0, atol=1e-6)


def test_functional_model_with_unfixed_input_size_needs_input_shape():
    keras.backend.clear_session()
    inputs = keras.Input((None, None, 3), name="image")
    features = keras.layers.Conv2D(4, 3, activation="relu", name="features")(inputs)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(features))
    model = keras.Model(inputs, outputs)
    with pytest.raises(ExportError, match="input_shape"):
        export_keras(model, "features")
    exported = export_keras(model, "features", input_shape=(16, 16, 3))
    assert exported.graph.input[0].name == "image"
    assert run_augmented(exported, np.ones((2, 16, 16, 3)), [-1, 1])["gradcam_gradient"].shape == (2, 4, 14, 14)


def convnext_stem_model(seed: int = 0) -> "keras.Model":
    """ConvNeXt's stem (patchify conv, LayerNormalization over channels), a conv, a linear head.

    Keras' LayerNormalization reads the channel count from ops.shape(x) at run time, which the
    TorchScript exporter traces as a tensor where torch's layer_norm needs a constant
    (SymbolicValueError); the dynamo exporter takes it. The layers keep Keras' default names
    (conv2d_1), which the dynamo exporter also gives the values its ops make.
    """
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 8, 3), name="image")
    stem = keras.layers.Conv2D(8, 2, strides=2)(inputs)
    normalized = keras.layers.LayerNormalization(epsilon=1e-6)(stem)
    features = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(normalized)
    return keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(features)))


def test_model_torchscript_cannot_export_goes_through_dynamo_and_equals_torch_autograd(recwarn, capfd):
    model = convnext_stem_model()
    exported = export_keras(model, "conv2d_1", heatmap=True)
    assert {p.key: p.value for p in exported.metadata_props}["gradcam_exporter"] == DYNAMO
    images = np.random.default_rng(3).random((2, 12, 8, 3), dtype=np.float32)
    outputs = check_export(exported, model, "conv2d_1", images, [-1, 2])
    assert outputs["gradcam_gradient"].shape == (2, 6, 6, 4)
    assert exporter_noise(recwarn, capfd) == []  # the failed TorchScript attempt stayed quiet


class ChannelShuffle(keras.layers.Layer):
    """ShuffleNet's channel shuffle: interleave the channels of `groups` groups, sizes read at run time.

    Reshape to 5-D, Transpose, Reshape back: nothing in the ONNX graph says which axis of the result
    holds the channels, only Keras (channels_last) knows.
    """

    def __init__(self, groups: int, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups

    def call(self, x):
        shape = keras.ops.shape(x)
        grouped = keras.ops.reshape(x, (-1, shape[1], shape[2], self.groups, shape[3] // self.groups))
        return keras.ops.reshape(keras.ops.transpose(grouped, (0, 1, 2, 4, 3)), (-1, shape[1], shape[2], shape[3]))


def shufflenet_unit_model(seed: int = 0) -> "keras.Model":
    """Conv, channel shuffle, pointwise conv, linear head; any image size (input (None, None, 3))."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3), name="image")
    features = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    shuffled = ChannelShuffle(2, name="shuffled")(features)
    pointwise = keras.layers.Conv2D(6, 1, activation="relu", name="pointwise")(shuffled)
    outputs = keras.layers.Dense(4, name="predictions")(keras.layers.GlobalAveragePooling2D()(pointwise))
    return keras.Model(inputs, outputs)


def test_channels_last_target_of_unknown_graph_layout_is_exposed_nchw_equal_to_torch_autograd():
    """The layout comes from Keras (channels_last), not from the graph or the sizes: 10x6 maps of 8 channels."""
    model = shufflenet_unit_model()
    assert tuple(model.get_layer("shuffled").output.shape) == (None, None, None, 8)  # symbolic h, w
    exported = export_keras(model, "shuffled", input_shape=(10, 6, 3), heatmap=True)
    images = np.random.default_rng(4).random((2, 10, 6, 3), dtype=np.float32)
    outputs = check_export(exported, model, "shuffled", images, [1, -1])
    assert outputs["gradcam_activation"].shape == outputs["gradcam_gradient"].shape == (2, 8, 10, 6)
    metadata = {p.key: p.value for p in exported.metadata_props}
    assert metadata["gradcam_target_layout"] == "NHWC" and metadata["gradcam_exporter"] == TORCHSCRIPT


# ---------------------------------------------------------------- clear errors

def test_wrong_layer_name_lists_close_names(random_mnist_convnet):
    with pytest.raises(TargetNotFoundError, match=r"no layer named 'max_pooling2d_2'.*Did you mean.*'max_pooling2d_1'"):
        export_keras(random_mnist_convnet, "max_pooling2d_2")


def test_layers_after_the_spatial_collapse_are_refused(random_mnist_convnet):
    for name in ("flatten", "dense"):
        with pytest.raises(TargetNotFoundError, match=rf"'{name}' outputs .*2-D.*spatial collapse.*'max_pooling2d_1'"):
            export_keras(random_mnist_convnet, name)
    keras.backend.clear_session()
    inputs = keras.Input((8, 8, 3))
    pooled = keras.layers.MaxPooling2D(8, name="pool_to_one")(keras.layers.Conv2D(4, 3, padding="same")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(pooled)))
    with pytest.raises(TargetNotFoundError, match=r"'pool_to_one' outputs \[1, 1, 1, 4\].*single spatial position"):
        export_keras(model, "pool_to_one")


def test_multi_input_models_are_refused():
    keras.backend.clear_session()
    image, extra = keras.Input((8, 8, 3), name="image"), keras.Input((2,), name="extra")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(image))
    model = keras.Model([image, extra], keras.layers.Dense(2)(keras.layers.Concatenate()([features, extra])))
    with pytest.raises(ExportError, match="2 inputs.*one image input"):
        export_keras(model, "conv")


def test_non_image_and_subclassed_models_are_refused():
    keras.backend.clear_session()
    tabular = keras.Sequential([keras.Input((20,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    with pytest.raises(ExportError, match=r"input of shape \[\?, 20\].*image"):
        export_keras(tabular)

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    with pytest.raises(ExportError, match="functional API"):
        export_keras(Subclassed())


def test_layer_inside_a_nested_model_gets_a_clear_error():
    keras.backend.clear_session()
    base = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="inner_conv")], name="base")
    model = keras.Sequential([keras.Input((8, 8, 3)), base, keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(TargetNotFoundError, match="nested model 'base'"):
        export_keras(model, "inner_conv")


def test_missing_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(ExportError, match="not found"):
        export_keras(tmp_path / "missing.keras")
    (tmp_path / "model.onnx").write_bytes(b"not keras")
    with pytest.raises(ExportError, match=".keras"):
        export_keras(tmp_path / "model.onnx")
