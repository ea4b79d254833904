// im2col and its adjoint col2im for NCHW convolution as one batched matmul.
//
// Column layout: (N, C, kh, kw, oh, ow), C-contiguous. Padding reads as zero.
// col2im is a gather (one thread per input pixel, taps summed in row-major kernel order), so it needs no
// atomics, no zero-fill, and gives bit-identical results run to run.
// Totals and flat indices are 64-bit; one image plane (H*W, oh*ow) must fit in int32 (checked by the launcher).
// Self-contained on purpose: compiled as is by NVRTC (CuPy) and by g++ (gpucnn.emulator).

#define GRID_STRIDE_LOOP(i, n)                                                   \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
       i += (long long)blockDim.x * gridDim.x)

// First kernel tap t (0 <= t, t = p mod s) whose window start (p - t) / s lies in [0, out): taps covering
// padded position p go t, t + s, t + 2s, ... while t < k and t <= p.
__device__ __forceinline__ int first_tap(int p, int s, int out) {
  int t = p % s;
  const int lo = p - (out - 1) * s;
  if (lo > t) t += ((lo - t + s - 1) / s) * s;
  return t;
}

template <typename T>
__device__ void im2col_impl(long long total, const T* __restrict__ x, int H, int W, int kh, int kw,
                            int sh, int sw, int ph, int pw, int oh, int ow, T* __restrict__ col) {
  const int plane = oh * ow;
  GRID_STRIDE_LOOP(idx, total) {  // idx runs over (n*C + c, oy, ox)
    const long long nc = idx / plane;
    const int rem = (int)(idx - nc * plane);
    const int oy = rem / ow, ox = rem % ow;
    const T* src = x + nc * H * W;
    T* dst = col + nc * kh * kw * plane + rem;
    const int y0 = oy * sh - ph, x0 = ox * sw - pw;
    for (int i = 0; i < kh; ++i) {
      const int y = y0 + i;
      const bool row_inside = y >= 0 && y < H;
      for (int j = 0; j < kw; ++j) {
        const int xx = x0 + j;
        *dst = (row_inside && xx >= 0 && xx < W) ? src[y * W + xx] : T(0);
        dst += plane;
      }
    }
  }
}

template <typename T>
__device__ void col2im_impl(long long total, const T* __restrict__ col, int H, int W, int kh, int kw,
                            int sh, int sw, int ph, int pw, int oh, int ow, T* __restrict__ x) {
  const int plane = oh * ow;
  GRID_STRIDE_LOOP(idx, total) {  // idx runs over (n*C + c, h, w)
    const long long nc = idx / ((long long)H * W);
    const int rem = (int)(idx - nc * H * W);
    const int hp = rem / W + ph, wp = rem % W + pw;  // position in the padded image
    const T* src = col + nc * kh * kw * plane;
    const int j0 = first_tap(wp, sw, ow);
    T sum = T(0);
    for (int i = first_tap(hp, sh, oh); i < kh && i <= hp; i += sh) {
      const int oy = (hp - i) / sh;
      for (int j = j0; j < kw && j <= wp; j += sw) {
        const int ox = (wp - j) / sw;
        sum += src[(long long)(i * kw + j) * plane + oy * ow + ox];
      }
    }
    x[idx] = sum;
  }
}

extern "C" __global__ void im2col_f32(long long total, const float* __restrict__ x, int H, int W, int kh,
                                      int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                      float* __restrict__ col) {
  im2col_impl<float>(total, x, H, W, kh, kw, sh, sw, ph, pw, oh, ow, col);
}

extern "C" __global__ void im2col_f64(long long total, const double* __restrict__ x, int H, int W, int kh,
                                      int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                      double* __restrict__ col) {
  im2col_impl<double>(total, x, H, W, kh, kw, sh, sw, ph, pw, oh, ow, col);
}

extern "C" __global__ void col2im_f32(long long total, const float* __restrict__ col, int H, int W, int kh,
                                      int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                      float* __restrict__ x) {
  col2im_impl<float>(total, col, H, W, kh, kw, sh, sw, ph, pw, oh, ow, x);
}

extern "C" __global__ void col2im_f64(long long total, const double* __restrict__ col, int H, int W, int kh,
                                      int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                      double* __restrict__ x) {
  col2im_impl<double>(total, col, H, W, kh, kw, sh, sw, ph, pw, oh, ow, x);
}
