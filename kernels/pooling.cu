// Max and average pooling over NCHW, forward and backward.
//
// Windows: kernel kh x kw with taps dh rows / dw columns apart (dilation, max pooling only), stride sh x sw,
// padding ph, pw on each side; oh, ow come from the launcher (rounded down, or up with ceil_mode), so the last
// window may reach past the padding: every read is bounds-checked against the input.
// maxpool argmax is the winner's offset i*kw + j inside its window (int32). Only input elements compete:
// padding never wins (a window of -inf inputs sends its gradient to an input, as in PyTorch); ties go to the
// first maximum in row-major window order and NaN wins (later NaNs too), as in PyTorch. A window that reads
// no input (possible only with dilation) gives -inf and argmax -1.
// avgpool divides a window's sum by its size clipped to the padded input (count_include_pad != 0) or by
// its number of input elements (count_include_pad == 0), as PyTorch's avg_pool2d does.
// Both backward passes are gathers: one thread per input pixel sums, in row-major kernel order, over the
// windows that cover it. No atomics, no zero-fill, deterministic.
// Totals and flat indices are 64-bit; one image plane (H*W, oh*ow) must fit in int32 (checked by the launcher).
// Compiled after windows.cuh (GRID_STRIDE_LOOP, for_each_covering_tap), which gpucnn/devices/kernels.py puts in
// front; the same text by NVRTC (CuPy) and by g++ (gpucnn.emulator).

template <typename T> __device__ __forceinline__ T negative_infinity();
template <> __device__ __forceinline__ float negative_infinity<float>() {
  return __int_as_float((int)0xff800000u);
}
template <> __device__ __forceinline__ double negative_infinity<double>() {
  return __longlong_as_double((long long)0xfff0000000000000ull);
}

template <typename T>
__device__ void maxpool_forward_impl(long long total, const T* __restrict__ x, int H, int W, int kh, int kw,
                                     int sh, int sw, int ph, int pw, int dh, int dw, int oh, int ow,
                                     T* __restrict__ y, int* __restrict__ argmax) {
  const int plane = oh * ow;
  GRID_STRIDE_LOOP(idx, total) {  // idx runs over (n*C + c, oy, ox)
    const long long nc = idx / plane;
    const int rem = (int)(idx - nc * plane);
    const int y0 = (rem / ow) * sh - ph, x0 = (rem % ow) * sw - pw;
    const T* src = x + nc * H * W;
    T best = negative_infinity<T>();
    int best_at = -1;
    for (int i = 0; i < kh; ++i) {
      const int yy = y0 + i * dh;
      if (yy < 0) continue;
      if (yy >= H) break;
      for (int j = 0; j < kw; ++j) {
        const int xx = x0 + j * dw;
        if (xx < 0) continue;
        if (xx >= W) break;
        const T v = src[yy * W + xx];
        if (best_at < 0 || v > best || isnan(v)) {
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
                                      int H, int W, int kh, int kw, int sh, int sw, int ph, int pw, int dh,
                                      int dw, int oh, int ow, T* __restrict__ dx) {
  const int plane = oh * ow;
  GRID_STRIDE_LOOP(idx, total) {  // idx runs over (n*C + c, h, w)
    const long long nc = idx / ((long long)H * W);
    const int rem = (int)(idx - nc * H * W);
    const int hp = rem / W + ph, wp = rem % W + pw;
    const T* g = dy + nc * plane;
    const int* arg = argmax + nc * plane;
    T sum = T(0);
    for_each_covering_tap(hp, wp, kh, kw, sh, sw, dh, dw, oh, ow, [&](int i, int j, int oy, int ox) {
      const int o = oy * ow + ox;
      if (arg[o] == i * kw + j) sum += g[o];
    });
    dx[idx] = sum;
  }
}

// The count a window's mean divides by along one axis (the 2-D divisor is the product of the two): its
// size clipped to the padded input, or with count_include_pad == 0 to the input alone.
__device__ __forceinline__ int window_count(int o, int size, int k, int s, int p, int count_include_pad) {
  const int start = o * s - p;
  const int end = min(start + k, size + p);
  return count_include_pad ? end - start : min(end, size) - max(start, 0);
}

template <typename T>
__device__ void avgpool_forward_impl(long long total, const T* __restrict__ x, int H, int W, int kh, int kw,
                                     int sh, int sw, int ph, int pw, int oh, int ow, int count_include_pad,
                                     T* __restrict__ y) {
  const int plane = oh * ow;
  GRID_STRIDE_LOOP(idx, total) {  // idx runs over (n*C + c, oy, ox)
    const long long nc = idx / plane;
    const int rem = (int)(idx - nc * plane);
    const int oy = rem / ow, ox = rem % ow;
    const int y0 = oy * sh - ph, x0 = ox * sw - pw;
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
    const int count = window_count(oy, H, kh, sh, ph, count_include_pad) *
                      window_count(ox, W, kw, sw, pw, count_include_pad);
    y[idx] = sum / T(count);
  }
}

template <typename T>
__device__ void avgpool_backward_impl(long long total, const T* __restrict__ dy, int H, int W, int kh, int kw,
                                      int sh, int sw, int ph, int pw, int oh, int ow, int count_include_pad,
                                      T* __restrict__ dx) {
  const int plane = oh * ow;
  GRID_STRIDE_LOOP(idx, total) {  // idx runs over (n*C + c, h, w)
    const long long nc = idx / ((long long)H * W);
    const int rem = (int)(idx - nc * H * W);
    const int hp = rem / W + ph, wp = rem % W + pw;
    const T* g = dy + nc * plane;
    T sum = T(0);
    for_each_covering_tap(hp, wp, kh, kw, sh, sw, 1, 1, oh, ow, [&](int i, int j, int oy, int ox) {
      sum += g[oy * ow + ox] / T(window_count(oy, H, kh, sh, ph, count_include_pad) *
                                 window_count(ox, W, kw, sw, pw, count_include_pad));
    });
    dx[idx] = sum;
  }
}

extern "C" __global__ void maxpool_forward_f32(long long total, const float* __restrict__ x, int H, int W, int kh,
                                               int kw, int sh, int sw, int ph, int pw, int dh, int dw, int oh,
                                               int ow, float* __restrict__ y, int* __restrict__ argmax) {
  maxpool_forward_impl<float>(total, x, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, y, argmax);
}

extern "C" __global__ void maxpool_forward_f64(long long total, const double* __restrict__ x, int H, int W, int kh,
                                               int kw, int sh, int sw, int ph, int pw, int dh, int dw, int oh,
                                               int ow, double* __restrict__ y, int* __restrict__ argmax) {
  maxpool_forward_impl<double>(total, x, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, y, argmax);
}

extern "C" __global__ void maxpool_backward_f32(long long total, const float* __restrict__ dy,
                                                const int* __restrict__ argmax, int H, int W, int kh, int kw,
                                                int sh, int sw, int ph, int pw, int dh, int dw, int oh, int ow,
                                                float* __restrict__ dx) {
  maxpool_backward_impl<float>(total, dy, argmax, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, dx);
}

extern "C" __global__ void maxpool_backward_f64(long long total, const double* __restrict__ dy,
                                                const int* __restrict__ argmax, int H, int W, int kh, int kw,
                                                int sh, int sw, int ph, int pw, int dh, int dw, int oh, int ow,
                                                double* __restrict__ dx) {
  maxpool_backward_impl<double>(total, dy, argmax, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, dx);
}

extern "C" __global__ void avgpool_forward_f32(long long total, const float* __restrict__ x, int H, int W, int kh,
                                               int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                               int count_include_pad, float* __restrict__ y) {
  avgpool_forward_impl<float>(total, x, H, W, kh, kw, sh, sw, ph, pw, oh, ow, count_include_pad, y);
}

extern "C" __global__ void avgpool_forward_f64(long long total, const double* __restrict__ x, int H, int W, int kh,
                                               int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                               int count_include_pad, double* __restrict__ y) {
  avgpool_forward_impl<double>(total, x, H, W, kh, kw, sh, sw, ph, pw, oh, ow, count_include_pad, y);
}

extern "C" __global__ void avgpool_backward_f32(long long total, const float* __restrict__ dy, int H, int W,
                                                int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                                int count_include_pad, float* __restrict__ dx) {
  avgpool_backward_impl<float>(total, dy, H, W, kh, kw, sh, sw, ph, pw, oh, ow, count_include_pad, dx);
}

extern "C" __global__ void avgpool_backward_f64(long long total, const double* __restrict__ dy, int H, int W,
                                                int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                                int count_include_pad, double* __restrict__ dx) {
  avgpool_backward_impl<double>(total, dy, H, W, kh, kw, sh, sw, ph, pw, oh, ow, count_include_pad, dx);
}
