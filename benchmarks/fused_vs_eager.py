"""GPU heatmaps: the fused kernel (cam.fused) vs eager CuPy ops, eager torch ops and the CPU NumPy+OpenCV reference.

Grad-CAM from activation and gradient tensors already on the GPU to [N,H,W] heatmaps, for ResNet-50
(K=2048, 7x7 -> 224x224), VGG (512, 14x14 -> 224x224) and an MNIST CNN (64, 7x7 -> 28x28), batch 1..512.
Reports milliseconds, speedups and the fused kernel's effective bandwidth (A and G read, heatmaps
written) as a fraction of the GPU's peak. Writes benchmarks/results/fused_vs_eager-<gpu>.json and .png.
Usage: python benchmarks/fused_vs_eager.py [--batches 1 8 64 512] [--dtype float16] [--method gradcam]
"""
from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import machine_info  # noqa: E402
from onnx_gradcam.cam import reference  # noqa: E402

# name: (K, (h, w), (H, W))
MODELS = {"resnet50": (2048, (7, 7), (224, 224)), "vgg16": (512, (14, 14), (224, 224)), "mnist": (64, (7, 7), (28, 28))}
# Spec sheet peaks (bytes/s) for when the device attributes do not give the memory clock.
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12,
                  "A100-SXM4-80GB": 2.039e12, "A100": 1.555e12, "L40S": 0.864e12, "A10": 0.6e12, "L4": 0.3e12}
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[2**i for i in range(10)])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--method", default="gradcam", help="for the fused kernel; the eager baselines are gradcam")
    parser.add_argument("--cpu-max-batch", type=int, default=64, help="largest batch timed on the CPU reference")
    parser.add_argument("--seconds", type=float, default=0.2, help="GPU time per measurement round")
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where the JSON and PNG go")
    args = parser.parse_args()

    cupy = _cupy_with_gpu()
    from onnx_gradcam.cam import fused

    device = _device_info(cupy)
    peak = device["peak_bandwidth_bytes_per_s"]
    print(f"{device['name']}: peak {peak / 1e12 if peak else float('nan'):.2f} TB/s ({device['peak_source']})")
    torch = _torch_cuda()
    rows = []
    for model in args.models:
        channels, low_res, size = MODELS[model]
        for batch in args.batches:
            needed = 4 * batch * channels * low_res[0] * low_res[1] * np.dtype(args.dtype).itemsize
            if needed > 0.8 * cupy.cuda.runtime.memGetInfo()[0]:
                print(f"{model} batch {batch}: skipped, needs about {needed / 2**30:.1f} GiB")
                continue
            rows.append(_bench(cupy, torch, fused, model, batch, args))
            rows[-1]["fused_fraction_of_peak"] = rows[-1]["fused_bandwidth_bytes_per_s"] / peak if peak else None
            _print_row(rows[-1])
            cupy.get_default_memory_pool().free_all_blocks()

    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / f"fused_vs_eager-{re.sub(r'[^A-Za-z0-9]+', '-', device['name']).strip('-').lower()}"
    payload = {"machine": machine_info(), "device": device, "dtype": args.dtype, "method": args.method, "results": rows}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    _plot(rows, device, stem.with_suffix(".png"))
    print(f"wrote {stem}.json and .png")


def _bench(cupy, torch, fused, model: str, batch: int, args) -> dict:
    channels, (height, width), size = MODELS[model]
    rng = np.random.default_rng(0)
    shape = (batch, channels, height, width)
    activation_host = np.maximum(rng.standard_normal(shape, dtype=np.float32), 0).astype(args.dtype)
    gradient_host = (rng.standard_normal(shape, dtype=np.float32) * 0.1).astype(args.dtype)
    activation, gradient = cupy.asarray(activation_host), cupy.asarray(gradient_host)
    out = cupy.empty((batch, *size), cupy.float32)

    runs = {"fused": lambda: fused.heatmaps(activation, gradient, args.method, size, out=out)}
    if args.method == "gradcam":
        runs["cupy_eager"] = lambda: _cupy_eager(cupy, activation, gradient, size)
        if torch is not None:
            torch_activation, torch_gradient = torch.from_dlpack(activation), torch.from_dlpack(gradient)
            runs["torch_eager"] = lambda: _torch_eager(torch, torch_activation, torch_gradient, size)
    row = {"model": model, "batch": batch, "channels": channels, "low_res": [height, width], "size": list(size)}
    row["ms"] = {name: _gpu_ms(cupy, run, args.seconds) for name, run in runs.items()}
    if batch <= args.cpu_max_batch:
        cpu = functools.partial(reference.heatmaps, activation_host, gradient_host, args.method, size)
        row["ms"]["cpu_reference"] = _cpu_ms(cpu)
    row["speedup"] = {name: ms / row["ms"]["fused"] for name, ms in row["ms"].items() if name != "fused"}
    moved = activation.nbytes + gradient.nbytes + out.nbytes
    row["fused_bytes"] = moved
    row["fused_bandwidth_bytes_per_s"] = moved / (row["ms"]["fused"] / 1e3)
    checked = slice(0, min(batch, 8))  # the baselines agree with the kernel (and so with the contract)
    expected = reference.heatmaps(activation_host[checked], gradient_host[checked], args.method, size)
    row["max_abs_diff"] = {"fused": float(np.abs(cupy.asnumpy(out[checked]) - expected).max())}
    for name in runs.keys() - {"fused"}:
        result = runs[name]()
        result = cupy.asarray(result) if name == "cupy_eager" else cupy.from_dlpack(result.contiguous())
        row["max_abs_diff"][name] = float(np.abs(cupy.asnumpy(result[checked]) - expected).max())
    return row


def _gpu_ms(cupy, run, seconds: float, rounds: int = 5) -> float:
    """Median over rounds of the mean time per call, by CUDA events on the legacy default stream (torch's too)."""
    for _ in range(3):
        run()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    run()
    stop.record()
    stop.synchronize()
    repeats = max(1, min(1000, int(seconds * 1e3 / max(cupy.cuda.get_elapsed_time(start, stop), 1e-3))))
    times = []
    for _ in range(rounds):
        start.record()
        for _ in range(repeats):
            run()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / repeats)
    return statistics.median(times)


def _cpu_ms(run, seconds: float = 0.5) -> float:
    times, spent = [], 0.0
    while len(times) < 3 or (spent < seconds and len(times) < 20):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return 1e3 * statistics.median(times)


@functools.lru_cache(maxsize=None)
def _resize_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source index and upper weight of each output index (half-pixel centers, clamped)."""
    source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0)
    lower = np.minimum(source.astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, np.where(lower == upper, 0, source - lower).astype(np.float32)


def _cupy_eager(cupy, activation, gradient, size):
    """The contract as a dozen CuPy calls: weights, matmul, ReLU, min-max, gather-based resize, min-max."""
    batch, channels, height, width = activation.shape
    activation, gradient = activation.astype(cupy.float32, copy=False), gradient.astype(cupy.float32, copy=False)
    weights = gradient.mean(axis=(2, 3))
    cam = cupy.matmul(weights[:, None, :], activation.reshape(batch, channels, height * width))
    cam = _cupy_normalize(cupy, cupy.maximum(cam.reshape(batch, height, width), 0))
    y0, y1, fy = (cupy.asarray(tap) for tap in _resize_taps(height, size[0]))
    x0, x1, fx = (cupy.asarray(tap) for tap in _resize_taps(width, size[1]))
    rows = cam[:, y0] * (1 - fy)[None, :, None] + cam[:, y1] * fy[None, :, None]
    return _cupy_normalize(cupy, rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx)


def _cupy_normalize(cupy, cam):
    low, high = cam.min(axis=(1, 2), keepdims=True), cam.max(axis=(1, 2), keepdims=True)
    return (cam - low) / (high - low + cupy.float32(1e-7))


def _torch_eager(torch, activation, gradient, size):
    """The contract in torch: mean, bmm, ReLU, min-max, F.interpolate(bilinear), min-max."""
    batch, channels, height, width = activation.shape
    activation, gradient = activation.float(), gradient.float()
    weights = gradient.mean(dim=(2, 3))
    cam = torch.bmm(weights[:, None, :], activation.reshape(batch, channels, -1)).reshape(batch, 1, height, width)
    cam = _torch_normalize(torch.relu(cam))
    cam = torch.nn.functional.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return _torch_normalize(cam)[:, 0]


def _torch_normalize(cam):
    low, high = cam.amin(dim=(-2, -1), keepdim=True), cam.amax(dim=(-2, -1), keepdim=True)
    return (cam - low) / (high - low + 1e-7)


def _cupy_with_gpu():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception as error:  # ImportError, or CUDARuntimeError without a driver
        sys.exit(f"fused_vs_eager needs a CUDA GPU and CuPy (pip install cupy-cuda13x): {error}")
    sys.exit("fused_vs_eager needs a CUDA GPU: CuPy sees no device")


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _device_info(cupy) -> dict:
    runtime = cupy.cuda.runtime
    device_id = cupy.cuda.Device().id
    properties = runtime.getDeviceProperties(device_id)
    name = properties["name"].decode() if isinstance(properties["name"], bytes) else str(properties["name"])
    info = {"name": name, "compute_capability": cupy.cuda.Device().compute_capability,
            "multiprocessors": runtime.deviceGetAttribute(runtime.cudaDevAttrMultiProcessorCount, device_id),
            "memory_bytes": int(properties["totalGlobalMem"]),
            "cuda_runtime": runtime.runtimeGetVersion(), "cuda_driver": runtime.driverGetVersion()}
    try:  # kHz * bits * 2 (double data rate) / 8
        clock_khz = runtime.deviceGetAttribute(runtime.cudaDevAttrMemoryClockRate, device_id)
        bus_bits = runtime.deviceGetAttribute(runtime.cudaDevAttrGlobalMemoryBusWidth, device_id)
        peak = clock_khz * 1e3 * bus_bits * 2 / 8
    except Exception:
        peak = 0
    source = "device attributes"
    if not peak:
        peak = next((value for key, value in PEAK_BANDWIDTH.items() if key in name), None)
        source = "spec table" if peak else "unknown: add this GPU to PEAK_BANDWIDTH"
    info.update(peak_bandwidth_bytes_per_s=peak, peak_source=source)
    return info


def _print_row(row: dict) -> None:
    times = "  ".join(f"{name} {ms:8.3f} ms" for name, ms in row["ms"].items())
    bandwidth = f"{row['fused_bandwidth_bytes_per_s'] / 1e9:7.1f} GB/s"
    if row["fused_fraction_of_peak"] is not None:
        bandwidth += f" = {row['fused_fraction_of_peak']:5.1%} of peak"
    print(f"{row['model']:>8} batch {row['batch']:>4}: {times}  fused {bandwidth}")


def _plot(rows: list[dict], device: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(row["model"] for row in rows))
    figure, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 8), squeeze=False)
    for column, model in enumerate(models):
        mine = [row for row in rows if row["model"] == model]
        batches = [row["batch"] for row in mine]
        for name in dict.fromkeys(name for row in mine for name in row["ms"]):
            points = [(row["batch"], row["ms"][name]) for row in mine if name in row["ms"]]
            axes[0, column].plot(*zip(*points), marker="o", label=name)
        axes[0, column].set(xscale="log", yscale="log", title=model, xlabel="batch", ylabel="ms per batch")
        axes[0, column].legend()
        axes[1, column].plot(batches, [row["fused_fraction_of_peak"] or 0 for row in mine], marker="o")
        axes[1, column].set(xscale="log", ylim=(0, 1), xlabel="batch", ylabel="fused: fraction of peak bandwidth")
    figure.suptitle(f"Grad-CAM heatmaps on {device['name']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
