"""Command line: onnx-gradcam augment | explain | export | audit | demo."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

from ._version import __version__
from .errors import GradCamError, InputError
from .preprocess import parse_preprocess

EXPLAIN_TASKS = ("classify", "detect", "segment")


def _augment(args: argparse.Namespace) -> int:
    from .graph.augment import augment, list_targets
    from .graph.locate import TargetInfo
    from .prepare import input_shape_for, task_score

    score = task_score(args.model, args.score) if args.seed else args.score
    if args.list_targets:
        print(TargetInfo.HEADER)
        for info in list_targets(args.model, score=score):
            print(info)
        return 0
    if args.output is None:
        raise GradCamError("augment needs -o OUT (or --list-targets)")
    preprocess = parse_preprocess(args.preprocess)
    input_shape = None if args.input_size is None else input_shape_for(args.model, *args.input_size)
    model = augment(args.model, target=_targets(args.target), score=score, output=args.output,
                    heatmap=args.heatmap, preprocess=preprocess.to_dict() if preprocess else None,
                    input_gradient=args.input_gradient, guided=args.guided, seed=args.seed,
                    input_shape=input_shape)
    meta = {p.key: p.value for p in model.metadata_props}
    targets = ", ".join(json.loads(meta["gradcam_targets"]))
    print(f"augmented {args.model} -> {args.output}: target {targets} {meta['gradcam_target_shape']}, "
          f"score {meta['gradcam_score']}" + (f" {meta['gradcam_score_shape']}, seed input gradcam_seed"
                                              if args.seed else ""))
    return 0


def _targets(value: str) -> Union[str, list[str]]:
    """--target: one tensor name or 'auto', or a comma list of names (several layers)."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise InputError("--target needs a tensor name, 'auto', or a comma list of tensor names")
    return names[0] if len(names) == 1 else names


def _input_size(value: str) -> tuple[int, int]:
    """--input-size HxW (e.g. 640x640) as (H, W)."""
    height, separator, width = value.lower().partition("x")
    if not separator or not height.strip().isdigit() or not width.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected HxW such as 640x640, got {value!r}")
    return int(height), int(width)


def _collect_images(inputs: Sequence[str]) -> list[Path]:
    from .audit.readers import IMAGE_SUFFIXES

    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(path)
    return paths


def _read_images(paths: Sequence[Path]) -> tuple[list[tuple[Path, object]], int]:
    """(path, RGB image) of each readable path, and how many were skipped (with a message each)."""
    from .render import read_image

    loaded, failures = [], 0
    for path in paths:
        try:
            loaded.append((path, read_image(path)))
        except GradCamError as error:
            print(f"{path}: skipped: {error}", file=sys.stderr)
            failures += 1
    return loaded, failures


def _explain(args: argparse.Namespace) -> int:
    from .explainer import Explainer
    from .labels import load_labels
    from .prepare import prepare_model

    prepared = prepare_model(args.model, args.method, target=_targets(args.target), preprocess=args.preprocess,
                             task=args.task, score=args.score, input_size=args.input_size)
    for note in prepared.notes:
        print(note, file=sys.stderr)
    explainer = Explainer(prepared.model, device=args.device, method=args.method, batch_size=args.batch,
                          preprocess=prepared.preprocess)
    labels = load_labels(args.labels)
    out_dir = Path(args.output)
    paths = _collect_images(args.images)
    write = {"classify": _write_classes, "detect": _write_detections, "segment": _write_segments}[args.task]
    failures = 0
    # Detection and segmentation explain a group of images in shared runs; classification one at a time.
    group = 1 if args.task == "classify" else max(1, args.batch)
    for start in range(0, len(paths), group):
        loaded, skipped = _read_images(paths[start:start + group])
        failures += skipped
        if loaded:
            write(explainer, loaded, labels, out_dir, args)
    return 1 if failures else 0


def _write_classes(explainer, loaded, labels, out_dir: Path, args: argparse.Namespace) -> None:
    """classify: one overlay per image; print the explained class and the top 5."""
    from .labels import label_name
    from .render import overlay, write_image

    for path, image in loaded:
        explanation = explainer.explain([image], target_class=args.target_class, method=args.method, as_numpy=True)
        target = out_dir / f"{path.stem}_{explanation.method}.png"
        write_image(target, overlay(image, explanation.heatmaps[0], alpha=args.alpha))
        explained = int(explanation.classes[0])
        print(f"{path}: explained {label_name(labels, explained)} (score {explanation.scores[0]:.4f}) -> {target}")
        if explanation.logits.ndim != 2:
            continue
        classes, probabilities = explanation.top_k(5)
        for rank, (index, probability) in enumerate(zip(classes[0], probabilities[0]), start=1):
            print(f"  {rank}. {label_name(labels, int(index)):<30} {probability:.4f}")


def _write_detections(explainer, loaded, labels, out_dir: Path, args: argparse.Namespace) -> None:
    """detect: one overlay per box (<stem>_box<k>.png) and one with every box (<stem>_detections.png)."""
    import numpy as np

    from .detect import scale_boxes
    from .labels import label_name
    from .render import draw_detections, overlay, write_image
    from .tasks import explain_detections

    results = explain_detections(explainer, [image for _, image in loaded], conf=args.conf, iou=args.iou,
                                 max_det=args.max_det, method=args.method, as_numpy=True)
    for (path, image), result in zip(loaded, results):
        found = result.detections
        boxes = scale_boxes(found.boxes, result.heatmaps.shape[1:], image.shape[:2])
        names = [label_name(labels, int(label)) for label in found.classes]
        print(f"{path}: {len(found)} boxes")
        for k in range(len(found)):
            target = out_dir / f"{path.stem}_box{k}.png"
            picture = overlay(image, result.heatmaps[k], alpha=args.alpha)
            write_image(target, draw_detections(picture, boxes[k:k + 1], [names[k]], [found.scores[k]]))
            corners = ", ".join(f"{float(value):.0f}" for value in boxes[k])
            print(f"  box {k}: {names[k]} {found.scores[k]:.4f} at ({corners}) -> {target}")
        combined = result.heatmaps.max(axis=0) if len(found) else np.zeros(image.shape[:2], np.float32)
        picture = overlay(image, combined, alpha=args.alpha) if len(found) else image
        write_image(out_dir / f"{path.stem}_detections.png", draw_detections(picture, boxes, names, found.scores))


def _write_segments(explainer, loaded, labels, out_dir: Path, args: argparse.Namespace) -> None:
    """segment: one overlay per (image, class present): <stem>_class<c>.png."""
    from .labels import label_name
    from .render import overlay, write_image
    from .tasks import explain_segmentation

    results = explain_segmentation(explainer, [image for _, image in loaded], method=args.method, as_numpy=True)
    for (path, image), result in zip(loaded, results):
        present = ", ".join(f"{label_name(labels, int(c))} ({mask.mean():.1%})"
                            for c, mask in zip(result.classes, result.masks))
        print(f"{path}: classes present: {present or 'none'}")
        for label, heatmap in zip(result.classes, result.heatmaps):
            target = out_dir / f"{path.stem}_class{int(label)}.png"
            write_image(target, overlay(image, heatmap, alpha=args.alpha))
            print(f"  {label_name(labels, int(label))} -> {target}")


def _demo(args: argparse.Namespace) -> int:
    from .audit.demo import run_demo_audit
    from .demo import write_contact_sheet

    out_dir = Path(args.output)
    metrics = tuple(name.strip() for name in args.metrics.split(",") if name.strip())
    code = run_demo_audit(out_dir, count=args.count, method=args.method, metrics=metrics)
    write_contact_sheet(out_dir, method=args.method)
    print(f"contact sheet: {out_dir / 'contact_sheet.png'}")
    return code


def build_parser() -> argparse.ArgumentParser:
    from .cam.methods import method_names, registered_methods

    parser = argparse.ArgumentParser(prog="onnx-gradcam", description=__doc__)
    parser.add_argument("--version", action="version", version=f"onnx-gradcam {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    augment = commands.add_parser("augment", help="add Grad-CAM outputs to an ONNX model")
    augment.add_argument("model")
    augment.add_argument("-o", "--output")
    augment.add_argument("--target", default="auto",
                         help="tensor name, 'auto' (default), or a comma list of names (several layers)")
    augment.add_argument("--score", default="auto",
                         help="tensor to explain: 'auto' (the logits; with --seed, the only float output), "
                              "'probability', or a tensor name")
    augment.add_argument("--seed", action="store_true",
                         help="differentiate sum(gradcam_seed * score) for any output: boxes, masks, embeddings")
    augment.add_argument("--input-size", type=_input_size, metavar="HxW",
                         help="specialize a model with dynamic height and width to this input size")
    augment.add_argument("--list-targets", action="store_true", help="list candidate target tensors and exit")
    augment.add_argument("--heatmap", action="store_true", help="also compute gradcam_heatmap in the graph")
    augment.add_argument("--preprocess", help="'imagenet', 'none', or a JSON spec/file to record in the model")
    augment.add_argument("--input-gradient", action="store_true",
                         help="also output d score / d image (saliency, smoothgrad, integrated_gradients)")
    augment.add_argument("--guided", action="store_true",
                         help="also output the guided-backprop gradient (guided_backprop, guided_gradcam)")
    augment.set_defaults(func=_augment)

    explain = commands.add_parser("explain", help="write heatmap overlays (classes, boxes or masks) and print them")
    explain.add_argument("model")
    explain.add_argument("images", nargs="+", help="image files or folders")
    explain.add_argument("-o", "--output", required=True, help="output folder")
    explain.add_argument("--task", default="classify", choices=EXPLAIN_TASKS,
                         help="classify: the top (or --class) class; detect: each box after NMS; "
                              "segment: each class present")
    explain.add_argument("--score", default="auto",
                         help="output to explain when MODEL is not augmented yet (detect/segment: default the "
                              "only float output, e.g. the raw head before NMS)")
    explain.add_argument("--conf", type=float, default=0.25, help="detect: box score threshold")
    explain.add_argument("--iou", type=float, default=0.45, help="detect: NMS IoU threshold")
    explain.add_argument("--max-det", type=int, default=300, help="detect: at most this many boxes per image")
    explain.add_argument("--input-size", type=_input_size, metavar="HxW",
                         help="specialize a plain model with dynamic height and width when augmenting it")
    explain.add_argument("--class", dest="target_class", type=int, default=None, help="class to explain (default: top)")
    explain.add_argument("--method", default="gradcam", choices=method_names())
    explain.add_argument("--labels", help="class names: one per line, or JSON")
    explain.add_argument("--device", default="cpu")
    explain.add_argument("--batch", type=int, default=32)
    explain.add_argument("--alpha", type=float, default=0.5)
    explain.add_argument("--target", default="auto",
                         help="target tensor(s), comma separated, when MODEL is not augmented yet")
    explain.add_argument("--preprocess", help="'imagenet', 'none', or a JSON spec/file (default: from the model)")
    explain.set_defaults(func=_explain)

    demo = commands.add_parser("demo", help="audit the built-in digits set: records, overlays, report.html")
    demo.add_argument("-o", "--output", default="gradcam-demo")
    demo.add_argument("--count", type=int, default=None, help="digits to audit (default: all 450)")
    # The demo model is augmented without input gradients: the methods that need no augment flag.
    demo_methods = [entry.name for entry in registered_methods() if not entry.augment_flags]
    demo.add_argument("--method", default="hirescam", choices=demo_methods)
    from .audit.demo import DEMO_METRICS

    demo.add_argument("--metrics", default=",".join(DEMO_METRICS),
                      help=f"faithfulness metrics for the records and report (default {','.join(DEMO_METRICS)}; "
                           "'' for none)")
    demo.set_defaults(func=_demo)

    from .audit.cli import add_audit_parser
    from .export.cli import add_export_parser

    add_audit_parser(commands)
    add_export_parser(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the onnx-gradcam command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GradCamError as error:
        print(f"onnx-gradcam: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
