"""The GPU kernel without a GPU: its per-element math (kernels/gradcam_math.cuh, built by g++) against OpenCV, torch
and NumPy; a host loop that mirrors the kernel against the NumPy reference; and kernels/gradcam.cu itself, run on
CPU threads, against both and under ThreadSanitizer."""
from __future__ import annotations

import contextlib
import ctypes
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onnx_gradcam.cam import METHODS, fused, get_method, reference
from onnx_gradcam.cam.fused import kernel_ids
from onnx_gradcam.render import overlay as reference_overlay

KERNELS = Path(__file__).resolve().parents[2] / "kernels"
METHOD_IDS = kernel_ids()  # method name -> the GRADCAM_METHOD_* id its registry entry names

# Mirrors kernels/gradcam.cu with the same math functions and the same summation order: warp
# butterflies for channel sums, `groups` strided double sums per pixel rounded to float per chunk of
# `threads` channels, channel slices over blocks. Only the GPU's fused multiply-adds differ.
HARNESS = r"""
#include <algorithm>
#include <vector>
#include "gradcam_math.cuh"

// Lane-strided partial sums, then the xor butterfly of warp_sum().
template <typename Term>
static float warp_sum_of(int area, Term term) {
    float lanes[32], next[32];
    for (int lane = 0; lane < 32; ++lane) {
        lanes[lane] = 0.0f;
        for (int p = lane; p < area; p += 32) lanes[lane] += term(p);
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        for (int lane = 0; lane < 32; ++lane) next[lane] = lanes[lane] + lanes[lane ^ offset];
        std::copy(next, next + 32, lanes);
    }
    return lanes[0];
}

template <typename T>
static float channel_weight(const T* a, const T* g, int area, int method) {
    if (method == GRADCAM_METHOD_GRADCAM) {
        return gradcam_weight(warp_sum_of(area, [&](int p) { return to_float(g[p]); }), area);
    }
    const float activation_sum = warp_sum_of(area, [&](int p) { return to_float(a[p]); });
    if (method == GRADCAM_METHOD_XGRADCAM) {
        const float product_sum = warp_sum_of(area, [&](int p) { return to_float(a[p]) * to_float(g[p]); });
        return xgradcam_weight(product_sum, activation_sum);
    }
    return warp_sum_of(area, [&](int p) { return gradcampp_term(to_float(g[p]), activation_sum); });
}

// The map of one slice of channels, as one block computes it.
template <typename T>
static void slice_cam(const T* a, const T* g, int first, int end, int area, int method, int threads, float* cam) {
    const int groups = area < threads ? threads / area : 1;
    std::vector<float> partial(groups * area, 0.0f), weights(threads);
    for (int chunk = first; chunk < end; chunk += threads) {
        const int chunk_end = std::min(end, chunk + threads);
        if (has_channel_weights(method)) {
            for (int k = chunk; k < chunk_end; ++k) {
                weights[k - chunk] = channel_weight(a + (size_t)k * area, g + (size_t)k * area, area, method);
            }
        }
        for (int item = 0; item < groups * area; ++item) {
            const int group = item / area, pixel = item - group * area;
            double sum = partial[item];
            for (int k = chunk + group; k < chunk_end; k += groups) {
                const size_t at = (size_t)k * area + pixel;
                const float weight = has_channel_weights(method) ? weights[k - chunk]
                                                                 : element_weight(method, to_float(g[at]));
                sum += (double)weight * to_float(a[at]);
            }
            partial[item] = (float)sum;
        }
    }
    for (int pixel = 0; pixel < area; ++pixel) {
        float sum = partial[pixel];
        for (int group = 1; group < groups; ++group) sum += partial[group * area + pixel];
        cam[pixel] = sum;
    }
}

template <typename T>
static void pipeline(const T* activation, const T* gradient, int batch, int channels, int height, int width,
                     int out_height, int out_width, int method, int threads, int slices, float* heatmap,
                     const unsigned char* image, unsigned char* overlay, float alpha) {
    const int area = height * width, out_area = out_height * out_width;
    const int per_slice = (channels + slices - 1) / slices;
    std::vector<float> slots((size_t)slices * area), cam(area);
    for (int n = 0; n < batch; ++n) {
        const size_t offset = (size_t)n * channels * area;
        for (int s = 0; s < slices; ++s) {
            const int first = s * per_slice, end = std::min(channels, first + per_slice);
            float* slot = &slots[(size_t)s * area];
            slice_cam(activation + offset, gradient + offset, first, end, area, method, threads, slot);
        }
        for (int p = 0; p < area; ++p) {
            float sum = slices > 1 ? 0.0f : slots[p];
            for (int s = 0; slices > 1 && s < slices; ++s) sum += slots[(size_t)s * area + p];
            cam[p] = relu(sum);
        }
        const float cam_low = *std::min_element(cam.begin(), cam.end());
        const float cam_high = *std::max_element(cam.begin(), cam.end());
        for (float& value : cam) value = normalize(value, cam_low, cam_high);

        const float scale_y = resize_scale(height, out_height), scale_x = resize_scale(width, out_width);
        const int rows = extremum_candidate_count(height, out_height);
        const int cols = extremum_candidate_count(width, out_width);
        float low = 3.402823466e38f, high = -3.402823466e38f;
        for (int r = 0; r < rows; ++r) {
            for (int c = 0; c < cols; ++c) {
                const int y = extremum_candidate(r, scale_y, height, out_height);
                const int x = extremum_candidate(c, scale_x, width, out_width);
                const float value = bilinear(cam.data(), width, locate(y, scale_y, height), locate(x, scale_x, width));
                low = fminf(low, value);
                high = fmaxf(high, value);
            }
        }
        for (int q = 0; q < out_area; ++q) {
            const int y = q / out_width, x = q - y * out_width;
            const float value = normalize(bilinear(cam.data(), width, locate(y, scale_y, height),
                                                   locate(x, scale_x, width)), low, high);
            const size_t at = (size_t)n * out_area + q;
            heatmap[at] = value;
            if (overlay) {
                const unsigned char* color = jet_rgb(heat_level(value));
                for (int ch = 0; ch < 3; ++ch) overlay[at * 3 + ch] = blend(image[at * 3 + ch], color[ch], alpha);
            }
        }
    }
}

extern "C" {
void heatmaps_f32(const float* a, const float* g, int n, int k, int h, int w, int H, int W, int method,
                  int threads, int slices, float* out, const unsigned char* image, unsigned char* overlay,
                  float alpha) {
    pipeline(a, g, n, k, h, w, H, W, method, threads, slices, out, image, overlay, alpha);
}
void heatmaps_f16(const half_bits* a, const half_bits* g, int n, int k, int h, int w, int H, int W, int method,
                  int threads, int slices, float* out, const unsigned char* image, unsigned char* overlay,
                  float alpha) {
    pipeline(a, g, n, k, h, w, H, W, method, threads, slices, out, image, overlay, alpha);
}
void halves_to_float(const unsigned short* bits, int count, float* out) {
    for (int i = 0; i < count; ++i) out[i] = to_float(half_bits{bits[i]});
}
void resize(const float* map, int h, int w, int H, int W, float* out) {
    const float scale_y = resize_scale(h, H), scale_x = resize_scale(w, W);
    for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x) out[y * W + x] = bilinear(map, w, locate(y, scale_y, h), locate(x, scale_x, w));
}
void candidate_indices(int in_size, int out_size, int* out) {
    const float scale = resize_scale(in_size, out_size);
    for (int c = 0; c < extremum_candidate_count(in_size, out_size); ++c)
        out[c] = extremum_candidate(c, scale, in_size, out_size);
}
void normalize_all(const float* values, int count, float low, float high, float* out) {
    for (int i = 0; i < count; ++i) out[i] = normalize(values[i], low, high);
}
void heat_levels(const float* heatmap, int count, unsigned char* out) {
    for (int i = 0; i < count; ++i) out[i] = heat_level(heatmap[i]);
}
void jet_all(unsigned char* rgb) {
    for (int level = 0; level < 256; ++level)
        for (int ch = 0; ch < 3; ++ch) rgb[level * 3 + ch] = jet_rgb((unsigned char)level)[ch];
}
void blend_all(const unsigned char* image, const unsigned char* color, int count, float alpha, unsigned char* out) {
    for (int i = 0; i < count; ++i) out[i] = blend(image[i], color[i], alpha);
}
}
"""

# Runs kernels/gradcam.cu itself on the CPU: one std::thread per CUDA thread, std::barrier for
# __syncthreads and for the warp shuffles, blocks one after another (slices in reverse, so that the
# block that finishes an image is not the one holding the last slice).
EMULATION_PRELUDE = r"""
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>
using std::max;
using std::min;

struct emulated_dim3 { unsigned x = 0, y = 0, z = 0; };
static thread_local emulated_dim3 threadIdx, blockIdx;
static emulated_dim3 blockDim, gridDim;
static float emulated_shared[1 << 16];
struct emulated_warp { std::barrier<> sync{32}; float lanes[32]; };
static std::barrier<>* block_sync;
static emulated_warp* warps;

static void __syncthreads() { block_sync->arrive_and_wait(); }
static void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
static int atomicAdd(int* address, int value) { return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST); }
static float __ldcg(const float* address) { return *address; }
static float __shfl_xor_sync(unsigned, float value, int offset) {
    emulated_warp& warp = warps[threadIdx.x / 32];
    warp.lanes[threadIdx.x % 32] = value;
    warp.sync.arrive_and_wait();
    const float other = warp.lanes[(threadIdx.x % 32) ^ offset];
    warp.sync.arrive_and_wait();
    return other;
}
#define __global__
#define __shared__ static
"""

EMULATION_LAUNCH = r"""
template <typename T, int METHOD, bool OVERLAY>
static void launch(int batch, int slices, int threads, const T* a, const T* g, int k, int h, int w, int H, int W,
                   float* heatmap, const unsigned char* image, unsigned char* overlay, float alpha, float* workspace,
                   int* arrivals, int cam_in_workspace) {
    blockDim.x = threads;
    gridDim.x = batch;
    gridDim.y = slices;
    for (int slice = slices - 1; slice >= 0; --slice) {
        for (int block = 0; block < batch; ++block) {
            std::barrier<> sync(threads);
            std::unique_ptr<emulated_warp[]> warp_state(new emulated_warp[threads / 32]);
            block_sync = &sync;
            warps = warp_state.get();
            std::vector<std::thread> pool;
            for (int thread = 0; thread < threads; ++thread) {
                pool.emplace_back([=] {
                    threadIdx.x = thread;
                    blockIdx.x = block;
                    blockIdx.y = slice;
                    gradcam_fused<T, METHOD, OVERLAY>(a, g, k, h, w, H, W, heatmap, image, overlay, alpha, workspace,
                                                      arrivals, cam_in_workspace);
                });
            }
            for (std::thread& running : pool) running.join();
        }
    }
}

template <typename T>
static void emulate(const T* a, const T* g, int n, int k, int h, int w, int H, int W, int method, int threads,
                    int slices, float* heatmap, const unsigned char* image, unsigned char* overlay, float alpha,
                    int cam_in_workspace) {
    std::vector<float> workspace((size_t)n * slices * h * w);
    std::vector<int> arrivals(n, 0);
#define GRADCAM_LAUNCH(M)                                                                                       \
    (overlay ? launch<T, M, true> : launch<T, M, false>)(n, slices, threads, a, g, k, h, w, H, W, heatmap, image, \
                                                         overlay, alpha, workspace.data(), arrivals.data(),      \
                                                         cam_in_workspace)
    switch (method) {
        case GRADCAM_METHOD_GRADCAM: GRADCAM_LAUNCH(GRADCAM_METHOD_GRADCAM); break;
        case GRADCAM_METHOD_GRADCAM_PP: GRADCAM_LAUNCH(GRADCAM_METHOD_GRADCAM_PP); break;
        case GRADCAM_METHOD_XGRADCAM: GRADCAM_LAUNCH(GRADCAM_METHOD_XGRADCAM); break;
        case GRADCAM_METHOD_HIRESCAM: GRADCAM_LAUNCH(GRADCAM_METHOD_HIRESCAM); break;
        case GRADCAM_METHOD_LAYERCAM: GRADCAM_LAUNCH(GRADCAM_METHOD_LAYERCAM); break;
        default: std::abort();  // an id the kernel has no case for
    }
}
"""

EMULATION_ENTRIES = r"""
extern "C" {
void emulate_f32(const float* a, const float* g, int n, int k, int h, int w, int H, int W, int method, int threads,
                 int slices, float* out, const unsigned char* image, unsigned char* overlay, float alpha,
                 int cam_in_workspace) {
    emulate(a, g, n, k, h, w, H, W, method, threads, slices, out, image, overlay, alpha, cam_in_workspace);
}
void emulate_f16(const half_bits* a, const half_bits* g, int n, int k, int h, int w, int H, int W, int method,
                 int threads, int slices, float* out, const unsigned char* image, unsigned char* overlay, float alpha,
                 int cam_in_workspace) {
    emulate(a, g, n, k, h, w, H, W, method, threads, slices, out, image, overlay, alpha, cam_in_workspace);
}
}
"""

# Races between the emulated threads (a missing __syncthreads) make ThreadSanitizer fail this program.
EMULATION_MAIN = r"""
int main() {
    const int n = 2, k = 40, h = 9, w = 11, H = 23, W = 17;
    std::vector<float> a((size_t)n * k * h * w), g(a.size()), heatmap((size_t)n * H * W);
    std::vector<unsigned char> image(heatmap.size() * 3, 100), overlay(image.size());
    unsigned state = 1;
    for (size_t i = 0; i < a.size(); ++i) {
        state = state * 1664525u + 1013904223u;
        a[i] = (state >> 8) / 16777216.0f;
        g[i] = a[i] - 0.5f;
    }
    for (int method = 0; method < 5; ++method) {
        emulate(a.data(), g.data(), n, k, h, w, H, W, method, 256, 3, heatmap.data(), image.data(), overlay.data(),
                0.5f, 0);
        emulate(a.data(), g.data(), n, k, h, w, H, W, method, 64, 2, heatmap.data(), nullptr, nullptr, 0.5f, 1);
    }
    return 0;
}
"""


def _emulation_source() -> str:
    from onnx_gradcam.cam.fused import kernel_source

    kernel = kernel_source().replace("extern __shared__ float shared[];", "float* shared = emulated_shared;")
    assert "extern __shared__" not in kernel
    return EMULATION_PRELUDE + kernel + EMULATION_LAUNCH


def _build_library(tmp_path_factory, name: str, code: str, flags: list[str], why: str) -> ctypes.CDLL:
    """Compile C++ code with g++ into a shared library and load it (skip with `why` without g++)."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip(why)
    folder = tmp_path_factory.mktemp(name)
    source, library = folder / f"{name}.cpp", folder / f"lib{name}.so"
    source.write_text(code)
    command = [compiler, *flags, "-O2", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
               str(source), "-o", str(library)]
    built = subprocess.run(command, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return ctypes.CDLL(str(library))


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> ctypes.CDLL:
    return _build_library(tmp_path_factory, "emulator", _emulation_source() + EMULATION_ENTRIES,
                          ["-std=c++20", "-pthread", "-Wno-unknown-pragmas"],
                          "g++ is needed to run kernels/gradcam.cu on the CPU")


SIZES = np.random.default_rng(0)  # draws the parametrized sizes at collection


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> ctypes.CDLL:
    return _build_library(tmp_path_factory, "harness", HARNESS, ["-std=c++17", f"-I{KERNELS}"],
                          "g++ is needed to build the host harness of kernels/gradcam_math.cuh")


def _ptr(array: np.ndarray | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if array is None else array.ctypes.data)


def _resize(lib, cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    out = np.empty(size, np.float32)
    lib.resize(_ptr(cam), *cam.shape, *size, _ptr(out))
    return out


def _candidates(lib, in_size: int, out_size: int) -> np.ndarray:
    out = np.empty(min(out_size, 2 * in_size), np.int32)
    lib.candidate_indices(in_size, out_size, _ptr(out))
    return out


def _host_heatmaps(lib, activation, gradient, method, size, images=None, alpha=0.5, threads=256, slices=1):
    batch, channels, height, width = activation.shape
    heatmap = np.empty((batch, *size), np.float32)
    overlay = None if images is None else np.empty_like(images)
    entry = lib.heatmaps_f16 if activation.dtype == np.float16 else lib.heatmaps_f32
    entry(_ptr(activation), _ptr(gradient), batch, channels, height, width, *size, METHOD_IDS[method], threads, slices,
          _ptr(heatmap), _ptr(images), _ptr(overlay), ctypes.c_float(alpha))
    return heatmap if images is None else (heatmap, overlay)


def _random_sizes(count: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(h, w) -> (H, W) pairs: up and down, integer and non-integer factors, 1-pixel sides."""
    fixed = [((7, 7), (224, 224)), ((14, 14), (224, 224)), ((7, 7), (28, 28)), ((1, 1), (5, 3)),
             ((5, 9), (1, 1)), ((8, 8), (4, 4)), ((16, 12), (5, 7)), ((7, 7), (7, 7))]
    drawn = [((int(SIZES.integers(1, 20)), int(SIZES.integers(1, 20))),
              (int(SIZES.integers(1, 300)), int(SIZES.integers(1, 300)))) for _ in range(count)]
    return fixed + drawn


def test_half_to_float_matches_numpy_for_every_bit_pattern(lib):
    bits = np.arange(65536, dtype=np.uint16)
    out = np.empty(65536, np.float32)
    lib.halves_to_float(_ptr(bits), 65536, _ptr(out))
    expected = bits.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(out, expected)  # NaN positions must match too


@pytest.mark.parametrize(("low_res", "size"), _random_sizes(40))
def test_bilinear_matches_cv2_and_torch(lib, low_res, size):
    cam = np.random.default_rng([*low_res, *size]).random(low_res, dtype=np.float32)
    ours = _resize(lib, cam, size)
    by_cv2 = cv2.resize(cam, size[::-1], interpolation=cv2.INTER_LINEAR)
    by_torch = F.interpolate(torch.from_numpy(cam)[None, None], size=size, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(ours, by_cv2.reshape(size), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours, by_torch[0, 0].numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("low_res", "size"), _random_sizes(60))
def test_candidate_extrema_equal_full_map_extrema(lib, low_res, size):
    resized = _resize(lib, np.random.default_rng([*low_res, *size]).random(low_res, dtype=np.float32) ** 3, size)
    rows, cols = _candidates(lib, low_res[0], size[0]), _candidates(lib, low_res[1], size[1])
    assert rows.min() >= 0 and rows.max() < size[0] and cols.min() >= 0 and cols.max() < size[1]
    sampled = resized[np.ix_(rows, cols)]
    tolerance = 1e-6 * max(1.0, float(resized.max()))
    assert abs(sampled.min() - resized.min()) <= tolerance
    assert abs(sampled.max() - resized.max()) <= tolerance


def test_upsampled_extrema_differ_from_low_res_extrema(lib):
    """Why the kernel reduces over resized samples: an interior peak is never sampled exactly (7 -> 224)."""
    cam = np.zeros((7, 7), np.float32)
    cam[3, 3] = 1.0
    assert _resize(lib, cam, (224, 224)).max() < 0.99


def test_normalize_matches_numpy_formula(lib):
    values = np.random.default_rng(2).random(1000, dtype=np.float32) * 5
    low, high = np.float32(values.min()), np.float32(values.max())
    out = np.empty_like(values)
    lib.normalize_all(_ptr(values), values.size, ctypes.c_float(low), ctypes.c_float(high), _ptr(out))
    np.testing.assert_allclose(out, (values - low) / (high - low + np.float32(1e-7)), rtol=0, atol=1e-7)
    flat = np.full(10, 3.0, np.float32)
    lib.normalize_all(_ptr(flat), 10, ctypes.c_float(3.0), ctypes.c_float(3.0), _ptr(out))
    np.testing.assert_array_equal(out[:10], 0.0)  # an all-equal map becomes zeros, never NaN


def test_heat_level_and_jet_match_opencv_exactly(lib):
    halves = (np.arange(255, dtype=np.float32) + 0.5) / 255  # ties, up to float rounding
    drawn = np.random.default_rng(3).random(10000, dtype=np.float32)
    heatmap = np.concatenate([drawn, halves, [0.0, 1.0]]).astype(np.float32)
    levels = np.empty(heatmap.size, np.uint8)
    lib.heat_levels(_ptr(heatmap), heatmap.size, _ptr(levels))
    np.testing.assert_array_equal(levels, np.rint(heatmap * np.float32(255)).astype(np.uint8))
    table = np.empty((256, 3), np.uint8)
    lib.jet_all(_ptr(table))
    by_cv2 = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET)[:, 0, ::-1]
    np.testing.assert_array_equal(table, by_cv2)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_blend_matches_numpy(lib, alpha):
    image, color = np.random.default_rng(4).integers(0, 256, (2, 5000), dtype=np.uint8)
    out = np.empty_like(image)
    lib.blend_all(_ptr(image), _ptr(color), image.size, ctypes.c_float(alpha), _ptr(out))
    alpha32 = np.float32(alpha)
    expected = np.rint((np.float32(1) - alpha32) * image.astype(np.float32) + alpha32 * color.astype(np.float32))
    np.testing.assert_array_equal(out, expected.astype(np.uint8))


def _pair(shape, dtype=np.float32, seed=0):
    """Post-ReLU activations and small gradients, like a real target layer; the same for the same arguments."""
    rng = np.random.default_rng(seed)
    activation = np.maximum(rng.standard_normal(shape, dtype=np.float32), 0).astype(dtype)
    gradient = (rng.standard_normal(shape, dtype=np.float32) * 0.1).astype(dtype)
    return activation, gradient


@pytest.mark.parametrize("method", reference.METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize(("shape", "size"), [
    ((2, 64, 7, 7), (28, 28)),
    ((2, 512, 14, 14), (224, 224)),
    ((1, 2048, 7, 7), (224, 224)),
    ((3, 9, 5, 6), (37, 41)),
    ((2, 16, 12, 10), (6, 4)),
    ((1, 3, 4, 4), None),
])
def test_host_pipeline_matches_reference_heatmaps(lib, method, dtype, shape, size):
    activation, gradient = _pair(shape, dtype)
    expected = reference.heatmaps(activation, gradient, method, size)
    ours = _host_heatmaps(lib, activation, gradient, method, size or shape[2:])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", reference.METHODS)
@pytest.mark.parametrize(("threads", "slices"), [(256, 5), (64, 1), (32, 64), (1024, 2)])
def test_host_pipeline_is_stable_across_block_sizes_and_slices(lib, method, threads, slices):
    """Launch shapes the wrapper may pick: map larger than the block (groups = 1), empty slices, many slices."""
    activation, gradient = _pair((2, 300, 9, 11), np.float32)
    expected = reference.heatmaps(activation, gradient, method, (100, 90))
    ours = _host_heatmaps(lib, activation, gradient, method, (100, 90), threads=threads, slices=slices)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_host_pipeline_of_a_negative_map_is_all_zeros(lib):
    activation = np.ones((1, 4, 5, 5), np.float32)
    gradient = -np.ones_like(activation)
    np.testing.assert_array_equal(_host_heatmaps(lib, activation, gradient, "gradcam", (9, 9)), 0.0)


@pytest.mark.parametrize("method", reference.METHODS)
def test_host_overlay_matches_render_overlay(lib, method):
    activation, gradient = _pair((2, 32, 7, 7), np.float32)
    images = np.random.default_rng(1).integers(0, 256, (2, 50, 60, 3), dtype=np.uint8)
    heatmap, overlay = _host_heatmaps(lib, activation, gradient, method, (50, 60), images, alpha=0.4)
    for index in range(2):
        expected = reference_overlay(images[index], heatmap[index], alpha=0.4)
        assert np.abs(overlay[index].astype(int) - expected).max() <= 1


def _emulated_heatmaps(emulator, activation, gradient, method, size, images=None, alpha=0.5, threads=256, slices=1,
                       cam_in_workspace=False):
    """Run the kernel case of method (a name, or a kernel id) on the CPU."""
    batch, channels, height, width = activation.shape
    heatmap = np.empty((batch, *size), np.float32)
    overlay = None if images is None else np.empty_like(images)
    entry = emulator.emulate_f16 if activation.dtype == np.float16 else emulator.emulate_f32
    kernel_id = METHOD_IDS[method] if isinstance(method, str) else method
    entry(_ptr(activation), _ptr(gradient), batch, channels, height, width, *size, kernel_id, threads, slices,
          _ptr(heatmap), _ptr(images), _ptr(overlay), ctypes.c_float(alpha), int(cam_in_workspace))
    return heatmap if images is None else (heatmap, overlay)


# (threads, slices, cam_in_workspace): one block per image, channels split over blocks with an empty
# slice, the map in the global workspace (as for maps over 8192 pixels), a one-warp block.
LAUNCHES = [(256, 1, False), (64, 9, False), (64, 2, True), (32, 3, False)]


@pytest.mark.parametrize("method", reference.METHODS)
@pytest.mark.parametrize(("threads", "slices", "cam_in_workspace"), LAUNCHES)
def test_emulated_kernel_equals_host_mirror_and_reference(emulator, lib, method, threads, slices, cam_in_workspace):
    activation, gradient = _pair((2, 40, 9, 11), np.float32)
    images = np.random.default_rng(1).integers(0, 256, (2, 23, 17, 3), dtype=np.uint8)
    launch = {"threads": threads, "slices": slices}
    heatmap, overlay = _emulated_heatmaps(emulator, activation, gradient, method, (23, 17), images, 0.3, **launch,
                                          cam_in_workspace=cam_in_workspace)
    mirror_heatmap, mirror_overlay = _host_heatmaps(lib, activation, gradient, method, (23, 17), images, 0.3, **launch)
    np.testing.assert_allclose(heatmap, reference.heatmaps(activation, gradient, method, (23, 17)), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(heatmap, mirror_heatmap)  # same order of every sum, so bit for bit
    np.testing.assert_array_equal(overlay, mirror_overlay)


@pytest.mark.parametrize("method", reference.METHODS)
def test_emulated_kernel_reads_float16(emulator, method):
    activation, gradient = _pair((3, 70, 7, 7), np.float16)
    heatmap = _emulated_heatmaps(emulator, activation, gradient, method, (28, 28), slices=2)
    np.testing.assert_allclose(heatmap, reference.heatmaps(activation, gradient, method, (28, 28)), rtol=0, atol=1e-5)


class _OnFakeDevice(np.ndarray):
    """A NumPy array that answers .device like a CuPy one, so fused._host_map runs without a GPU."""

    device = property(lambda self: contextlib.nullcontext())


_HOST_CUPY = SimpleNamespace(asnumpy=np.asarray, asarray=np.asarray, ones_like=np.ones_like)


@pytest.mark.parametrize("method", [name for name in METHODS if get_method(name).kernel_id is None])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_method_without_a_kernel_case_is_finished_by_the_map_case(emulator, method, dtype):
    """What cam.fused does for EigenCAM on CUDA: the NumPy map, then the kernel's map case (K = 1, G = 1)."""
    activation, gradient = (array.view(_OnFakeDevice) for array in _pair((2, 40, 9, 11), dtype))
    cam, ones = fused._host_map(_HOST_CUPY, activation, gradient, get_method(method))
    assert cam.shape == (2, 1, 9, 11) and cam.dtype == ones.dtype == np.float32 and (ones == 1).all()
    images = np.random.default_rng(1).integers(0, 256, (2, 23, 17, 3), dtype=np.uint8)
    heatmap, overlay = _emulated_heatmaps(emulator, np.ascontiguousarray(cam), np.ascontiguousarray(ones),
                                          fused.MAP_KERNEL_ID, (23, 17), images, 0.4)
    expected = reference.heatmaps(np.asarray(activation), np.asarray(gradient), method, (23, 17))
    np.testing.assert_allclose(heatmap, expected, rtol=0, atol=1e-5)
    for index in range(2):
        assert np.abs(overlay[index].astype(int) - reference_overlay(images[index], expected[index], 0.4)).max() <= 1


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is needed to run kernels/gradcam.cu on the CPU")
def test_emulated_kernel_has_no_data_race_under_thread_sanitizer(tmp_path):
    source, program = tmp_path / "race.cpp", tmp_path / "race"
    source.write_text(_emulation_source() + EMULATION_MAIN)
    command = ["g++", "-std=c++20", "-O1", "-g", "-fsanitize=thread", "-pthread", "-Wno-unknown-pragmas",
               str(source), "-o", str(program)]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0 and "tsan" in built.stderr.lower():
        pytest.skip(f"ThreadSanitizer is not available: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr
    ran = subprocess.run([str(program)], capture_output=True, text=True, env={"TSAN_OPTIONS": "halt_on_error=1"})
    assert ran.returncode == 0, ran.stderr[-5000:]
