// The pass after a GEMM (bias, then optionally ReLU, written in NCHW order) and ReLU's backward pass.
//
// bias_act: y (N, G, OG, P), C-contiguous, from a GEMM's product read through element strides
// (sn, sg, so, sq) for its (n, g, o, q) index: the product may be (G, OG, N*P) (a convolution's
// W @ columns^T), (G, N*P, OG) (columns @ W^T) or (N, OG) (an affine layer), and this one pass both adds
// the bias b[g*OG + o] (when has_bias) and moves the values to NCHW. With relu, y = max(v, 0) as
// numpy.maximum(v, 0) computes it: NaN stays NaN, -0.0 becomes +0.0. src may be y itself when the strides
// are y's own (an in-place pass), so neither pointer is __restrict__.
// relu_backward: dx = dout where y > 0 or y is NaN, else exactly 0 (a selection, not a product: an
// infinite or NaN dout gives 0 where the unit is off), as PyTorch's threshold_backward.
// One thread per output element, grid-stride, 64-bit indices. Compiled after windows.cuh (GRID_STRIDE_LOOP).
// bias_act_bf16 (mixed precision, gpucnn.devices.precision): the product of a bfloat16 GEMM read as bfloat16,
// widened exactly to float32, the float32 bias added and the result written in float32.

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#include <cuda_bf16.h>
#endif

template <typename S, typename T>   // S: the product's type, T: the bias's and the output's
__device__ void bias_act_impl(long long total, const S* src, const T* bias, int G, int OG, int P, long long sn,
                              long long sg, long long so, long long sq, int has_bias, int relu, T* y) {
  GRID_STRIDE_LOOP(idx, total) {  // idx runs over (n, g, o, q) of y
    long long r = idx / P;
    const long long q = idx - r * P;
    const int o = (int)(r % OG);
    r /= OG;
    const int g = (int)(r % G);
    const long long n = r / G;
    T v = static_cast<T>(src[n * sn + g * sg + o * so + q * sq]);
    if (has_bias) v += bias[g * OG + o];
    if (relu && v <= T(0)) v = T(0);
    y[idx] = v;
  }
}

template <typename T>
__device__ void relu_backward_impl(long long total, const T* __restrict__ y, const T* __restrict__ dout,
                                   T* __restrict__ dx) {
  GRID_STRIDE_LOOP(idx, total) {
    dx[idx] = y[idx] <= T(0) ? T(0) : dout[idx];
  }
}

extern "C" __global__ void bias_act_f32(long long total, const float* src, const float* bias, int G, int OG, int P,
                                        long long sn, long long sg, long long so, long long sq, int has_bias,
                                        int relu, float* y) {
  bias_act_impl<float, float>(total, src, bias, G, OG, P, sn, sg, so, sq, has_bias, relu, y);
}

extern "C" __global__ void bias_act_f64(long long total, const double* src, const double* bias, int G, int OG,
                                        int P, long long sn, long long sg, long long so, long long sq, int has_bias,
                                        int relu, double* y) {
  bias_act_impl<double, double>(total, src, bias, G, OG, P, sn, sg, so, sq, has_bias, relu, y);
}

extern "C" __global__ void bias_act_bf16(long long total, const __nv_bfloat16* src, const float* bias, int G, int OG,
                                         int P, long long sn, long long sg, long long so, long long sq,
                                         int has_bias, int relu, float* y) {
  bias_act_impl<__nv_bfloat16, float>(total, src, bias, G, OG, P, sn, sg, so, sq, has_bias, relu, y);
}

extern "C" __global__ void relu_backward_f32(long long total, const float* __restrict__ y,
                                             const float* __restrict__ dout, float* __restrict__ dx) {
  relu_backward_impl<float>(total, y, dout, dx);
}

extern "C" __global__ void relu_backward_f64(long long total, const double* __restrict__ y,
                                             const double* __restrict__ dout, double* __restrict__ dx) {
  relu_backward_impl<double>(total, y, dout, dx);
}
