"""Command line: onnx-gradcam augment | explain | export | demo."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ._version import __version__
from .errors import GradCamError
from .preprocess import parse_preprocess



def _augment(args: argparse.Namespace) -> int:
    from .graph.augment import augment, list_targets

    if args.list_targets:
        print(f"{'tensor':<48} {'op':<20} shape layout")
        for info in list_targets(args.model):
            print(info)
        return 0
    if args.output is None:
        raise GradCamError("augment needs -o OUT (or --list-targets)")
    preprocess = parse_preprocess(args.preprocess)
    model = augment(args.model, target=args.target, output=args.output, heatmap=args.heatmap,
                    preprocess=preprocess.to_dict() if preprocess else None,
                    input_gradient=args.input_gradient, guided=args.guided)
    meta = {p.key: p.value for p in model.metadata_props}
    print(f"augmented {args.model} -> {args.output}: target {meta['gradcam_target']} "
          f"{meta['gradcam_target_shape']}, score {meta['gradcam_score']}")
    return 0


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


def _explain(args: argparse.Namespace) -> int:
    import numpy as np

    from .explainer import Explainer
    from .labels import label_name, load_labels
    from .prepare import prepare_model
    from .render import overlay, read_image, write_image

    prepared = prepare_model(args.model, args.method, target=args.target, preprocess=args.preprocess)
    for note in prepared.notes:
        print(note, file=sys.stderr)
    explainer = Explainer(prepared.model, device=args.device, method=args.method, batch_size=args.batch,
                          preprocess=prepared.preprocess)
    labels = load_labels(args.labels)
    out_dir = Path(args.output)
    failures = 0
    for path in _collect_images(args.images):
        try:
            image = read_image(path)
        except GradCamError as error:
            print(f"{path}: skipped: {error}", file=sys.stderr)
            failures += 1
            continue
        explanation = explainer.explain([image], target_class=args.target_class, method=args.method)
        heatmap = explanation.heatmaps[0]
        heatmap = heatmap.get() if hasattr(heatmap, "get") and not isinstance(heatmap, np.ndarray) else heatmap
        target = out_dir / f"{path.stem}_{explanation.method}.png"
        write_image(target, overlay(image, heatmap, alpha=args.alpha))
        classes, probabilities = explanation.top_k(5)
        explained = int(explanation.classes[0])
        print(f"{path}: explained {label_name(labels, explained)} (score {explanation.scores[0]:.4f}) -> {target}")
        for rank, (index, probability) in enumerate(zip(classes[0], probabilities[0]), start=1):
            print(f"  {rank}. {label_name(labels, int(index)):<30} {probability:.4f}")
    return 1 if failures else 0


def _demo(args: argparse.Namespace) -> int:
    from .audit.demo import run_demo_audit
    from .demo import write_contact_sheet

    out_dir = Path(args.output)
    code = run_demo_audit(out_dir, count=args.count, method=args.method)
    write_contact_sheet(out_dir, method=args.method)
    print(f"contact sheet: {out_dir / 'contact_sheet.png'}")
    return code


def build_parser() -> argparse.ArgumentParser:
    from .cam.methods import method_names, registered_methods

    parser = argparse.ArgumentParser(prog="onnx-gradcam", description=__doc__)
    parser.add_argument("--version", action="version", version=f"onnx-gradcam {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    augment = commands.add_parser("augment", help="add Grad-CAM outputs to an ONNX classifier")
    augment.add_argument("model")
    augment.add_argument("-o", "--output")
    augment.add_argument("--target", default="auto", help="tensor name or 'auto' (default)")
    augment.add_argument("--list-targets", action="store_true", help="list candidate target tensors and exit")
    augment.add_argument("--heatmap", action="store_true", help="also compute gradcam_heatmap in the graph")
    augment.add_argument("--preprocess", help="'imagenet', 'none', or a JSON spec/file to record in the model")
    augment.add_argument("--input-gradient", action="store_true",
                         help="also output d score / d image (saliency, smoothgrad, integrated_gradients)")
    augment.add_argument("--guided", action="store_true",
                         help="also output the guided-backprop gradient (guided_backprop, guided_gradcam)")
    augment.set_defaults(func=_augment)

    explain = commands.add_parser("explain", help="write heatmap overlays and print top-5 classes")
    explain.add_argument("model")
    explain.add_argument("images", nargs="+", help="image files or folders")
    explain.add_argument("-o", "--output", required=True, help="output folder")
    explain.add_argument("--class", dest="target_class", type=int, default=None, help="class to explain (default: top)")
    explain.add_argument("--method", default="gradcam", choices=method_names())
    explain.add_argument("--labels", help="class names: one per line, or JSON")
    explain.add_argument("--device", default="cpu")
    explain.add_argument("--batch", type=int, default=32)
    explain.add_argument("--alpha", type=float, default=0.5)
    explain.add_argument("--target", default="auto", help="target tensor when MODEL is not augmented yet")
    explain.add_argument("--preprocess", help="'imagenet', 'none', or a JSON spec/file (default: from the model)")
    explain.set_defaults(func=_explain)

    demo = commands.add_parser("demo", help="audit the built-in digits set: records, overlays, report.html")
    demo.add_argument("-o", "--output", default="gradcam-demo")
    demo.add_argument("--count", type=int, default=None, help="digits to audit (default: all 450)")
    # The demo model is augmented without input gradients: the methods that need no augment flag.
    demo_methods = [entry.name for entry in registered_methods() if not entry.augment_flags]
    demo.add_argument("--method", default="hirescam", choices=demo_methods)
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
