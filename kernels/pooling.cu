// Max and average pooling over NCHW, forward and backward.
//
// maxpool argmax is the winner's offset i*kw + j inside its window (int32). Ties go to the first maximum in
// row-major window order and NaN wins (later NaNs too), as in PyTorch; padding reads as -inf, so it is never
// chosen over a real value. avgpool counts padding as zeros and always divides by kh*kw
// (count_include_pad=True). Both backward passes are gathers: one thread per input pixel sums, in row-major
// kernel order, over the windows that cover it. No atomics, no zero-fill, deterministic.
// Totals and flat indices are 64-bit; one image plane (H*W, oh*ow) must fit in int32 (checked by the launcher).
// Self-contained on purpose: compiled as is by NVRTC (CuPy) and by g++ (gpucnn.emulator).

#define GRID_STRIDE_LOOP(i, n)                                                   \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
       i += (long long)blockDim.x * gridDim.x)

template <typename T> __device__ __forceinline__ T negative_infinity();
template <> __device__ __forceinline__ float negative_infinity<float>() {
  return __int_as_float((int)0xff800000u);
}
template <> __device__ __forceinline__ double negative_infinity<double>() {
  return __longlong_as_double((long long)0xfff0000000000000ull);
}

// First kernel tap t (0 <= t, t = p mod s) whose window start (p - t) / s lies in [0, out): taps covering
// padded position p go t, t + s, t + 2s, ... while t < k and t <= p.
__device__ __forceinline__ int first_tap(int p, int s, int out) {
  int t = p % s;
  const int lo = p - (out - 1) * s;
  if (lo > t) t += ((lo - t + s - 1) / s) * s;
  return t;
}

template <typename T>
__device__ void maxpool_forward_impl(long long total, const T* __restrict__ x, int H, int W, int kh, int kw,
                                     int sh, int sw, int ph, int pw, int oh, int ow, T* __restrict__ y,
                                     int* __restrict__ argmax) {
  const int plane = oh * ow;
  GRID_STRIDE_LOOP(idx, total) {  // idx runs over (n*C + c, oy, ox)
    const long long nc = idx / plane;
    const int rem = (int)(idx - nc * plane);
    const int y0 = (rem / ow) * sh - ph, x0 = (rem % ow) * sw - pw;
    const T* src = x + nc * H * W;
    T best = negative_infinity<T>();
    int best_at = 0;
    for (int i = 0; i < kh; ++i) {
      const int yy = y0 + i;
      const bool row_inside = yy >= 0 && yy < H;
      for (int j = 0; j < kw; ++j) {
        const int xx = x0 + j;
        const T v = (row_inside && xx >= 0 && xx < W) ? src[yy * W + xx] : negative_infinity<T>();
        if (v > best || isnan(v)) {
          best = v;
          best_at = i * kw + j;
        }
      }
    }
    y[idx] = best;
    argmax[idx] = best_at;
  }
}

template <typename T>
__device__ void maxpool_backward_impl(long long total, const T* __restrict__ dy, const int* __restrict__ argmax,
                                      int H, int W, int kh, int kw, int sh, int sw, int ph, int pw, int oh,
                                      int ow, T* __restrict__ dx) {
  const int plane = oh * ow;
  GRID_STRIDE_LOOP(idx, total) {  // idx runs over (n*C + c, h, w)
    const long long nc = idx / ((long long)H * W);
    const int rem = (int)(idx - nc * H * W);
    const int hp = rem / W + ph, wp = rem % W + pw;
    const T* g = dy + nc * plane;
    const int* arg = argmax + nc * plane;
    const int j0 = first_tap(wp, sw, ow);
    T sum = T(0);
    for (int i = first_tap(hp, sh, oh); i < kh && i <= hp; i += sh) {
      const int row = ((hp - i) / sh) * ow;
      for (int j = j0; j < kw && j <= wp; j += sw) {
        const int o = row + (wp - j) / sw;
        if (arg[o] == i * kw + j) sum += g[o];
      }
    }
    dx[idx] = sum;
  }
}

template <typename T>
__device__ void avgpool_forward_impl(long long total, const T* __restrict__ x, int H, int W, int kh, int kw,
                                     int sh, int sw, int ph, int pw, int oh, int ow, T* __restrict__ y) {
  const int plane = oh * ow;
  const T scale = T(1.0 / (double)(kh * kw));
  GRID_STRIDE_LOOP(idx, total) {  // idx runs over (n*C + c, oy, ox)
    const long long nc = idx / plane;
    const int rem = (int)(idx - nc * plane);
    const int y0 = (rem / ow) * sh - ph, x0 = (rem % ow) * sw - pw;
    const T* src = x + nc * H * W;
    T sum = T(0);
    for (int i = 0; i < kh; ++i) {
      const int yy = y0 + i;
      if (yy < 0 || yy >= H) continue;
      for (int j = 0; j < kw; ++j) {
        const int xx = x0 + j;
        if (xx >= 0 && xx < W) sum += src[yy * W + xx];
      }
    }
    y[idx] = sum * scale;
  }
}

template <typename T>
__device__ void avgpool_backward_impl(long long total, const T* __restrict__ dy, int H, int W, int kh, int kw,
                                      int sh, int sw, int ph, int pw, int oh, int ow, T* __restrict__ dx) {
  const int plane = oh * ow;
  const T scale = T(1.0 / (double)(kh * kw));
  GRID_STRIDE_LOOP(idx, total) {  // idx runs over (n*C + c, h, w)
    const long long nc = idx / ((long long)H * W);
    const int rem = (int)(idx - nc * H * W);
    const int hp = rem / W + ph, wp = rem % W + pw;
    const T* g = dy + nc * plane;
    const int j0 = first_tap(wp, sw, ow);
    T sum = T(0);
    for (int i = first_tap(hp, sh, oh); i < kh && i <= hp; i += sh) {
      const int row = ((hp - i) / sh) * ow;
      for (int j = j0; j < kw && j <= wp; j += sw) sum += g[row + (wp - j) / sw] * scale;
    }
    dx[idx] = sum;
  }
}

extern "C" __global__ void maxpool_forward_f32(long long total, const float* __restrict__ x, int H, int W,
                                               int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                               float* __restrict__ y, int* __restrict__ argmax) {
  maxpool_forward_impl<float>(total, x, H, W, kh, kw, sh, sw, ph, pw, oh, ow, y, argmax);
}

extern "C" __global__ void maxpool_forward_f64(long long total, const double* __restrict__ x, int H, int W,
                                               int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                               double* __restrict__ y, int* __restrict__ argmax) {
  maxpool_forward_impl<double>(total, x, H, W, kh, kw, sh, sw, ph, pw, oh, ow, y, argmax);
}

extern "C" __global__ void maxpool_backward_f32(long long total, const float* __restrict__ dy,
                                                const int* __restrict__ argmax, int H, int W, int kh, int kw,
                                                int sh, int sw, int ph, int pw, int oh, int ow,
                                                float* __restrict__ dx) {
  maxpool_backward_impl<float>(total, dy, argmax, H, W, kh, kw, sh, sw, ph, pw, oh, ow, dx);
}

extern "C" __global__ void maxpool_backward_f64(long long total, const double* __restrict__ dy,
                                                const int* __restrict__ argmax, int H, int W, int kh, int kw,
                                                int sh, int sw, int ph, int pw, int oh, int ow,
                                                double* __restrict__ dx) {
  maxpool_backward_impl<double>(total, dy, argmax, H, W, kh, kw, sh, sw, ph, pw, oh, ow, dx);
}

extern "C" __global__ void avgpool_forward_f32(long long total, const float* __restrict__ x, int H, int W,
                                               int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                               float* __restrict__ y) {
  avgpool_forward_impl<float>(total, x, H, W, kh, kw, sh, sw, ph, pw, oh, ow, y);
}

extern "C" __global__ void avgpool_forward_f64(long long total, const double* __restrict__ x, int H, int W,
                                               int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                               double* __restrict__ y) {
  avgpool_forward_impl<double>(total, x, H, W, kh, kw, sh, sw, ph, pw, oh, ow, y);
}

extern "C" __global__ void avgpool_backward_f32(long long total, const float* __restrict__ dy, int H, int W,
                                                int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                                float* __restrict__ dx) {
  avgpool_backward_impl<float>(total, dy, H, W, kh, kw, sh, sw, ph, pw, oh, ow, dx);
}

extern "C" __global__ void avgpool_backward_f64(long long total, const double* __restrict__ dy, int H, int W,
                                                int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                                double* __restrict__ dx) {
  avgpool_backward_impl<double>(total, dy, H, W, kh, kw, sh, sw, ph, pw, oh, ow, dx);
}
