// Softmax cross-entropy, as torch.nn.functional.cross_entropy(logits, labels, weight, ignore_index=,
// reduction=, label_smoothing=): per sample (with w the class weights, all 1 without them, e the smoothing)
//     loss_n = (1 - e) * w[y_n] * -log p[n, y_n] + (e / K) * sum_c w[c] * -log p[n, c],
// 0 for an ignored sample, NaN for a label outside [0, K) that is not ignored (a GPU cannot raise).
//
// xent_forward: one thread per sample row. log p = (x - max) - log(sum(exp(x - max))), the shift in T (so
// that logits - max may overflow to -inf, as in numpy), the sum of exponentials and the smoothing sum in
// double; writes losses (N,), wy (N,) = w[y_n] (0 if ignored) and stats (N, 2) = (max, log-sum-exp) for
// the backward pass. A product with a class weight of 0 is 0 (never 0 * inf).
// xent_reduce: out (2,) = (the loss, the mean's denominator sum(wy)); the loss is sum(losses), divided by
// the denominator when mean (NaN when every sample is ignored, as in PyTorch). One thread adds the N
// values in order (double accumulators): deterministic, and N is a batch.
// xent_backward: one thread per logit: d loss / d x[n, c] =
//     (1-e)*w[y]*(p - [c == y]) + (e/K)*(p*sum(w) - w[c])   (0 for an ignored sample, NaN for a bad label),
// times the upstream gradient (dout_mode 0: the scalar dout_value; 1: dout[0]; 2: dout[n], reduction
// 'none'), divided by the mean's denominator red[1] when mean.
// Scalars from the host in T: keep = 1 - e (0 when e == 1: no NLL term), eps_over_k = e / K, wsum = sum(w)
// (K without weights). Compiled after windows.cuh (GRID_STRIDE_LOOP).

template <typename T> __device__ __forceinline__ T quiet_nan();
template <> __device__ __forceinline__ float quiet_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double quiet_nan<double>() {
  return __longlong_as_double(0x7ff8000000000000ll);
}
__device__ __forceinline__ float exp_of(float v) { return expf(v); }
__device__ __forceinline__ double exp_of(double v) { return exp(v); }

// The label's place: safe (a class index that exists), whether the sample is ignored, whether it is valid.
__device__ __forceinline__ long long label_of(long long y, int K, long long ignore_index, bool* ignored, bool* valid) {
  *ignored = y == ignore_index;
  *valid = *ignored || (y >= 0 && y < K);
  return (*valid && !*ignored) ? y : 0;
}

template <typename T>
__device__ void xent_forward_impl(long long N, int K, const T* __restrict__ logits,
                                  const long long* __restrict__ labels, const T* __restrict__ weight, int has_weight,
                                  long long ignore_index, int smoothing, T keep, T eps_over_k,
                                  T* __restrict__ losses, T* __restrict__ wy, T* __restrict__ stats) {
  GRID_STRIDE_LOOP(n, N) {
    const T* row = logits + n * K;
    T m = row[0];
    for (int c = 1; c < K; ++c) {
      const T v = row[c];
      if (v > m || isnan(v)) m = v;
      if (isnan(m)) break;
    }
    double sum = 0.0;
    for (int c = 0; c < K; ++c) sum += exp((double)(row[c] - m));
    const T ls = (T)log(sum);
    stats[2 * n] = m;
    stats[2 * n + 1] = ls;
    bool ignored, valid;
    const long long safe = label_of(labels[n], K, ignore_index, &ignored, &valid);
    const T w_y = ignored ? T(0) : (has_weight ? weight[safe] : T(1));
    T loss = w_y == T(0) ? T(0) : w_y * -((row[safe] - m) - ls);
    if (smoothing) {
      double smooth = 0.0;
      for (int c = 0; c < K; ++c) {
        const T nlogp = -((row[c] - m) - ls);
        if (!has_weight) smooth += nlogp;
        else if (weight[c] != T(0)) smooth += nlogp * weight[c];
      }
      const T nll = keep == T(0) ? T(0) : keep * loss;
      loss = nll + eps_over_k * (ignored ? T(0) : (T)smooth);
    }
    losses[n] = valid ? loss : quiet_nan<T>();
    wy[n] = w_y;
  }
}

template <typename T>
__device__ void xent_reduce_impl(long long total, long long N, const T* __restrict__ losses,
                                 const T* __restrict__ wy, int mean, T* __restrict__ out) {
  GRID_STRIDE_LOOP(i, total) {  // total is 1: one thread adds the batch in order
    double s = 0.0, d = 0.0;
    for (long long n = 0; n < N; ++n) {
      s += losses[n];
      d += wy[n];
    }
    out[0] = mean ? (T)s / (T)d : (T)s;
    out[1] = (T)d;
  }
}

template <typename T>
__device__ void xent_backward_impl(long long total, int K, const T* __restrict__ logits, const T* __restrict__ stats,
                                   const long long* __restrict__ labels, const T* __restrict__ weight, int has_weight,
                                   long long ignore_index, int smoothing, T keep, T eps_over_k, T wsum,
                                   const T* __restrict__ dout, int dout_mode, T dout_value, const T* __restrict__ red,
                                   int mean, T* __restrict__ grad) {
  GRID_STRIDE_LOOP(idx, total) {  // idx runs over (n, c)
    const long long n = idx / K;
    const int c = (int)(idx - n * K);
    bool ignored, valid;
    const long long safe = label_of(labels[n], K, ignore_index, &ignored, &valid);
    const T p = exp_of((logits[idx] - stats[2 * n]) - stats[2 * n + 1]);
    const T w_y = ignored ? T(0) : (has_weight ? weight[safe] : T(1));
    const T coef = smoothing ? keep * w_y : w_y;
    T g = p * coef - (c == safe ? coef : T(0));
    if (smoothing) {
      const T sw = ignored ? T(0) : wsum;
      g += eps_over_k * (p * sw - (sw == T(0) ? T(0) : (has_weight ? weight[c] : T(1))));
    }
    if (!valid) g = quiet_nan<T>();
    T d = dout_mode == 0 ? dout_value : (dout_mode == 1 ? dout[0] : dout[n]);
    if (mean) d = d / red[1];
    grad[idx] = ignored ? T(0) : g * d;
  }
}

extern "C" __global__ void xent_forward_f32(long long N, int K, const float* __restrict__ logits,
                                            const long long* __restrict__ labels, const float* __restrict__ weight,
                                            int has_weight, long long ignore_index, int smoothing, float keep,
                                            float eps_over_k, float* __restrict__ losses, float* __restrict__ wy,
                                            float* __restrict__ stats) {
  xent_forward_impl<float>(N, K, logits, labels, weight, has_weight, ignore_index, smoothing, keep, eps_over_k,
                           losses, wy, stats);
}

extern "C" __global__ void xent_forward_f64(long long N, int K, const double* __restrict__ logits,
                                            const long long* __restrict__ labels, const double* __restrict__ weight,
                                            int has_weight, long long ignore_index, int smoothing, double keep,
                                            double eps_over_k, double* __restrict__ losses, double* __restrict__ wy,
                                            double* __restrict__ stats) {
  xent_forward_impl<double>(N, K, logits, labels, weight, has_weight, ignore_index, smoothing, keep, eps_over_k,
                            losses, wy, stats);
}

extern "C" __global__ void xent_reduce_f32(long long total, long long N, const float* __restrict__ losses,
                                           const float* __restrict__ wy, int mean, float* __restrict__ out) {
  xent_reduce_impl<float>(total, N, losses, wy, mean, out);
}

extern "C" __global__ void xent_reduce_f64(long long total, long long N, const double* __restrict__ losses,
                                           const double* __restrict__ wy, int mean, double* __restrict__ out) {
  xent_reduce_impl<double>(total, N, losses, wy, mean, out);
}

extern "C" __global__ void xent_backward_f32(long long total, int K, const float* __restrict__ logits,
                                             const float* __restrict__ stats, const long long* __restrict__ labels,
                                             const float* __restrict__ weight, int has_weight,
                                             long long ignore_index, int smoothing, float keep, float eps_over_k,
                                             float wsum, const float* __restrict__ dout, int dout_mode,
                                             float dout_value, const float* __restrict__ red, int mean,
                                             float* __restrict__ grad) {
  xent_backward_impl<float>(total, K, logits, stats, labels, weight, has_weight, ignore_index, smoothing, keep,
                            eps_over_k, wsum, dout, dout_mode, dout_value, red, mean, grad);
}

extern "C" __global__ void xent_backward_f64(long long total, int K, const double* __restrict__ logits,
                                             const double* __restrict__ stats, const long long* __restrict__ labels,
                                             const double* __restrict__ weight, int has_weight,
                                             long long ignore_index, int smoothing, double keep, double eps_over_k,
                                             double wsum, const double* __restrict__ dout, int dout_mode,
                                             double dout_value, const double* __restrict__ red, int mean,
                                             double* __restrict__ grad) {
  xent_backward_impl<double>(total, K, logits, stats, labels, weight, has_weight, ignore_index, smoothing, keep,
                             eps_over_k, wsum, dout, dout_mode, dout_value, red, mean, grad);
}
