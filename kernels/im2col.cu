// im2col and its adjoint col2im for convolution as one batched GEMM over all samples and groups.
//
// Column layout: (G, N, oh, ow, kh, kw, C/G), C-contiguous: per group, one row of kh*kw*C/G per output
// position (input channel g*C/G + c is column channel c of group g). The image side is NCHW (x in im2col, the
// result in col2im), read and written in place: no transposes on the device. The taps of a window are dh rows
// and dw columns apart (dilation); ph, pw are the leading (top, left) padding, and oh, ow, which the launcher
// derives from the padding on both sides, bound the windows: padding reads as zero.
// col2im is a gather (one thread per NCHW input element, taps summed in row-major kernel order, as the CPU
// twin in gpucnn/devices/twins.py sums them), so it needs no atomics, no zero-fill, and gives bit-identical
// results run to run.
// Totals and flat indices are 64-bit; one image plane (H*W, oh*ow) and kh*kw must fit in int32 (checked by
// the launcher). Compiled after windows.cuh (GRID_STRIDE_LOOP, for_each_covering_tap), which gpucnn/devices/kernels.py
// puts in front; the same text by NVRTC (CuPy) and by g++ (gpucnn.emulator).
// bf16 variants (mixed precision, gpucnn.devices.precision): im2col_bf16 gathers bfloat16 columns from a
// bfloat16 image (a pure copy: exact); col2im_bf16 sums bfloat16 column gradients in float32 and writes a float32
// image gradient (the layers before a GEMM work in float32). __nv_bfloat16 comes from cuda_bf16.h under NVRTC
// and from the emulator's shim under g++.

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#include <cuda_bf16.h>
#endif

template <typename T>
__device__ void im2col_impl(long long total, const T* __restrict__ x, int N, int C, int G, int H, int W, int kh,
                            int kw, int sh, int sw, int ph, int pw, int dh, int dw, int oh, int ow,
                            T* __restrict__ col) {
  const int cg = C / G;
  const long long row = (long long)kh * kw * cg;  // one column row: all taps of one output position
  const long long positions = (long long)N * oh * ow;
  GRID_STRIDE_LOOP(idx, total) {                 // idx runs over (g, n, oy, ox, i, j, c), coalesced writes
    const long long pos = idx / row;             // (g*N + n)*oh*ow + oy*ow + ox
    const long long k = idx - pos * row;         // (i*kw + j)*C/G + c
    const int tap = (int)(k / cg), c = (int)(k - (long long)tap * cg);
    const long long g = pos / positions;
    const long long inside = pos - g * positions;
    const long long n = inside / ((long long)oh * ow);
    const int rem = (int)(inside - n * oh * ow);
    const int y = (rem / ow) * sh - ph + (tap / kw) * dh, xx = (rem % ow) * sw - pw + (tap % kw) * dw;
    col[idx] = (y >= 0 && y < H && xx >= 0 && xx < W) ? x[((n * C + g * cg + c) * H + y) * W + xx] : T(0);
  }
}

template <typename T, typename Out>   // Out: the image's type, in which the taps are summed
__device__ void col2im_impl(long long total, const T* __restrict__ col, int N, int C, int G, int H, int W, int kh,
                            int kw, int sh, int sw, int ph, int pw, int dh, int dw, int oh, int ow,
                            Out* __restrict__ x) {
  const int cg = C / G;
  const long long row = (long long)kh * kw * cg;
  const int plane = H * W;
  GRID_STRIDE_LOOP(idx, total) {  // idx runs over (n, c, h, w) of dx
    const long long nc = idx / plane;
    const int rem = (int)(idx - nc * plane);
    const long long n = nc / C;
    const int c = (int)(nc - n * C);
    const int g = c / cg;
    const int hp = rem / W + ph, wp = rem % W + pw;  // position in the padded image
    const T* src = col + ((long long)g * N + n) * oh * ow * row + (c - g * cg);
    Out sum = Out(0);
    for_each_covering_tap(hp, wp, kh, kw, sh, sw, dh, dw, oh, ow, [&](int i, int j, int oy, int ox) {
      sum += static_cast<Out>(src[((long long)oy * ow + ox) * row + (long long)(i * kw + j) * cg]);
    });
    x[idx] = sum;
  }
}

extern "C" __global__ void im2col_f32(long long total, const float* __restrict__ x, int N, int C, int G,
                                      int H, int W, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
                                      int dw, int oh, int ow, float* __restrict__ col) {
  im2col_impl<float>(total, x, N, C, G, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, col);
}

extern "C" __global__ void im2col_f64(long long total, const double* __restrict__ x, int N, int C, int G,
                                      int H, int W, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
                                      int dw, int oh, int ow, double* __restrict__ col) {
  im2col_impl<double>(total, x, N, C, G, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, col);
}

extern "C" __global__ void col2im_f32(long long total, const float* __restrict__ col, int N, int C, int G,
                                      int H, int W, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
                                      int dw, int oh, int ow, float* __restrict__ x) {
  col2im_impl<float, float>(total, col, N, C, G, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, x);
}

extern "C" __global__ void col2im_f64(long long total, const double* __restrict__ col, int N, int C, int G,
                                      int H, int W, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
                                      int dw, int oh, int ow, double* __restrict__ x) {
  col2im_impl<double, double>(total, col, N, C, G, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, x);
}

extern "C" __global__ void im2col_bf16(long long total, const __nv_bfloat16* __restrict__ x, int N, int C, int G,
                                       int H, int W, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
                                       int dw, int oh, int ow, __nv_bfloat16* __restrict__ col) {
  im2col_impl<__nv_bfloat16>(total, x, N, C, G, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, col);
}

extern "C" __global__ void col2im_bf16(long long total, const __nv_bfloat16* __restrict__ col, int N, int C, int G,
                                       int H, int W, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
                                       int dw, int oh, int ow, float* __restrict__ x) {
  col2im_impl<__nv_bfloat16, float>(total, col, N, C, G, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, x);
}
