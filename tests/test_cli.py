"""The onnx-gradcam command, run in-process through onnx_gradcam.cli.main.

Oracles: the files it writes (read back with OpenCV and onnx), and the Python API (Explainer with the
same preprocessing) for the printed classes.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_gradcam import Explainer, Preprocess, augment
from onnx_gradcam.cli import main

CLASSES = 10
LABELS = [f"label_{name}" for name in ("zero", "one", "two", "three", "four", "five", "six", "seven",
                                       "eight", "nine")]


def classifier(nhwc: bool = False, seed: int = 0) -> onnx.ModelProto:
    """Seeded Conv-Relu-MaxPool-Conv-Relu-GlobalAveragePool-Flatten-Gemm classifier on 32x32 RGB."""
    rng = np.random.default_rng(seed)

    def weight(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    image = "image"
    nodes = []
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["image"], ["image_nchw"], perm=[0, 3, 1, 2]))
        image = "image_nchw"
    nodes += [
        helper.make_node("Conv", [image, "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        helper.make_node("Conv", ["pool1", "w2", "b2"], ["conv2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["relu2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    initializers = [weight("w1", [8, 3, 3, 3], 0.3), weight("b1", [8], 0.1), weight("w2", [16, 8, 3, 3], 0.2),
                    weight("b2", [16], 0.1), weight("fc_w", [CLASSES, 16], 0.5), weight("fc_b", [CLASSES], 0.1)]
    shape = ["batch", 32, 32, 3] if nhwc else ["batch", 3, 32, 32]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    plain = root / "plain.onnx"
    onnx.save(classifier(), str(plain))
    labels = root / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    rng = np.random.default_rng(1)
    images = {"cat": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
              "dog": rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)}
    paths = {}
    for name, rgb in images.items():
        paths[name] = root / "images" / f"{name}.png"
        paths[name].parent.mkdir(exist_ok=True)
        assert cv2.imwrite(str(paths[name]), rgb[..., ::-1])
    return {"root": root, "plain": plain, "labels": labels, "images": images, "paths": paths}


@pytest.fixture(scope="module")
def augmented(files):
    path = files["root"] / "augmented.onnx"
    assert main(["augment", str(files["plain"]), "-o", str(path)]) == 0
    return path


def expected_explanation(model, rgb, target_class=None, method="gradcam"):
    """What the CLI should find: the Python API with the CLI's default (ImageNet) preprocessing."""
    return Explainer(model, preprocess=Preprocess.imagenet(), method=method).explain([rgb], target_class)


def assert_clean_error(capsys, code, *fragments):
    captured = capsys.readouterr()
    assert code == 2, captured
    notes, _, message = captured.err.partition("onnx-gradcam: error: ")
    assert message and (not notes or notes.endswith("\n")), captured.err
    assert "Traceback" not in captured.err + captured.out
    for fragment in fragments:
        assert fragment in captured.err, (fragment, captured.err)


# ---------------------------------------------------------------- augment

def test_augment_writes_an_augmented_model_and_prints_the_target(files, tmp_path, capsys):
    out = tmp_path / "sub" / "model.gradcam.onnx"
    assert main(["augment", str(files["plain"]), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "target relu2" in printed and "score logits" in printed and str(out) in printed
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["gradcam_target"] == "relu2"
    assert {"gradcam_activation", "gradcam_gradient", "gradcam_class", "gradcam_score"} <= {
        o.name for o in model.graph.output}


def test_augment_with_named_target_heatmap_and_preprocess(files, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["augment", str(files["plain"]), "-o", str(out), "--target", "conv2", "--heatmap",
                 "--preprocess", "imagenet"]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["gradcam_target"] == "conv2" and meta["gradcam_heatmap"] == "true"
    assert Preprocess.from_dict(json.loads(meta["gradcam_preprocess"])) == Preprocess.imagenet()


@pytest.mark.parametrize("which", ["plain", "augmented"])
def test_list_targets_lists_candidate_tensors_with_shapes(files, augmented, capsys, which):
    model = files["plain"] if which == "plain" else augmented
    assert main(["augment", str(model), "--list-targets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["tensor", "op"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert {"conv1", "relu1", "pool1", "conv2", "relu2"} <= set(rows)
    assert "gradcam_activation" not in rows
    assert rows["relu2"].split()[1:] == ["Relu", "[batchx16x16x16]", "NCHW", "16x16", "yes"]  # yes: the auto pick
    assert rows["relu1"].split()[1] == "Relu" and "[batchx8x32x32]" in rows["relu1"]


# ---------------------------------------------------------------- explain

def top5_blocks(printed: str) -> dict[str, list[str]]:
    """Map each image path printed by explain to its five ranked lines."""
    blocks, current = {}, None
    for line in printed.splitlines():
        if ": explained " in line:
            current = line.split(": explained ")[0]
            blocks[current] = [line]
        elif current is not None and line.startswith("  "):
            blocks[current].append(line)
    return blocks


def test_explain_writes_one_overlay_per_image_and_prints_top5_with_labels(files, augmented, tmp_path, capsys):
    out = tmp_path / "overlays"
    paths = [files["paths"]["cat"], files["paths"]["dog"]]
    assert main(["explain", str(augmented), *map(str, paths), "--labels", str(files["labels"]),
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["cat_gradcam.png", "dog_gradcam.png"]
    blocks = top5_blocks(printed)
    assert set(blocks) == {str(p) for p in paths}
    for name, path in files["paths"].items():
        rgb = files["images"][name]
        written = cv2.imread(str(out / f"{name}_gradcam.png"))
        assert written is not None and written.shape == rgb.shape  # overlay at the image's own size
        expected = expected_explanation(str(augmented), rgb)
        lines = blocks[str(path)]
        assert len(lines) == 6
        assert f"explained {LABELS[expected.classes[0]]} (score {expected.scores[0]:.4f})" in lines[0]
        classes, probabilities = expected.top_k(5)
        for rank, (line, index, probability) in enumerate(zip(lines[1:], classes[0], probabilities[0]), 1):
            assert line.split() == [f"{rank}.", LABELS[index], f"{probability:.4f}"]


def test_explain_overlay_equals_the_python_api_overlay(files, augmented, tmp_path, capsys):
    from onnx_gradcam import overlay
    out = tmp_path / "overlays"
    assert main(["explain", str(augmented), str(files["paths"]["cat"]), "-o", str(out), "--alpha", "0.3"]) == 0
    rgb = files["images"]["cat"]
    expected = overlay(rgb, expected_explanation(str(augmented), rgb).heatmaps[0], alpha=0.3)
    written = cv2.imread(str(out / "cat_gradcam.png"))[..., ::-1]
    np.testing.assert_array_equal(written, expected)


def test_explain_class_method_and_folder_input(files, augmented, tmp_path, capsys):
    out = tmp_path / "overlays"
    folder = files["paths"]["cat"].parent
    assert main(["explain", str(augmented), str(folder), "--class", "3", "--method", "layercam",
                 "--labels", str(files["labels"]), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["cat_layercam.png", "dog_layercam.png"]
    assert printed.count("explained label_three") == 2


def test_explain_without_labels_prints_class_indices(files, augmented, tmp_path, capsys):
    assert main(["explain", str(augmented), str(files["paths"]["cat"]), "-o", str(tmp_path)]) == 0
    lines = top5_blocks(capsys.readouterr().out)[str(files["paths"]["cat"])]
    assert all(line.split()[1].isdigit() for line in lines[1:])


def test_plain_model_is_augmented_on_the_fly(files, augmented, tmp_path, capsys):
    out_plain, out_augmented = tmp_path / "plain", tmp_path / "augmented"
    image = str(files["paths"]["dog"])
    assert main(["explain", str(files["plain"]), image, "--labels", str(files["labels"]), "-o", str(out_plain)]) == 0
    captured = capsys.readouterr()
    assert "plain model: augmenting it" in captured.err
    assert main(["explain", str(augmented), image, "--labels", str(files["labels"]), "-o", str(out_augmented)]) == 0
    assert capsys.readouterr().out.replace(str(out_augmented), "") == captured.out.replace(str(out_plain), "")
    np.testing.assert_array_equal(cv2.imread(str(out_plain / "dog_gradcam.png")),
                                  cv2.imread(str(out_augmented / "dog_gradcam.png")))


def test_plain_model_is_augmented_for_an_input_gradient_method(files, tmp_path, capsys):
    assert main(["explain", str(files["plain"]), str(files["paths"]["cat"]), "--method", "smoothgrad",
                 "-o", str(tmp_path)]) == 0
    assert "plain model: augmenting it" in capsys.readouterr().err
    assert (tmp_path / "cat_smoothgrad.png").is_file()


def test_input_gradient_method_on_a_cam_only_model_is_a_usage_error(files, augmented, tmp_path, capsys):
    code = main(["explain", str(augmented), str(files["paths"]["cat"]), "--method", "guided_backprop",
                 "-o", str(tmp_path)])
    assert_clean_error(capsys, code, "needs a model augmented with --guided", "onnx-gradcam augment")


def test_explain_with_eigencam_equals_the_python_api(files, augmented, tmp_path, capsys):
    assert main(["explain", str(augmented), str(files["paths"]["cat"]), "--method", "eigencam",
                 "-o", str(tmp_path)]) == 0
    from onnx_gradcam import overlay
    rgb = files["images"]["cat"]
    expected = overlay(rgb, expected_explanation(str(augmented), rgb, method="eigencam").heatmaps[0])
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "cat_eigencam.png"))[..., ::-1], expected)


def test_method_choices_come_from_the_registry():
    from onnx_gradcam.cam.methods import method_names
    from onnx_gradcam.cli import build_parser

    commands = next(action for action in build_parser()._actions if action.dest == "command").choices
    choices = {name: next(a for a in commands[name]._actions if a.dest == "method").choices
               for name in ("explain", "audit", "demo")}
    assert list(choices["explain"]) == list(choices["audit"]) == list(method_names())
    assert "eigencam" in choices["demo"] and "saliency" not in choices["demo"]  # the demo model has no input gradient


def test_plain_model_with_a_named_target(files, tmp_path, capsys):
    assert main(["explain", str(files["plain"]), str(files["paths"]["cat"]), "--target", "conv2",
                 "-o", str(tmp_path)]) == 0
    assert "target conv2" in capsys.readouterr().err
    assert (tmp_path / "cat_gradcam.png").is_file()


def test_explain_uses_the_preprocessing_recorded_in_the_model(files, tmp_path, capsys):
    spec = '{"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}'
    model = tmp_path / "model.onnx"
    assert main(["augment", str(files["plain"]), "-o", str(model), "--preprocess", spec]) == 0
    capsys.readouterr()
    assert main(["explain", str(model), str(files["paths"]["cat"]), "-o", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "ImageNet" not in captured.err
    expected = Explainer(str(model)).explain([files["images"]["cat"]])
    assert f"explained {expected.classes[0]} (score {expected.scores[0]:.4f})" in captured.out


def test_unreadable_image_is_skipped_with_exit_code_1(files, augmented, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "out"
    code = main(["explain", str(augmented), str(broken), str(files["paths"]["cat"]), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{broken}: skipped: cannot read image" in captured.err and "Traceback" not in captured.err
    assert (out / "cat_gradcam.png").is_file() and not (out / "broken_gradcam.png").exists()


def test_explain_nhwc_model_with_default_preprocessing(files, tmp_path, capsys):
    model = tmp_path / "nhwc.onnx"
    onnx.save(classifier(nhwc=True), str(model))
    code = main(["explain", str(model), str(files["paths"]["cat"]), "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "cat_gradcam.png").is_file()


def test_explain_nhwc_model_with_explicit_nhwc_preprocessing(files, tmp_path, capsys):
    model = tmp_path / "nhwc.onnx"
    onnx.save(classifier(nhwc=True), str(model))
    assert main(["explain", str(model), str(files["paths"]["cat"]), "-o", str(tmp_path / "out"),
                 "--preprocess", '{"layout": "NHWC", "mean": [0.5], "std": [0.25]}']) == 0
    assert (tmp_path / "out" / "cat_gradcam.png").is_file()
    # Same weights in NCHW give the same answer.
    nchw = Explainer(augment(classifier()), preprocess=Preprocess(mean=(0.5,), std=(0.25,)))
    expected = nchw.explain([files["images"]["cat"]])
    assert f"explained {expected.classes[0]} (score {expected.scores[0]:.4f})" in capsys.readouterr().out


# ---------------------------------------------------------------- demo

def test_demo_audits_the_digits_with_a_report_and_a_contact_sheet(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--count", "60"]) == 0
    assert "contact_sheet.png" in capsys.readouterr().out
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] > 112 and sheet.shape[1] > 112 * 5
    assert len(list((out / "overlays").glob("digit_*.png"))) == 60
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records"] == summary["ok"] == 60 and summary["accuracy"] >= 0.9
    assert (out / "records.parquet").is_file() and (out / "report.html").stat().st_size > 10_000


# ---------------------------------------------------------------- errors

def test_missing_model_file(tmp_path, capsys):
    code = main(["augment", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "out.onnx")])
    assert_clean_error(capsys, code, "model file not found")


@pytest.mark.parametrize("command", ["augment", "explain"])
def test_corrupt_model_file(files, tmp_path, capsys, command):
    model = tmp_path / "corrupt.onnx"
    model.write_bytes(b"\x08\x07garbage that is not a protobuf" * 20)
    argv = [command, str(model), "-o", str(tmp_path / "out")]
    if command == "explain":
        argv.insert(2, str(files["paths"]["cat"]))
    assert_clean_error(capsys, main(argv), str(model))


def test_unknown_target_lists_candidates(files, tmp_path, capsys):
    code = main(["augment", str(files["plain"]), "-o", str(tmp_path / "out.onnx"), "--target", "relu3"])
    assert_clean_error(capsys, code, "'relu3'", "relu2")
    assert not (tmp_path / "out.onnx").exists()


def test_target_behind_a_conv_is_differentiated(files, tmp_path, capsys):
    code = main(["augment", str(files["plain"]), "-o", str(tmp_path / "out.onnx"), "--target", "relu1"])
    assert code == 0 and "relu1" in capsys.readouterr().out


def test_op_without_rule_names_the_op_and_node(tmp_path, capsys):
    # An op with no differentiation rule between target and score is a clear error, not a wrong answer.
    weight = onnx.numpy_helper.from_array(np.ones((1, 2), np.float32), "weight")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["image"], ["features"], name="relu"),
         onnx.helper.make_node("Det", ["features"], ["determinant"], name="the_det"),
         onnx.helper.make_node("Flatten", ["determinant"], ["flat"], name="flatten"),
         onnx.helper.make_node("MatMul", ["flat", "weight"], ["logits"], name="head")],
        "det", [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 1, 2, 2])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 2])], [weight])
    path = tmp_path / "det.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    code = main(["augment", str(path), "-o", str(tmp_path / "out.onnx"), "--target", "features"])
    assert_clean_error(capsys, code, "'Det'", "'the_det'")


def test_augment_without_output(files, capsys):
    assert_clean_error(capsys, main(["augment", str(files["plain"])]), "-o OUT")


def test_augmenting_an_augmented_model(augmented, tmp_path, capsys):
    code = main(["augment", str(augmented), "-o", str(tmp_path / "twice.onnx")])
    assert_clean_error(capsys, code, "already augmented")


def test_class_out_of_range(files, augmented, tmp_path, capsys):
    code = main(["explain", str(augmented), str(files["paths"]["cat"]), "--class", "10", "-o", str(tmp_path)])
    assert_clean_error(capsys, code, "target_class", "[0, 9]")


def test_unreadable_labels_file(files, augmented, tmp_path, capsys):
    code = main(["explain", str(augmented), str(files["paths"]["cat"]), "--labels", str(tmp_path / "none.txt"),
                 "-o", str(tmp_path)])
    assert_clean_error(capsys, code, "labels file")


def test_bad_preprocess_spec(files, augmented, tmp_path, capsys):
    code = main(["explain", str(augmented), str(files["paths"]["cat"]), "-o", str(tmp_path),
                 "--preprocess", '{"layout": "CHW"}'])
    assert_clean_error(capsys, code, "layout")


def test_bad_device(files, augmented, tmp_path, capsys):
    code = main(["explain", str(augmented), str(files["paths"]["cat"]), "-o", str(tmp_path), "--device", "tpu"])
    assert_clean_error(capsys, code, "device")


@pytest.mark.parametrize("argv", [["explain", "m.onnx", "a.png", "-o", "d", "--method", "no_such_cam"],
                                  ["explain", "m.onnx", "a.png"], ["frobnicate"], []])
def test_usage_errors_exit_2_with_usage_and_no_traceback(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    assert info.value.code == 2
    assert "usage: onnx-gradcam" in captured.err and "Traceback" not in captured.err


# ---------------------------------------------------------------- detectors and segmenters

@pytest.fixture(scope="module")
def task_models(tmp_path_factory):
    """A YOLOv8-style detector (dynamic height and width) and a small segmenter as plain ONNX files, with images."""
    tasks = pytest.importorskip("tests.test_tasks")
    root = tmp_path_factory.mktemp("tasks")
    tasks.torch.manual_seed(0)
    detector, segmenter = tasks.YoloV8Like().eval(), tasks.SmallSegmenter().eval()
    models = {"detector": tasks.export(detector, dynamic_size=True), "segmenter": tasks.export(segmenter)}
    paths = {name: root / f"{name}.onnx" for name in models}
    for name, model in models.items():
        onnx.save(model, str(paths[name]))
    rng = np.random.default_rng(7)
    images = {"street": rng.integers(0, 256, (48, 40, 3), dtype=np.uint8),
              "field": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)}
    (root / "images").mkdir()
    for name, rgb in images.items():
        assert cv2.imwrite(str(root / "images" / f"{name}.png"), rgb[..., ::-1])
    labels = root / "labels.txt"
    labels.write_text("person\ncar\ndog\n")
    layers = {"neck": ("detector", "/neck/"), "down": ("detector", "/down/"), "body": ("segmenter", "/body/")}
    return {"root": root, "paths": paths, "images": images, "labels": labels,
            **{layer: tasks.output_of(models[model], prefix) for layer, (model, prefix) in layers.items()}}


def test_augment_with_seed_score_input_size_and_several_targets(task_models, tmp_path, capsys):
    out = tmp_path / "detector.gradcam.onnx"
    targets = f"{task_models['neck']},{task_models['down']}"
    assert main(["augment", str(task_models["paths"]["detector"]), "-o", str(out), "--seed", "--score", "output0",
                 "--input-size", "64x96", "--target", targets]) == 0
    assert "seed input gradcam_seed" in capsys.readouterr().out
    model = onnx.load(str(out))
    meta = {p.key[len("gradcam_"):]: p.value for p in model.metadata_props if p.key.startswith("gradcam_")}
    assert meta["seed"] == "true" and meta["score"] == "output0"
    assert json.loads(meta["targets"]) == [task_models["neck"], task_models["down"]]
    assert json.loads(meta["input_shape"]) == ["batch", 3, 64, 96]
    assert {"gradcam_activation_1", "gradcam_gradient_1"} <= {o.name for o in model.graph.output}
    assert "gradcam_seed" in {i.name for i in model.graph.input}
    assert "gradcam_target_class" not in {i.name for i in model.graph.input}


@pytest.mark.parametrize("size", ["64", "64x", "x64", "axb"])
def test_input_size_must_be_height_x_width(size, capsys):
    with pytest.raises(SystemExit) as info:
        main(["augment", "m.onnx", "-o", "out.onnx", "--input-size", size])
    assert info.value.code == 2 and "HxW" in capsys.readouterr().err


def test_explain_detect_writes_an_overlay_per_box_and_one_with_every_box(task_models, tmp_path, capsys):
    from onnx_gradcam.detect import scale_boxes
    from onnx_gradcam.prepare import prepare_model
    from onnx_gradcam.render import draw_detections, overlay
    from onnx_gradcam.tasks import explain_detections

    model, images = task_models["paths"]["detector"], task_models["images"]
    code = main(["explain", str(model), str(task_models["root"] / "images"), "-o", str(tmp_path), "--task", "detect",
                 "--target", task_models["neck"], "--input-size", "64x64", "--conf", "0.5", "--max-det", "3",
                 "--labels", str(task_models["labels"])])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "seed" in printed.err and "RGB / 255" in printed.err  # augmented on the fly, YOLO preprocessing
    prepared = prepare_model(model, "gradcam", target=task_models["neck"], task="detect", input_size=(64, 64))
    explainer = Explainer(prepared.model, preprocess=prepared.preprocess)
    for stem, rgb in images.items():
        (result,) = explain_detections(explainer, [rgb], conf=0.5, max_det=3)
        assert len(result) == 3 and f"{stem}.png: 3 boxes" in printed.out
        boxes = scale_boxes(result.detections.boxes, (64, 64), rgb.shape[:2])
        names = [["person", "car", "dog"][c] for c in result.detections.classes]
        for k in range(3):
            assert f"box {k}: {names[k]} {result.detections.scores[k]:.4f}" in printed.out
            written = cv2.imread(str(tmp_path / f"{stem}_box{k}.png"))[..., ::-1]
            expected = draw_detections(overlay(rgb, result.heatmaps[k]), boxes[k:k + 1], names[k:k + 1],
                                       result.detections.scores[k:k + 1])
            np.testing.assert_array_equal(written, expected)
        everything = cv2.imread(str(tmp_path / f"{stem}_detections.png"))[..., ::-1]
        expected = draw_detections(overlay(rgb, result.heatmaps.max(axis=0)), boxes, names, result.detections.scores)
        np.testing.assert_array_equal(everything, expected)
        assert not (tmp_path / f"{stem}_box3.png").exists()


def test_explain_segment_writes_an_overlay_per_class_present(task_models, tmp_path, capsys):
    from onnx_gradcam.prepare import prepare_model
    from onnx_gradcam.render import overlay
    from onnx_gradcam.tasks import explain_segmentation

    model, images = task_models["paths"]["segmenter"], task_models["images"]
    code = main(["explain", str(model), str(task_models["root"] / "images"), "-o", str(tmp_path), "--task", "segment",
                 "--target", task_models["body"], "--labels", str(task_models["labels"])])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    prepared = prepare_model(model, "gradcam", target=task_models["body"], task="segment")
    explainer = Explainer(prepared.model, preprocess=prepared.preprocess)
    written = sorted(path.name for path in tmp_path.iterdir())
    expected_files = []
    for stem, rgb in images.items():
        (result,) = explain_segmentation(explainer, [rgb])
        assert len(result) >= 1
        names = [["person", "car", "dog"][c] for c in result.classes]
        image_path = str(task_models["root"] / "images" / stem)
        line = next(line for line in printed.out.splitlines() if line.startswith(image_path))
        assert line.split("classes present: ")[1].split(", ")[0].startswith(names[0])
        for label, heatmap in zip(result.classes, result.heatmaps):
            path = tmp_path / f"{stem}_class{label}.png"
            np.testing.assert_array_equal(cv2.imread(str(path))[..., ::-1], overlay(rgb, heatmap))
            expected_files.append(path.name)
    assert written == sorted(expected_files)


def test_explain_detect_on_a_classifier_is_a_usage_error(files, augmented, tmp_path, capsys):
    code = main(["explain", str(files["plain"]), str(files["paths"]["cat"]), "-o", str(tmp_path), "--task", "detect"])
    assert_clean_error(capsys, code, "detection head")
    code = main(["explain", str(augmented), str(files["paths"]["cat"]), "-o", str(tmp_path), "--task", "segment"])
    assert_clean_error(capsys, code, "--seed")
