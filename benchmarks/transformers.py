"""Transformers on CPU: ViT-B/16 and Swin-T at 224x224, batch 8, seeded random weights.

(a) onnx-gradcam Grad-CAM (Explainer, target="auto") vs plain ONNX Runtime inference of the same
    ONNX model (target: explained/plain >= 0.95);
(b) vs pytorch-grad-cam's GradCAM on the torch model at the same layer, with the reshape_transform
    its documentation gives for ViT (class token dropped, tokens folded to 14x14) and Swin
    (channels-last map permuted to NCHW) (target >= 3.5x);
(c) saliency through the whole ViT (augment input_gradient=True) vs Captum's Saliency (target >= 1.5x).
Each model is exported by a plain torch.onnx.export (TorchScript). PyTorch and every ONNX Runtime
session get the same 2 threads. Rounds are interleaved and each speed ratio is the median of the
per-round ratios, since the machine's speed drifts from run to run. The Grad-CAM graph is then run
with ONNX Runtime's profiler beside the plain model: node time by op type, forward and reverse
pass apart, and the reverse pass's costliest nodes.
Writes benchmarks/results/transformers-cpu.json.
Usage: python benchmarks/transformers.py [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
from captum.attr import Saliency
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import onnx_gradcam  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402
from onnx_gradcam.explainer import SUMMARY  # noqa: E402
from onnx_gradcam.graph.augment import ACTIVATION, GRADIENT  # noqa: E402
from onnx_gradcam.graph.prune import keep_outputs  # noqa: E402

BATCH, SIZE = 8, 224


def vit_b_16() -> torch.nn.Module:
    model = torchvision.models.vit_b_16(weights=None)
    # torchvision zero-initializes the head: all logits and gradients would be 0 and every map flat.
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def vit_reshape(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ViT reshape_transform: drop the class token, 196 tokens -> [N, C, 14, 14]."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), 14, 14, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def swin_reshape(tensor: torch.Tensor) -> torch.Tensor:
    """torchvision's Swin maps are [N, H, W, C] already: pytorch-grad-cam needs [N, C, H, W]."""
    return tensor.permute(0, 3, 1, 2)


# name -> (builder, the layer target="auto" should find and pytorch-grad-cam explains, its reshape)
MODELS = {
    "vit_b_16": (vit_b_16, lambda model: model.encoder.layers[-1].ln_1, vit_reshape),
    # The last stage's final norm, before the permute to NCHW and the pooling.
    "swin_t": (lambda: torchvision.models.swin_t(weights=None), lambda model: model.norm, swin_reshape),
}


def session_options(threads: int, profile: str = "") -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # As the Explainer's default options: chunks of two sizes would otherwise each get a memory plan.
    options.enable_mem_pattern = False
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return options


def _timed(function) -> float:
    # ONNX Runtime's and PyTorch's thread pools spin-wait a little after a run: a pause lets the
    # previous one go idle so that it does not steal the next run's cores.
    time.sleep(0.25)
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def interleaved(runs: dict, rounds: int, reference: str, repeats: int = 2) -> dict:
    """Warm up each run, time them in turn for `rounds` rounds; speeds and ratios to `reference`.

    Within a round the runs alternate `repeats` times and each keeps its best time: other work on
    the machine only ever adds time, in bursts shorter than a round.
    """
    for run in runs.values():
        run()
    times = {key: [] for key in runs}
    for _ in range(rounds):
        best = {key: float("inf") for key in runs}
        for _ in range(repeats):
            for key, run in runs.items():
                best[key] = min(best[key], _timed(run))
        for key, seconds in best.items():
            times[key].append(seconds)
    result = {"median_seconds": {key: statistics.median(values) for key, values in times.items()},
              "images_per_second": {key: BATCH / statistics.median(values) for key, values in times.items()},
              "seconds_per_round": times}
    for key in runs:
        if key != reference:
            ratios = [other / ours for ours, other in zip(times[reference], times[key])]
            result[f"{reference}_vs_{key}"] = statistics.median(ratios)
    return result


def layer_output(model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    kept = {}
    hook = layer.register_forward_hook(lambda module, inputs, output: kept.__setitem__("output", output))
    with torch.no_grad():
        model(images)
    hook.remove()
    return kept["output"]


def _profiled(path: Path, feeds: dict, threads: int, prefix: str, runs: int) -> tuple[float, list[dict]]:
    """Wall seconds per run and the profiler's node events of `runs` runs after a warm-up."""
    session = ort.InferenceSession(str(path), session_options(threads, prefix), providers=["CPUExecutionProvider"])
    session.run(None, feeds)  # warm-up, dropped below
    start = time.perf_counter()
    for _ in range(runs):
        session.run(None, feeds)
    wall = (time.perf_counter() - start) / runs
    events = json.loads(Path(session.end_profiling()).read_text())
    first_timed = [e["ts"] for e in events if e.get("name") == "model_run"][1]
    return wall, [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                  and e["ts"] >= first_timed]


def profile_by_op(augmented: onnx.ModelProto, plain_path: Path, array: np.ndarray, threads: int,
                  workdir: Path, runs: int = 3) -> dict:
    """Node time per batch of the Grad-CAM graph (the outputs the Explainer reads) and of the plain model.

    Reverse-pass nodes are those augment named gradcam/...; nodes ONNX Runtime fused out of
    original ones get new names and are counted apart ("fused").
    """
    graph_path = workdir / "profiled.onnx"
    onnx.save(keep_outputs(augmented, [ACTIVATION, GRADIENT] + SUMMARY), graph_path)
    plain_wall, plain_events = _profiled(plain_path, {"input": array}, threads, str(workdir / "plain"), runs)
    feeds = {"input": array, "gradcam_target_class": np.full(len(array), -1, np.int64)}
    wall, events = _profiled(graph_path, feeds, threads, str(workdir / "explained"), runs)
    forward_names = {node.name for node in onnx.load(str(plain_path), load_external_data=False).graph.node}
    totals = {"reverse": collections.Counter(), "forward": collections.Counter(), "fused": collections.Counter()}
    nodes = collections.Counter()
    shapes = {}
    for event in events:
        name, op = event["name"][:-len("_kernel_time")], event["args"]["op_name"]
        part = "reverse" if name.startswith("gradcam/") else "forward" if name in forward_names else "fused"
        totals[part][op] += event["dur"] / 1e6 / runs
        if part == "reverse":
            nodes[name] += event["dur"] / 1e6 / runs
            shapes[name] = (op, [next(iter(s.values())) for s in event["args"].get("input_type_shape", [])])
    parts = {part: sum(ops.values()) for part, ops in totals.items()}
    summary = {"runs": runs, "plain_wall_seconds_per_batch": plain_wall,
               "plain_node_seconds_per_batch": sum(e["dur"] for e in plain_events) / 1e6 / runs,
               "explained_graph_wall_seconds_per_batch": wall, "explained_graph_node_seconds_per_batch": parts,
               # Both passes of one run see the same machine, so the share of node time outside the
               # reverse pass estimates explained/plain (the Explainer adds little beyond this graph)
               # even when other work slows the machine down between rounds.
               "non_reverse_share_of_node_time": 1 - parts["reverse"] / sum(parts.values())}
    for part, ops in totals.items():
        summary[f"top_{part}_ops"] = {op: seconds for op, seconds in ops.most_common(10)}
    summary["top_reverse_nodes"] = [{"node": name, "op": shapes[name][0], "input_shapes": shapes[name][1],
                                     "seconds": seconds} for name, seconds in nodes.most_common(10)]
    return summary


def bench_gradcam(name: str, rounds: int, threads: int, workdir: Path) -> tuple:
    build, layer_of, reshape = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    array = images.numpy()
    plain_path = workdir / f"{name}.onnx"
    torch.onnx.export(model, (images[:1],), str(plain_path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    augmented = onnx_gradcam.augment(plain_path, target="auto")
    target = {p.key: p.value for p in augmented.metadata_props}
    explainer = onnx_gradcam.Explainer(augmented, method="gradcam", batch_size=BATCH,
                                       session_options=session_options(threads))
    plain = ort.InferenceSession(str(plain_path), session_options(threads), providers=["CPUExecutionProvider"])
    layer = layer_of(model)
    peer = GradCAM(model, [layer], reshape_transform=reshape)

    # The auto target is the documented layer: its activation carries that layer's values, and the
    # two libraries' heatmaps agree.
    ours = explainer.explain(array, keep_tensors=True)
    expected = reshape(layer_output(model, layer, images)).numpy()
    classes = [ClassifierOutputTarget(int(c)) for c in ours.classes]
    peer_maps = peer(images, classes)
    check = {"target": target["gradcam_target"], "target_layout": target["gradcam_target_layout"],
             "activation_max_abs_difference": float(np.abs(ours.activation - expected).max()),
             "heatmap_max_abs_difference": float(np.abs(ours.heatmaps - peer_maps).max())}
    assert ours.activation.shape == expected.shape, (ours.activation.shape, expected.shape)
    assert check["activation_max_abs_difference"] <= 1e-3 * np.abs(expected).max(), check

    runs = {"onnx_gradcam": lambda: explainer.explain(array),
            "plain_onnxruntime": lambda: plain.run(None, {"input": array}),
            "pytorch_grad_cam": lambda: peer(images, classes)}
    result = {"model": name, "batch": BATCH, "size": SIZE, "method": "gradcam", "rounds": rounds,
              "auto_target": check, **interleaved(runs, rounds, "onnx_gradcam")}
    # onnx_gradcam_vs_plain_onnxruntime is plain time / explained time: explained throughput / plain.
    result["explained_vs_plain"] = result.pop("onnx_gradcam_vs_plain_onnxruntime")
    result["explained_vs_pytorch_grad_cam"] = result.pop("onnx_gradcam_vs_pytorch_grad_cam")
    result["profile"] = profile_by_op(augmented, plain_path, array, threads, workdir)
    return result, model, images, plain_path


def bench_saliency(model: torch.nn.Module, images: torch.Tensor, plain_path: Path, rounds: int,
                   threads: int) -> dict:
    augmented = onnx_gradcam.augment(plain_path, target="auto", input_gradient=True)
    explainer = onnx_gradcam.Explainer(augmented, batch_size=BATCH, session_options=session_options(threads))
    array = images.numpy()
    classes = explainer.explain(array, method="gradcam").classes
    target = torch.as_tensor(classes)
    saliency = Saliency(model)
    ours = explainer.explain(array, target_class=classes, method="saliency")
    theirs = saliency.attribute(images, target=target, abs=True).numpy()
    difference = float(np.abs(np.abs(ours.attribution) - theirs).max() / theirs.max())
    runs = {"onnx_gradcam": lambda: explainer.explain(array, target_class=classes, method="saliency"),
            "captum": lambda: saliency.attribute(images, target=target, abs=True)}
    result = {"model": "vit_b_16", "batch": BATCH, "size": SIZE, "method": "saliency", "rounds": rounds,
              "chunk": explainer.backward_batch_size,
              "backward_bytes_per_image": int(explainer.metadata.get("backward_bytes_per_image", 0)),
              "relative_difference_to_captum": difference, **interleaved(runs, rounds, "onnx_gradcam")}
    result["speedup_vs_captum"] = result.pop("onnx_gradcam_vs_captum")
    if explainer.backward_batch_size is None:
        result["chunk_note"] = ("augment recorded no backward_bytes_per_image (a kept forward tensor has a size "
                                "unknown at augment time): the Explainer runs the whole batch at once")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "transformers-cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        for name in MODELS:
            result, model, images, plain_path = bench_gradcam(name, args.rounds, args.threads, workdir)
            results.append(result)
            print(f"{name} gradcam: explained/plain {result['explained_vs_plain']:.3f}, "
                  f"vs pytorch-grad-cam {result['explained_vs_pytorch_grad_cam']:.2f}x "
                  f"({', '.join(f'{k} {v:.2f} img/s' for k, v in result['images_per_second'].items())}); "
                  f"target {result['auto_target']['target']}", flush=True)
            if name == "vit_b_16":
                saliency = bench_saliency(model, images, plain_path, args.rounds, args.threads)
                results.append(saliency)
                print(f"vit_b_16 saliency: {saliency['speedup_vs_captum']:.2f}x Captum "
                      f"({', '.join(f'{k} {v:.2f} img/s' for k, v in saliency['images_per_second'].items())})",
                      flush=True)
    report = {"machine": machine_info(), "torch_threads": torch.get_num_threads(),
              "onnxruntime_intra_op_threads": args.threads, "onnxruntime_inter_op_threads": 1,
              "threads_note": "PyTorch and every ONNX Runtime session run on the same number of threads",
              "weights": "seeded random (torch.manual_seed(0)); ViT head re-initialized N(0, 0.02)",
              "exporter": "torch.onnx.export, TorchScript (dynamo=False)", "results": results}
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
