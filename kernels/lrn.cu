// Local response normalisation across channels (torch.nn.LocalResponseNorm), forward and backward, NCHW.
//
// forward: d_c = k + coef * sum_{c' = c - before}^{c + after} x_c'^2 (channels outside [0, C) count as 0),
// with coef = alpha / size, before = size / 2, after = (size - 1) / 2; writes y = x * d^-beta, d and
// scale = d^-beta. backward: dx_j = dout_j * scale_j - c2 * x_j * sum_{c = j - before}^{j + after}
// dout_c * y_c / d_c (the transposed window: before = (size - 1) / 2, after = size / 2; c2 = 2 beta alpha /
// size). Each window is summed in the order of the numpy twin (gpucnn/devices/fused_twins.py): the channel
// itself, then c+1 .. c+after, then c-1 .. c-before. One thread per element, grid-stride, 64-bit indices.
// Compiled after windows.cuh (GRID_STRIDE_LOOP).

__device__ __forceinline__ float pow_of(float a, float b) { return powf(a, b); }
__device__ __forceinline__ double pow_of(double a, double b) { return pow(a, b); }

template <typename T>
__device__ void lrn_forward_impl(long long total, const T* __restrict__ x, int C, long long HW, int before, int after,
                                 T coef, T k, T neg_beta, T* __restrict__ y, T* __restrict__ d,
                                 T* __restrict__ scale) {
  GRID_STRIDE_LOOP(idx, total) {  // idx runs over (n, c, h, w)
    const int c = (int)((idx / HW) % C);
    const T* pixel = x + (idx - c * HW);  // channel 0 of this pixel
    const T v = x[idx];
    T s = v * v;
    for (int o = 1; o <= after && c + o < C; ++o) {
      const T a = pixel[(c + o) * HW];
      s += a * a;
    }
    for (int o = 1; o <= before && c - o >= 0; ++o) {
      const T a = pixel[(c - o) * HW];
      s += a * a;
    }
    const T dd = s * coef + k;
    const T sc = pow_of(dd, neg_beta);
    d[idx] = dd;
    scale[idx] = sc;
    y[idx] = v * sc;
  }
}

template <typename T>
__device__ void lrn_backward_impl(long long total, const T* __restrict__ x, const T* __restrict__ y,
                                  const T* __restrict__ d, const T* __restrict__ scale, const T* __restrict__ dout,
                                  int C, long long HW, int before, int after, T c2, T* __restrict__ dx) {
  GRID_STRIDE_LOOP(idx, total) {
    const int c = (int)((idx / HW) % C);
    const long long base = idx - c * HW;
    T u = dout[idx] * y[idx] / d[idx];
    for (int o = 1; o <= after && c + o < C; ++o) {
      const long long i = base + (c + o) * HW;
      u += dout[i] * y[i] / d[i];
    }
    for (int o = 1; o <= before && c - o >= 0; ++o) {
      const long long i = base + (c - o) * HW;
      u += dout[i] * y[i] / d[i];
    }
    dx[idx] = dout[idx] * scale[idx] - c2 * x[idx] * u;
  }
}

extern "C" __global__ void lrn_forward_f32(long long total, const float* __restrict__ x, int C, long long HW,
                                           int before, int after, float coef, float k, float neg_beta,
                                           float* __restrict__ y, float* __restrict__ d, float* __restrict__ scale) {
  lrn_forward_impl<float>(total, x, C, HW, before, after, coef, k, neg_beta, y, d, scale);
}

extern "C" __global__ void lrn_forward_f64(long long total, const double* __restrict__ x, int C, long long HW,
                                           int before, int after, double coef, double k, double neg_beta,
                                           double* __restrict__ y, double* __restrict__ d,
                                           double* __restrict__ scale) {
  lrn_forward_impl<double>(total, x, C, HW, before, after, coef, k, neg_beta, y, d, scale);
}

extern "C" __global__ void lrn_backward_f32(long long total, const float* __restrict__ x, const float* __restrict__ y,
                                            const float* __restrict__ d, const float* __restrict__ scale,
                                            const float* __restrict__ dout, int C, long long HW, int before,
                                            int after, float c2, float* __restrict__ dx) {
  lrn_backward_impl<float>(total, x, y, d, scale, dout, C, HW, before, after, c2, dx);
}

extern "C" __global__ void lrn_backward_f64(long long total, const double* __restrict__ x,
                                            const double* __restrict__ y, const double* __restrict__ d,
                                            const double* __restrict__ scale, const double* __restrict__ dout, int C,
                                            long long HW, int before, int after, double c2,
                                            double* __restrict__ dx) {
  lrn_backward_impl<double>(total, x, y, d, scale, dout, C, HW, before, after, c2, dx);
}
