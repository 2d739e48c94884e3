"""`onnx-gradcam export torch|keras`: module specs, weights, saved modules, Keras files, errors.

Oracle: the exported file's logits equal the PyTorch module's on the same weights, and the
target recorded in its metadata is the one asked for.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnx_gradcam.errors import ExportError  # noqa: E402
from onnx_gradcam.export.cli import add_export_parser, load_torch_module  # noqa: E402
from tools.build_demo_model import cifar_cnn  # noqa: E402

from export_oracle import run_augmented  # noqa: E402


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="onnx-gradcam")
    add_export_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", *map(str, argv)])
    return args.func(args)


def metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def test_export_torch_factory_with_weights_matches_the_module(tmp_path):
    torch.manual_seed(3)
    trained = cifar_cnn()
    weights = tmp_path / "cifar.pt"
    torch.save({"state_dict": trained.state_dict()}, weights)
    out = tmp_path / "cifar.onnx"
    assert run_cli("torch", "tools.build_demo_model:cifar_cnn", "--target", "conv3", "--weights", weights,
                   "--input-shape", "1,3,32,32", "--preprocess", "imagenet", "-o", out) == 0
    images = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    outputs = run_augmented(onnx.load(out), images, [-1, -1])
    with torch.no_grad():
        expected = trained.eval()(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(outputs["logits"], expected, rtol=1e-4, atol=1e-5)
    meta = metadata(out)
    assert meta["gradcam_target"] == "conv3"
    assert json.loads(meta["gradcam_preprocess"])["size"] == [32, 32]


def test_export_torch_factory_arguments_and_list_targets(tmp_path, capsys):
    out = tmp_path / "resnet.onnx"
    assert run_cli("torch", "torchvision.models:resnet18", "--arg", "num_classes=3", "--target", "layer4",
                   "--input-shape", "1,3,64,64", "--static-batch", "--heatmap", "-o", out) == 0
    model = onnx.load(out)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert "gradcam_heatmap" in [o.name for o in model.graph.output]
    assert run_cli("torch", "tools.build_demo_model:cifar_cnn", "--input-shape", "1,3,32,32", "--list-targets") == 0
    assert "conv3" in capsys.readouterr().out


def test_export_torch_from_saved_modules_and_python_files(tmp_path):
    module = cifar_cnn()
    pickled, scripted = tmp_path / "cifar_module.pt", tmp_path / "cifar_script.pt"
    torch.save(module, pickled)
    torch.jit.save(torch.jit.script(module), scripted)
    source = tmp_path / "net.py"
    source.write_text("from tools.build_demo_model import cifar_cnn\n\ndef build(width=32):\n    return cifar_cnn()\n")
    for spec, target in ((pickled, "conv3"), (scripted, "auto"), (f"{source}:build", "pool2")):
        out = tmp_path / "out.onnx"
        assert run_cli("torch", spec, "--target", target, "--input-shape", "1,3,32,32", "-o", out) == 0
        assert "gradcam_gradient" in [o.name for o in onnx.load(out).graph.output]


def test_export_torch_bad_specs_give_clear_errors(tmp_path):
    state = tmp_path / "weights.pt"
    torch.save(cifar_cnn().state_dict(), state)
    with pytest.raises(ExportError, match="state_dict, not a module.*--weights"):
        load_torch_module(str(state))
    with pytest.raises(ExportError, match="cannot import"):
        load_torch_module("no_such_package_xyz:Net")
    with pytest.raises(ExportError, match="no attribute"):
        load_torch_module("torchvision.models:resnet9000")
    with pytest.raises(ExportError, match="neither a file nor"):
        load_torch_module("resnet50")
    with pytest.raises(ExportError, match="do not fit"):
        run_cli("torch", "torchvision.models:resnet18", "--weights", state, "-o", tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="needs -o"):
        run_cli("torch", "tools.build_demo_model:cifar_cnn", "--input-shape", "1,3,32,32")


def test_export_keras_file(tmp_path, capsys):
    import os
    import sys

    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("Keras was imported with another backend than torch")
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")])
    path, out = tmp_path / "small.keras", tmp_path / "small.onnx"
    model.save(path)
    assert run_cli("keras", path, "--target", "conv", "-o", out) == 0
    assert metadata(out)["gradcam_target"] == "conv"
    assert run_cli("keras", path, "--list-targets") == 0
    printed = capsys.readouterr().out
    assert "by torch.onnx.export(dynamo=False)" in printed and "conv" in printed


def test_main_cli_routes_export_and_reports_errors(tmp_path, capsys):
    cli = pytest.importorskip("onnx_gradcam.cli")
    out = tmp_path / "cifar.onnx"
    assert cli.main(["export", "torch", "tools.build_demo_model:cifar_cnn", "--target", "conv3",
                     "--input-shape", "1,3,32,32", "-o", str(out)]) == 0
    assert out.is_file()
    assert cli.main(["export", "torch", "tools.build_demo_model:cifar_cnn", "--target", "conv9",
                     "--input-shape", "1,3,32,32", "-o", str(out)]) == 2
    assert "Did you mean" in capsys.readouterr().err
