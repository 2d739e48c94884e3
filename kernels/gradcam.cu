// Fused Grad-CAM heatmaps: channel weights, weighted sum, ReLU, min-max, bilinear resize,
// min-max again and (optionally) JET overlay for a whole batch in one launch.
// The contract is docs/design.md "Heatmap contract"; onnx_gradcam/cam/reference.py is its NumPy twin.
//
// Grid (N, S): block (n, s) sums channels of slice s of image n. With S > 1 the slices
// publish partial maps to a workspace and the last block of each image to arrive
// (a counter in `arrivals`) finishes it, so small batches still fill the GPU.
// Block: any multiple of 32 threads, at most 1024.
//
// Dynamic shared memory, in floats: blockDim.x channel weights, 64 for reductions, then
// max(blockDim.x, h*w) for the map unless cam_in_workspace (then the map lives in the
// workspace, [N, S, h*w] floats, which is also needed whenever S > 1).
#include "gradcam_math.cuh"

__device__ inline float warp_sum(float value) {
    for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
    return value;
}

// Weight of one channel, computed by a whole warp; every lane gets it.
template <typename T, int METHOD>
__device__ float channel_weight(const T* activation, const T* gradient, int area, int lane) {
    if (METHOD == GRADCAM_METHOD_GRADCAM) {
        float gradient_sum = 0.0f;
        for (int pixel = lane; pixel < area; pixel += 32) gradient_sum += to_float(gradient[pixel]);
        return gradcam_weight(warp_sum(gradient_sum), area);
    }
    float activation_sum = 0.0f, product_sum = 0.0f;
    for (int pixel = lane; pixel < area; pixel += 32) {
        const float value = to_float(activation[pixel]);
        activation_sum += value;
        if (METHOD == GRADCAM_METHOD_XGRADCAM) product_sum += value * to_float(gradient[pixel]);
    }
    activation_sum = warp_sum(activation_sum);
    if (METHOD == GRADCAM_METHOD_XGRADCAM) return xgradcam_weight(warp_sum(product_sum), activation_sum);
    float term_sum = 0.0f;  // GRADCAM_METHOD_GRADCAM_PP, the remaining channel-weight id
    for (int pixel = lane; pixel < area; pixel += 32) {
        term_sum += gradcampp_term(to_float(gradient[pixel]), activation_sum);
    }
    return warp_sum(term_sum);
}

// Block-wide min and max; every thread gets both. scratch holds 64 floats.
__device__ void block_min_max(float& low, float& high, float* scratch) {
    __syncthreads();  // scratch may still be read by a previous call
    for (int offset = 16; offset > 0; offset >>= 1) {
        low = fminf(low, __shfl_xor_sync(0xffffffffu, low, offset));
        high = fmaxf(high, __shfl_xor_sync(0xffffffffu, high, offset));
    }
    if ((threadIdx.x & 31) == 0) {
        scratch[threadIdx.x >> 5] = low;
        scratch[32 + (threadIdx.x >> 5)] = high;
    }
    __syncthreads();
    low = scratch[0];
    high = scratch[32];
    for (int warp = 1; warp < (int)(blockDim.x >> 5); ++warp) {
        low = fminf(low, scratch[warp]);
        high = fmaxf(high, scratch[32 + warp]);
    }
}

// Publish this slice's partial map; return true in the last block of the image to arrive,
// after summing all slices (in slice order, so the result does not depend on arrival) into cam.
__device__ bool gather_slices(float* cam, float* workspace, int* arrivals, int area) {
    __shared__ int is_last;
    const int slices = gridDim.y;
    float* image_slots = workspace + (size_t)blockIdx.x * slices * area;
    float* slot = image_slots + (size_t)blockIdx.y * area;
    if (slot != cam) {
        for (int pixel = threadIdx.x; pixel < area; pixel += blockDim.x) slot[pixel] = cam[pixel];
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(arrivals + blockIdx.x, 1) == slices - 1;
    __syncthreads();
    if (!is_last) return false;
    __threadfence();
    for (int pixel = threadIdx.x; pixel < area; pixel += blockDim.x) {
        float sum = 0.0f;
        for (int slice = 0; slice < slices; ++slice) sum += __ldcg(image_slots + (size_t)slice * area + pixel);
        cam[pixel] = sum;
    }
    if (threadIdx.x == 0) arrivals[blockIdx.x] = 0;  // ready for the next launch
    return true;
}

template <typename T, int METHOD, bool OVERLAY>
__global__ void gradcam_fused(const T* __restrict__ activation, const T* __restrict__ gradient,
                              int channels, int height, int width, int out_height, int out_width,
                              float* __restrict__ heatmap, const unsigned char* __restrict__ image,
                              unsigned char* __restrict__ overlay, float alpha,
                              float* workspace, int* arrivals, int cam_in_workspace) {
    static_assert(is_kernel_method(METHOD), "METHOD must be a GRADCAM_METHOD_* id of gradcam_math.cuh");
    extern __shared__ float shared[];
    float* weights = shared;
    float* reduce_scratch = shared + blockDim.x;
    const int area = height * width;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    // (group, pixel) partial sums, then the map itself in the first `area` floats.
    float* cam = cam_in_workspace ? workspace + ((size_t)blockIdx.x * gridDim.y + blockIdx.y) * area
                                  : reduce_scratch + 64;

    const size_t image_offset = (size_t)blockIdx.x * channels * area;
    const T* image_activation = activation + image_offset;
    const T* image_gradient = gradient + image_offset;
    const int per_slice = (channels + gridDim.y - 1) / gridDim.y;
    const int first_channel = blockIdx.y * per_slice;
    const int end_channel = min(channels, first_channel + per_slice);

    // 1. cam = sum_k weight * A_k. Thread `item` owns pixel item % area and sums every
    //    groups-th channel, so small maps still keep every thread busy. The sum runs in double:
    //    min-max normalization magnifies its rounding when the map is a large positive baseline
    //    plus small variation (gradcam++, layercam with K = 2048), and the kernel is memory bound.
    const int groups = !cam_in_workspace && area < (int)blockDim.x ? blockDim.x / area : 1;
    for (int item = threadIdx.x; item < groups * area; item += blockDim.x) cam[item] = 0.0f;
    for (int chunk = first_channel; chunk < end_channel; chunk += blockDim.x) {
        const int chunk_end = min(end_channel, chunk + (int)blockDim.x);
        if (has_channel_weights(METHOD)) {
            __syncthreads();  // the previous chunk's weights are no longer read
            for (int channel = chunk + warp; channel < chunk_end; channel += warps) {
                const size_t at = (size_t)channel * area;
                const float weight = channel_weight<T, METHOD>(image_activation + at, image_gradient + at, area, lane);
                if (lane == 0) weights[channel - chunk] = weight;
            }
            __syncthreads();
        }
        for (int item = threadIdx.x; item < groups * area; item += blockDim.x) {
            const int group = item / area, pixel = item - group * area;
            double sum = cam[item];
#pragma unroll 4
            for (int channel = chunk + group; channel < chunk_end; channel += groups) {
                const size_t at = (size_t)channel * area + pixel;
                const float weight = has_channel_weights(METHOD) ? weights[channel - chunk]
                                                                 : element_weight(METHOD, to_float(image_gradient[at]));
                sum += (double)weight * to_float(image_activation[at]);
            }
            cam[item] = (float)sum;
        }
    }
    __syncthreads();
    for (int pixel = threadIdx.x; pixel < area; pixel += blockDim.x) {
        float sum = cam[pixel];
        for (int group = 1; group < groups; ++group) sum += cam[group * area + pixel];
        cam[pixel] = sum;
    }
    if (gridDim.y > 1 && !gather_slices(cam, workspace, arrivals, area)) return;

    // 2. ReLU and min-max of the h x w map, so that the epsilon acts on a [0, 1] range as in
    //    pytorch-grad-cam (and an all-equal map is exact zeros before the resize).
    float low = 3.402823466e38f, high = -3.402823466e38f;
    for (int pixel = threadIdx.x; pixel < area; pixel += blockDim.x) {
        cam[pixel] = relu(cam[pixel]);
        low = fminf(low, cam[pixel]);
        high = fmaxf(high, cam[pixel]);
    }
    block_min_max(low, high, reduce_scratch);
    for (int pixel = threadIdx.x; pixel < area; pixel += blockDim.x) cam[pixel] = normalize(cam[pixel], low, high);
    __syncthreads();

    // 3. Min and max of the resized map, from the few samples that can hold them.
    const float scale_y = resize_scale(height, out_height), scale_x = resize_scale(width, out_width);
    const int candidate_rows = extremum_candidate_count(height, out_height);
    const int candidate_cols = extremum_candidate_count(width, out_width);
    low = 3.402823466e38f;
    high = -3.402823466e38f;
    for (int candidate = threadIdx.x; candidate < candidate_rows * candidate_cols; candidate += blockDim.x) {
        const int row = candidate / candidate_cols, col = candidate - row * candidate_cols;
        const float value = bilinear(cam, width,
                                     locate(extremum_candidate(row, scale_y, height, out_height), scale_y, height),
                                     locate(extremum_candidate(col, scale_x, width, out_width), scale_x, width));
        low = fminf(low, value);
        high = fmaxf(high, value);
    }
    block_min_max(low, high, reduce_scratch);

    // 4. Resize again, normalize, write (and color and blend).
    const int out_area = out_height * out_width;
    const size_t out_offset = (size_t)blockIdx.x * out_area;
    for (int out_pixel = threadIdx.x; out_pixel < out_area; out_pixel += blockDim.x) {
        const int y = out_pixel / out_width, x = out_pixel - y * out_width;
        const float value = normalize(bilinear(cam, width, locate(y, scale_y, height), locate(x, scale_x, width)),
                                      low, high);
        heatmap[out_offset + out_pixel] = value;
        if (OVERLAY) {
            const unsigned char* color = jet_rgb(heat_level(value));
            const size_t at = (out_offset + out_pixel) * 3;
            for (int channel = 0; channel < 3; ++channel) {
                overlay[at + channel] = blend(image[at + channel], color[channel], alpha);
            }
        }
    }
}

#ifdef GRADCAM_INSTANTIATE_ALL  // every variant, for compile checks (NVRTC users pass name expressions)
#define GRADCAM_INSTANTIATE(T, METHOD, OVERLAY)                                                     \
    template __global__ void gradcam_fused<T, METHOD, OVERLAY>(                                      \
        const T*, const T*, int, int, int, int, int, float*, const unsigned char*, unsigned char*, float, \
        float*, int*, int);
#define GRADCAM_INSTANTIATE_METHOD(METHOD)     \
    GRADCAM_INSTANTIATE(float, METHOD, false)     \
    GRADCAM_INSTANTIATE(float, METHOD, true)      \
    GRADCAM_INSTANTIATE(half_bits, METHOD, false) \
    GRADCAM_INSTANTIATE(half_bits, METHOD, true)
GRADCAM_INSTANTIATE_METHOD(GRADCAM_METHOD_GRADCAM)
GRADCAM_INSTANTIATE_METHOD(GRADCAM_METHOD_GRADCAM_PP)
GRADCAM_INSTANTIATE_METHOD(GRADCAM_METHOD_XGRADCAM)
GRADCAM_INSTANTIATE_METHOD(GRADCAM_METHOD_HIRESCAM)
GRADCAM_INSTANTIATE_METHOD(GRADCAM_METHOD_LAYERCAM)
#endif
