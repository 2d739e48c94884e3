// Per-element math of the heatmap contract (docs/design.md, "Heatmap contract").
//
// Shared by the CUDA kernel (gradcam.cu) and by a host harness that g++ compiles
// in the tests, so every function here is plain C++ that also builds without CUDA.
#ifndef GRADCAM_MATH_CUH  // a guard, not #pragma once: fused.kernel_source() inlines this file
#define GRADCAM_MATH_CUH

#ifndef __CUDACC__
#include <math.h>
#define __host__
#define __device__
#endif

#define GRADCAM_HD __host__ __device__ inline

// Kernel ids. Each method of the registry (onnx_gradcam/cam/methods.py) names its id explicitly, and a
// test checks every registered id against this enum; a method without an id never reaches the kernel
// as one of these cases.
enum {
    GRADCAM_METHOD_GRADCAM = 0,
    GRADCAM_METHOD_GRADCAM_PP = 1,
    GRADCAM_METHOD_XGRADCAM = 2,
    GRADCAM_METHOD_HIRESCAM = 3,
    GRADCAM_METHOD_LAYERCAM = 4,
};

// Must equal onnx_gradcam.cam.reference.EPSILON and GRADCAMPP_EPSILON (a compile test checks it).
#define GRADCAM_EPSILON 1e-7f
#define GRADCAMPP_EPSILON 1e-6f

// ---------------------------------------------------------------- inputs

// An IEEE binary16 value as raw bits; avoids cuda_fp16.h, which NVRTC may not find.
struct half_bits {
    unsigned short bits;
};

GRADCAM_HD float to_float(float value) { return value; }

GRADCAM_HD float to_float(half_bits value) {
#ifdef __CUDA_ARCH__
    float result;
    asm("cvt.f32.f16 %0, %1;" : "=f"(result) : "h"(value.bits));
    return result;
#else
    const int exponent = (value.bits >> 10) & 0x1f;
    const int mantissa = value.bits & 0x3ff;
    float magnitude;
    if (exponent == 0) {
        magnitude = ldexpf((float)mantissa, -24);  // zero and subnormals
    } else if (exponent == 31) {
        magnitude = mantissa ? NAN : INFINITY;
    } else {
        magnitude = ldexpf((float)(mantissa | 0x400), exponent - 25);
    }
    return (value.bits & 0x8000) ? -magnitude : magnitude;
#endif
}

// ---------------------------------------------------------------- channel weights

GRADCAM_HD float relu(float value) { return value > 0.0f ? value : 0.0f; }

// gradcam, gradcam++ and xgradcam weight whole channels; hirescam and layercam weight each element.
GRADCAM_HD constexpr bool has_channel_weights(int method) {
    return method == GRADCAM_METHOD_GRADCAM || method == GRADCAM_METHOD_GRADCAM_PP ||
           method == GRADCAM_METHOD_XGRADCAM;
}

GRADCAM_HD constexpr bool has_element_weights(int method) {
    return method == GRADCAM_METHOD_HIRESCAM || method == GRADCAM_METHOD_LAYERCAM;
}

// Every id above, and nothing else: the kernel refuses to compile for any other value.
GRADCAM_HD constexpr bool is_kernel_method(int method) {
    return has_channel_weights(method) || has_element_weights(method);
}

GRADCAM_HD float gradcam_weight(float gradient_sum, int area) { return gradient_sum / (float)area; }

GRADCAM_HD float xgradcam_weight(float product_sum, float activation_sum) {
    return product_sum / (activation_sum + GRADCAM_EPSILON);
}

// One element of the gradcam++ weight: alpha * ReLU(G), alpha = G^2 / (G^2 (2 + (sum A) G) + eps),
// factored like the reference. Where G == 0 alpha is 0 / eps = 0, as the contract asks.
GRADCAM_HD float gradcampp_term(float gradient, float activation_sum) {
    const float squared = gradient * gradient;
    const float alpha = squared / (squared * (2.0f + activation_sum * gradient) + GRADCAMPP_EPSILON);
    return alpha * relu(gradient);
}

// The per-element weight of hirescam (G) and layercam (ReLU(G)); only has_element_weights ids call it.
GRADCAM_HD float element_weight(int method, float gradient) {
    return method == GRADCAM_METHOD_LAYERCAM ? relu(gradient) : gradient;  // GRADCAM_METHOD_HIRESCAM: G
}

// ---------------------------------------------------------------- bilinear resize

// Where output index dst samples the input: half-pixel centers, no antialias, edges clamped
// (cv2.resize INTER_LINEAR, torch interpolate(mode="bilinear", align_corners=False)).
struct source_index {
    int lower;
    int upper;
    float fraction;  // weight of upper
};

GRADCAM_HD float resize_scale(int in_size, int out_size) { return (float)in_size / (float)out_size; }

GRADCAM_HD source_index locate(int dst, float scale, int in_size) {
    float src = ((float)dst + 0.5f) * scale - 0.5f;
    if (src < 0.0f) src = 0.0f;
    source_index index;
    index.lower = (int)src;
    if (index.lower >= in_size - 1) {
        index.lower = index.upper = in_size - 1;
        index.fraction = 0.0f;
    } else {
        index.upper = index.lower + 1;
        index.fraction = src - (float)index.lower;
    }
    return index;
}

// Sample a row-major [height, width] map.
GRADCAM_HD float bilinear(const float* map, int width, source_index row, source_index col) {
    const float* top = map + row.lower * width;
    const float* bottom = map + row.upper * width;
    const float upper_row = (1.0f - col.fraction) * top[col.lower] + col.fraction * top[col.upper];
    const float lower_row = (1.0f - col.fraction) * bottom[col.lower] + col.fraction * bottom[col.upper];
    return (1.0f - row.fraction) * upper_row + row.fraction * lower_row;
}

// Min and max of the resized map without resizing it all: inside one input cell the
// interpolant is bilinear in (row.fraction, col.fraction), and the fractions grow with dst,
// so over the samples of a cell it peaks at the first or last sampled row and column.
// Only the first and last output index of every input cell (at most 2 * in_size) are
// candidates; downscaling keeps every index.
GRADCAM_HD int extremum_candidate_count(int in_size, int out_size) {
    return out_size < 2 * in_size ? out_size : 2 * in_size;
}

// Smallest dst whose lower source index is >= cell, or out_size if there is none.
GRADCAM_HD int first_dst_in_cell(int cell, float scale, int in_size, int out_size) {
    int dst = (int)ceilf(((float)cell + 0.5f) / scale - 0.5f);  // a guess; the loops make it exact
    dst = dst < 0 ? 0 : (dst > out_size ? out_size : dst);
    while (dst > 0 && locate(dst - 1, scale, in_size).lower >= cell) --dst;
    while (dst < out_size && locate(dst, scale, in_size).lower < cell) ++dst;
    return dst;
}

// The candidate-th output index to visit, 0 <= candidate < extremum_candidate_count(...).
GRADCAM_HD int extremum_candidate(int candidate, float scale, int in_size, int out_size) {
    if (out_size < 2 * in_size) return candidate;
    const int cell = candidate >> 1;
    const int dst = (candidate & 1) ? first_dst_in_cell(cell + 1, scale, in_size, out_size) - 1
                                    : first_dst_in_cell(cell, scale, in_size, out_size);
    // An empty cell yields a neighbour's index: a real sample, so harmless for min and max.
    return dst < 0 ? 0 : (dst >= out_size ? out_size - 1 : dst);
}

// ---------------------------------------------------------------- normalize, colormap, blend

// Min-max normalize; clamped because the candidate min/max and a full scan may differ by rounding.
GRADCAM_HD float normalize(float value, float low, float high) {
    const float scaled = (value - low) / (high - low + GRADCAM_EPSILON);
    return scaled < 0.0f ? 0.0f : (scaled > 1.0f ? 1.0f : scaled);
}

GRADCAM_HD unsigned char to_uint8(float value) {
    const float rounded = rintf(value);  // half to even, like numpy.round and cv2 saturate_cast
    return (unsigned char)(rounded < 0.0f ? 0.0f : (rounded > 255.0f ? 255.0f : rounded));
}

GRADCAM_HD unsigned char heat_level(float heatmap) { return to_uint8(255.0f * heatmap); }

// OpenCV's COLORMAP_JET as RGB (cv2.applyColorMap gives BGR).
GRADCAM_HD const unsigned char* jet_rgb(unsigned char level) {
    static const unsigned char table[256][3] = {
        {0,0,128}, {0,0,132}, {0,0,136}, {0,0,140}, {0,0,144}, {0,0,148}, {0,0,152}, {0,0,156},
        {0,0,160}, {0,0,164}, {0,0,168}, {0,0,172}, {0,0,176}, {0,0,180}, {0,0,184}, {0,0,188},
        {0,0,192}, {0,0,196}, {0,0,200}, {0,0,204}, {0,0,208}, {0,0,212}, {0,0,216}, {0,0,220},
        {0,0,224}, {0,0,228}, {0,0,232}, {0,0,236}, {0,0,240}, {0,0,244}, {0,0,248}, {0,0,252},
        {0,0,255}, {0,4,255}, {0,8,255}, {0,12,255}, {0,16,255}, {0,20,255}, {0,24,255}, {0,28,255},
        {0,32,255}, {0,36,255}, {0,40,255}, {0,44,255}, {0,48,255}, {0,52,255}, {0,56,255}, {0,60,255},
        {0,64,255}, {0,68,255}, {0,72,255}, {0,76,255}, {0,80,255}, {0,84,255}, {0,88,255}, {0,92,255},
        {0,96,255}, {0,100,255}, {0,104,255}, {0,108,255}, {0,112,255}, {0,116,255}, {0,120,255}, {0,124,255},
        {0,128,255}, {0,132,255}, {0,136,255}, {0,140,255}, {0,144,255}, {0,148,255}, {0,152,255}, {0,156,255},
        {0,160,255}, {0,164,255}, {0,168,255}, {0,172,255}, {0,176,255}, {0,180,255}, {0,184,255}, {0,188,255},
        {0,192,255}, {0,196,255}, {0,200,255}, {0,204,255}, {0,208,255}, {0,212,255}, {0,216,255}, {0,220,255},
        {0,224,255}, {0,228,255}, {0,232,255}, {0,236,255}, {0,240,255}, {0,244,255}, {0,248,255}, {0,252,255},
        {2,255,254}, {6,255,250}, {10,255,246}, {14,255,242}, {18,255,238}, {22,255,234}, {26,255,230}, {30,255,226},
        {34,255,222}, {38,255,218}, {42,255,214}, {46,255,210}, {50,255,206}, {54,255,202}, {58,255,198}, {62,255,194},
        {66,255,190}, {70,255,186}, {74,255,182}, {78,255,178}, {82,255,174}, {86,255,170}, {90,255,166}, {94,255,162},
        {98,255,158}, {102,255,154}, {106,255,150}, {110,255,146}, {114,255,142}, {118,255,138}, {122,255,134}, {126,255,130},
        {130,255,126}, {134,255,122}, {138,255,118}, {142,255,114}, {146,255,110}, {150,255,106}, {154,255,102}, {158,255,98},
        {162,255,94}, {166,255,90}, {170,255,86}, {174,255,82}, {178,255,78}, {182,255,74}, {186,255,70}, {190,255,66},
        {194,255,62}, {198,255,58}, {202,255,54}, {206,255,50}, {210,255,46}, {214,255,42}, {218,255,38}, {222,255,34},
        {226,255,30}, {230,255,26}, {234,255,22}, {238,255,18}, {242,255,14}, {246,255,10}, {250,255,6}, {254,255,1},
        {255,252,0}, {255,248,0}, {255,244,0}, {255,240,0}, {255,236,0}, {255,232,0}, {255,228,0}, {255,224,0},
        {255,220,0}, {255,216,0}, {255,212,0}, {255,208,0}, {255,204,0}, {255,200,0}, {255,196,0}, {255,192,0},
        {255,188,0}, {255,184,0}, {255,180,0}, {255,176,0}, {255,172,0}, {255,168,0}, {255,164,0}, {255,160,0},
        {255,156,0}, {255,152,0}, {255,148,0}, {255,144,0}, {255,140,0}, {255,136,0}, {255,132,0}, {255,128,0},
        {255,124,0}, {255,120,0}, {255,116,0}, {255,112,0}, {255,108,0}, {255,104,0}, {255,100,0}, {255,96,0},
        {255,92,0}, {255,88,0}, {255,84,0}, {255,80,0}, {255,76,0}, {255,72,0}, {255,68,0}, {255,64,0},
        {255,60,0}, {255,56,0}, {255,52,0}, {255,48,0}, {255,44,0}, {255,40,0}, {255,36,0}, {255,32,0},
        {255,28,0}, {255,24,0}, {255,20,0}, {255,16,0}, {255,12,0}, {255,8,0}, {255,4,0}, {255,0,0},
        {252,0,0}, {248,0,0}, {244,0,0}, {240,0,0}, {236,0,0}, {232,0,0}, {228,0,0}, {224,0,0},
        {220,0,0}, {216,0,0}, {212,0,0}, {208,0,0}, {204,0,0}, {200,0,0}, {196,0,0}, {192,0,0},
        {188,0,0}, {184,0,0}, {180,0,0}, {176,0,0}, {172,0,0}, {168,0,0}, {164,0,0}, {160,0,0},
        {156,0,0}, {152,0,0}, {148,0,0}, {144,0,0}, {140,0,0}, {136,0,0}, {132,0,0}, {128,0,0},
    };
    return table[level];
}

GRADCAM_HD unsigned char blend(unsigned char image, unsigned char color, float alpha) {
    return to_uint8((1.0f - alpha) * (float)image + alpha * (float)color);
}

#endif  // GRADCAM_MATH_CUH
