"""Audit throughput on CPU: images/s of `onnx-gradcam audit` and the share of wall time the runtime is busy.

Cases: the built-in digits CNN on 28x28 PNGs, and a torchvision ResNet-50 (random weights, exported with
torch.onnx.export(dynamo=False), augmented) on 256x256 JPEGs. Each case times the whole audit (decode
workers, inference, records, commits) and, on the same already-decoded tensors, Explainer.explain alone
(the bare runtime). busy_share = time inside Explainer.explain / audit wall time; it should be >= 0.9
where decoding is not the bottleneck (ResNet-50). The metrics case audits digits with `--metrics road`
(ROAD's defaults: 9 percentiles, most and least relevant first, 18 imputed images per input) and, on the
same images, without metrics. Writes benchmarks/results/audit_throughput-cpu.json; a run of some cases
(--cases) replaces those cases' results there and keeps the others.

Usage: python benchmarks/audit_throughput.py [--digits 3000] [--resnet 64] [--metric-images 1000] [--workers 2]
       [--rounds 2] [--cases digits,digits-saved,resnet,digits-road]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import machine_info  # noqa: E402
from onnx_gradcam.audit import AuditConfig, run_audit  # noqa: E402
from onnx_gradcam.audit.config import prepare_model  # noqa: E402
from onnx_gradcam.audit.decode import Decoder  # noqa: E402
from onnx_gradcam.audit.readers import collect_inputs  # noqa: E402
from onnx_gradcam.audit.pipeline import build_explainer  # noqa: E402
from onnx_gradcam.demo import demo_model_path, load_digits  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "audit_throughput-cpu.json"


def write_digit_pngs(folder: Path, count: int) -> None:
    images, _ = load_digits()
    folder.mkdir(parents=True)
    for index in range(count):
        cv2.imwrite(str(folder / f"digit_{index:05d}.png"), images[index % len(images)])


def write_photo_jpegs(folder: Path, count: int, side: int = 256) -> None:
    """Smooth random colour fields: realistic JPEG sizes, nothing that decodes unusually fast."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for index in range(count):
        small = rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
        image = cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)
        image = cv2.add(image, rng.integers(0, 24, image.shape, dtype=np.uint8))
        cv2.imwrite(str(folder / f"photo_{index:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])


def export_resnet50(path: Path) -> Path:
    import torch
    import torchvision

    from onnx_gradcam import augment
    from onnx_gradcam.graph.io import save_model
    from onnx_gradcam.preprocess import Preprocess

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    plain = path.with_name("resnet50_plain.onnx")
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(plain), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17)
    save_model(augment(plain, preprocess=Preprocess.imagenet(size=(224, 224)).to_dict()), path)
    return path


def bare_runtime(config: AuditConfig) -> float:
    """images/s of Explainer.explain alone, in the audit's batches, on tensors decoded beforehand."""
    model = prepare_model(config)
    decoder = Decoder(model.preprocess)
    tensors = np.stack([decoder(item).tensor for item in collect_inputs(config.inputs)])
    explainer = build_explainer(model.model_bytes, config.device, config.methods, config.batch_size, model.preprocess)
    explainer.explain(tensors[:config.batch_size])  # warm-up
    start = time.perf_counter()
    for first in range(0, len(tensors), config.batch_size):
        explainer.explain(tensors[first:first + config.batch_size])
    return len(tensors) / (time.perf_counter() - start)


def bench_metrics_case(name: str, model: Path, inputs: Path, out: Path, method: str, batch: int, workers: int,
                       rounds: int, metrics: tuple[str, ...]) -> dict:
    """Alternate audits with the metrics and without them on the same images (fresh folders); keep each one's best."""
    measured, plain = [], []
    for round_index in range(rounds):
        for summaries, chosen in ((measured, metrics), (plain, ())):
            config = AuditConfig(model=model, inputs=[str(inputs)], out_dir=out / f"round-{round_index}-{len(chosen)}",
                                 method=method, batch_size=batch, workers=workers, metrics=chosen, report=False,
                                 progress=False)
            summaries.append(run_audit(config))
    best = max(measured, key=lambda summary: summary.images_per_second)
    best_plain = max(plain, key=lambda summary: summary.images_per_second)
    result = {
        "case": f"{name} --metrics {','.join(metrics)}", "model": name, "method": method, "metrics": list(metrics),
        "batch": batch, "decode_workers": workers, "images": best.processed, "rounds": rounds,
        "wall_seconds": best.seconds, "images_per_second": round(best.images_per_second, 2),
        "metrics_seconds": best.metrics_seconds, "explain_seconds": best.explain_seconds,
        "metrics_share": round(best.metrics_seconds / best.seconds, 4),
        "without_metrics_images_per_second": round(best_plain.images_per_second, 2),
        "with_vs_without_metrics": round(best.images_per_second / best_plain.images_per_second, 4),
        "mean": best.metrics[method],
        "all_rounds_images_per_second": [round(s.images_per_second, 2) for s in measured],
        "all_rounds_without_metrics_images_per_second": [round(s.images_per_second, 2) for s in plain],
    }
    print(json.dumps(result), flush=True)
    return result


def bench_case(name: str, model: Path, inputs: Path, out: Path, method: str, batch: int, workers: int,
               rounds: int, save: frozenset = frozenset()) -> dict:
    """Alternate full audits (fresh output folders) and bare-runtime passes; keep each one's best round."""
    audits, bares = [], []
    for round_index in range(rounds):
        config = AuditConfig(model=model, inputs=[str(inputs)], out_dir=out / f"round-{round_index}", method=method,
                             batch_size=batch, workers=workers, save=save, report=False, progress=False)
        audits.append(run_audit(config))
        bares.append(bare_runtime(config))
    best = max(audits, key=lambda summary: summary.images_per_second)
    bare = max(bares)
    result = {
        "case": f"{name}{' --save ' + ','.join(sorted(save)) if save else ''}",
        "model": name, "method": method, "batch": batch, "decode_workers": workers, "saved": sorted(save),
        "images": best.processed, "rounds": rounds, "wall_seconds": best.seconds,
        "images_per_second": round(best.images_per_second, 2),
        "busy_share": round(best.busy_share, 4),
        "explain_seconds": best.explain_seconds, "decode_wait_seconds": best.decode_wait_seconds,
        "commit_wait_seconds": best.commit_wait_seconds,
        "bare_runtime_images_per_second": round(bare, 2),
        "audit_vs_bare_runtime": round(best.images_per_second / bare, 4),
        "all_rounds_images_per_second": [round(s.images_per_second, 2) for s in audits],
        "all_rounds_busy_share": [round(s.busy_share, 4) for s in audits],
        "all_rounds_bare_images_per_second": [round(b, 2) for b in bares],
    }
    print(json.dumps(result), flush=True)
    return result


CASES = ("digits", "digits-saved", "resnet", "digits-road")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, default=3000, help="digit PNGs to audit")
    parser.add_argument("--resnet", type=int, default=64, help="JPEGs to audit with ResNet-50 (0: skip)")
    parser.add_argument("--metric-images", type=int, default=1000, help="digit PNGs to audit with --metrics road")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads")
    parser.add_argument("--rounds", type=int, default=2, help="audit/bare-runtime rounds per case (best is kept)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args()
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {', '.join(unknown)}; choose from {', '.join(CASES)}")
    results = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        if {"digits", "digits-saved"} & set(cases):
            write_digit_pngs(work / "digits", args.digits)
        if "digits" in cases:
            results.append(bench_case("digits_cnn", demo_model_path(), work / "digits", work / "out-digits",
                                      "hirescam", 64, args.workers, args.rounds))
        if "digits-saved" in cases:
            results.append(bench_case("digits_cnn", demo_model_path(), work / "digits", work / "out-digits-saved",
                                      "hirescam", 64, args.workers, args.rounds, frozenset({"overlays", "heatmaps"})))
        if "resnet" in cases and args.resnet:
            write_photo_jpegs(work / "photos", args.resnet)
            resnet = export_resnet50(work / "resnet50.onnx")
            results.append(bench_case("resnet50 (random weights)", resnet, work / "photos", work / "out-resnet",
                                      "gradcam", 16, args.workers, args.rounds))
        if "digits-road" in cases:
            write_digit_pngs(work / "digits-road", args.metric_images)
            results.append(bench_metrics_case("digits_cnn", demo_model_path(), work / "digits-road",
                                              work / "out-road", "hirescam", 64, args.workers, args.rounds,
                                              ("road",)))
    machine = dict(machine_info(), load_average_before=[round(x, 2) for x in load_before],
                   load_average_after=[round(x, 2) for x in os.getloadavg()])
    report = merged_report(args.output, results, machine, all_cases=set(cases) == set(CASES))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


def merged_report(path: Path, results: list[dict], machine: dict, all_cases: bool) -> dict:
    """The report with these results; a run of some cases keeps the other cases' results from path, and its
    results carry their own machine details (the report's are those of the last run of every case)."""
    notes = ("busy_share = time inside Explainer.explain and the metrics (ONNX Runtime + heatmap math + metrics) / "
             "audit wall time; bare runtime = Explainer.explain alone on pre-decoded tensors in the same batches; "
             "each case keeps its best round (audits and bare passes alternate), all rounds listed; metrics cases "
             "alternate audits with and without the metrics on the same images")
    report = {"benchmark": "audit_throughput", "device": "cpu", "machine": machine, "results": results,
              "notes": notes}
    if all_cases or not path.exists():
        return report
    previous = json.loads(path.read_text())
    ran = {case_name(result) for result in results}
    kept = [result for result in previous.get("results", []) if case_name(result) not in ran]
    for result in results:
        result["machine"] = machine
    return dict(previous, results=kept + results, notes=notes)


def case_name(result: dict) -> str:
    """A result's case (results written before cases were named: from model and saved outputs)."""
    saved = result.get("saved") or []
    return result.get("case") or f"{result['model']}{' --save ' + ','.join(sorted(saved)) if saved else ''}"


if __name__ == "__main__":
    main()
