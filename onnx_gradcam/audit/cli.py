"""`onnx-gradcam audit`: the subcommand's arguments, and a standalone entry point (python -m onnx_gradcam.audit.cli)."""
from __future__ import annotations

import argparse

from ..errors import GradCamError

DESCRIPTION = """Explain every image of a dataset with an ONNX classifier, detector or segmenter. Writes
records.parquet (one row per input and method: prediction, explained class, heatmap statistics, faithfulness
metrics, status and reason; with --task detect one per box, with --task segment one per class present),
optional heatmap shards and overlays, and report.html. Rerunning the same command resumes an interrupted run.
Exit code: 0 when every input was explained, 1 when some failed (records.parquet says why), 2 on usage errors."""

METRICS_HELP = """faithfulness metrics to add as record columns, a comma list of {names}: {columns}. Each scores
every heatmap through the same model, from the class probability of perturbed copies of the input: ROAD 18
copies per input and method, deletion and insertion 33, confidence 1, so they cost far more than the
explanation. ROAD imputes without its noise term (noise 0; pytorch-grad-cam's default is 0.01) so that an
image's value never depends on its batch and a resumed audit equals an uninterrupted one (default: none)"""


def add_audit_parser(subparsers) -> None:
    """Add the `audit` subcommand to an argparse subparsers object."""
    from ..cam.methods import method_names
    from ..metrics import METRICS

    audit = subparsers.add_parser("audit", help="explain a whole dataset: records, heatmaps, overlays, HTML report",
                                  description=DESCRIPTION)
    audit.add_argument("model", help="ONNX model (augmented, or plain: then augmented on the fly)")
    audit.add_argument("inputs", nargs="+", metavar="INPUT",
                       help="image files, folders (recursive), globs, .txt file lists, or CSV/Parquet manifests "
                            "with a path column and an optional label column")
    audit.add_argument("-o", "--out", required=True, help="output folder (rerun with the same one to resume)")
    audit.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    audit.add_argument("--batch", type=_positive, default=32, help="images per model run (default 32)")
    audit.add_argument("--method", default="gradcam", choices=CommaChoices(method_names()), metavar="METHOD[,METHOD]",
                       help="explanation method (a plain MODEL is augmented for what it reads); a comma "
                            "list compares methods on the same images: a record per image and method "
                            f"(choose from {', '.join(method_names())}; default gradcam)")
    audit.add_argument("--metrics", type=_metric_list, default=(), metavar="METRIC[,METRIC]",
                       help=METRICS_HELP.format(names=", ".join(METRICS), columns="; ".join(
                           f"{name} -> {metric.column} ({'higher' if metric.higher_is_better else 'lower'} is "
                           "more faithful)" for name, metric in METRICS.items())))
    audit.add_argument("--task", default="classify", choices=("classify", "detect", "segment"),
                       help="classify: a record per input (default); detect: a record per box after NMS (a YOLO "
                            "head [N,4+C,A] or [N,A,5+C]); segment: a record per class present (logits [N,C,H,W])")
    audit.add_argument("--score", default=None, metavar="TENSOR",
                       help="detect/segment: the output to explain when MODEL is plain (default: its only float "
                            "output, e.g. the raw detection head before NMS)")
    audit.add_argument("--conf", type=float, default=None, help="detect: box score threshold (default 0.25)")
    audit.add_argument("--iou", type=float, default=None, help="detect: NMS IoU threshold (default 0.45)")
    audit.add_argument("--max-det", type=_positive, default=None, metavar="N",
                       help="detect: at most N boxes per image (default 300)")
    audit.add_argument("--class", dest="target_class", default=None, metavar="N|LABEL",
                       help="class to explain, as an index or a name from --labels (default: each image's top "
                            "class); detect/segment: only the boxes or masks of this class")
    audit.add_argument("--labels", help="class names: one per line, or JSON")
    audit.add_argument("--save", type=_save_list, default=frozenset(), metavar="overlays,heatmaps",
                       help="also write overlay images and/or heatmap shards (.npz)")
    audit.add_argument("--workers", type=_non_negative, default=0,
                       help="decoding threads, or Ray actors with --ray (default: CPU cores, at most 8)")
    audit.add_argument("--csv", action="store_true", help="also write records.csv")
    audit.add_argument("--ray", action="store_true", help="run on Ray Data (a local instance unless --ray-address)")
    audit.add_argument("--ray-address", help="address of a running Ray cluster (implies --ray)")
    audit.add_argument("--preprocess", help="'imagenet', 'none', or a JSON spec/file (default: from the model)")
    audit.add_argument("--target", default="auto", help="target tensor when MODEL is not augmented yet")
    audit.add_argument("--overlay-format", choices=("jpg", "png"), default="jpg")
    audit.add_argument("--max-pixels", type=_pixels, default=100_000_000,
                       help="refuse larger images with a reason (default 100e6)")
    audit.add_argument("--commit-every", type=_positive, default=256, metavar="N",
                       help="commit records every N images (or 10 s); a killed run redoes at most that much")
    audit.add_argument("--no-report", dest="report", action="store_false", help="skip report.html")
    audit.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    audit.set_defaults(func=run_audit_command)


def run_audit_command(args: argparse.Namespace) -> int:
    """Run the audit the parsed arguments describe; return the exit code (0 all explained, 1 some failed)."""
    try:
        from .config import AuditConfig
        from .runner import run_audit
    except ImportError as error:
        raise GradCamError(f"audit needs pyarrow ({error}): pip install 'onnx-gradcam[audit]'") from error
    config = AuditConfig(
        model=args.model, inputs=args.inputs, out_dir=args.out, device=args.device, batch_size=args.batch,
        method=args.method, metrics=args.metrics, target_class=args.target_class, labels_file=args.labels,
        save=args.save,
        workers=args.workers, csv=args.csv, ray=args.ray or bool(args.ray_address), ray_address=args.ray_address,
        preprocess=args.preprocess, target=args.target, overlay_format=args.overlay_format,
        max_pixels=args.max_pixels, commit_every=args.commit_every, report=args.report, progress=args.progress,
        **_task_options(args))
    _quiet_opencv()
    summary = run_audit(config)
    print(format_summary(summary))
    return summary.exit_code


def _task_options(args: argparse.Namespace) -> dict:
    """--task and the options that go with it; an option given for a task that does not use it is an InputError."""
    from ..errors import InputError

    given = {name: value for name, value in (("score", args.score), ("conf", args.conf), ("iou", args.iou),
                                             ("max_det", args.max_det)) if value is not None}
    used = {"classify": (), "detect": ("score", "conf", "iou", "max_det"), "segment": ("score",)}[args.task]
    unused = [name for name in given if name not in used]
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        raise InputError(f"{flags} {'does' if len(unused) == 1 else 'do'} not apply to --task {args.task}"
                         + ("; add --task detect" if args.task != "detect" else ""))
    return {"task": args.task, **given}


def _quiet_opencv() -> None:
    """Bad inputs are reported in the records; OpenCV's own warnings about them would only flood the terminal."""
    import cv2

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # builds without the logging module
        pass


def format_summary(summary) -> str:
    """Human-readable lines about a finished audit."""
    several = len(summary.methods) > 1
    what = (f"{summary.inputs} inputs with {len(summary.methods)} methods ({summary.records} records)" if several
            else f"{summary.inputs} inputs ({summary.records} records)" if summary.items is not None
            else f"{summary.records} inputs")
    lines = [f"audited {what} into {summary.out_dir}: {summary.ok} explained, "
             f"{summary.errors} failed, {summary.duplicates} duplicate content"]
    if summary.items is not None:
        found = "boxes" if summary.task == "detect" else "classes present"
        none = "without a box" if summary.task == "detect" else "with no class asked for"
        lines.append(f"{summary.items} {found} explained; {summary.empty} inputs{' x methods' if several else ''} "
                     f"{none}")
    if summary.accuracy is not None:
        lines.append(f"accuracy {summary.accuracy:.2%} on {summary.labelled} labelled images")
    for method, means in summary.metrics.items():
        shown = ", ".join(f"{column} {'n/a' if mean is None else f'{mean:.4f}'}" for column, mean in means.items())
        lines.append(f"mean faithfulness{f' of {method}' if several else ''}: {shown}")
    if summary.images_per_second:
        busy = f", runtime busy {summary.busy_share:.0%}" if summary.busy_share is not None else ""
        lines.append(f"this run: {summary.processed} images in {summary.seconds:.1f} s "
                     f"({summary.images_per_second:.1f} images/s{busy}); {summary.resumed} were already done")
    if summary.report:
        lines.append(f"report: {summary.report}")
    if summary.errors:
        lines.append("some inputs failed: their status and reason are in records.parquet")
    return "\n".join(lines)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return number


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return number


def _pixels(value: str) -> int:
    try:
        number = int(float(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a pixel count such as 100e6, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return number


class CommaChoices(tuple):
    """argparse choices that list as the names and accept one name or a comma list of them."""

    def __contains__(self, value: object) -> bool:
        parts = [part.strip() for part in str(value).split(",")]
        return all(tuple.__contains__(self, part) for part in parts if part) and any(parts)


def _metric_list(value: str) -> tuple[str, ...]:
    from ..errors import InputError
    from .measure import parse_metrics

    try:
        return parse_metrics(value)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _save_list(value: str) -> frozenset:
    from .config import SAVE_CHOICES

    chosen = frozenset(part.strip() for part in value.split(",") if part.strip())
    unknown = chosen - set(SAVE_CHOICES)
    if unknown:
        raise argparse.ArgumentTypeError(f"choose from {','.join(SAVE_CHOICES)}; got {','.join(sorted(unknown))}")
    return chosen
