// What the training loop keeps on the device per step, one launch each:
//
// nonfinite_check: if any of values[0..n) (a flat gradient buffer) or, when has_loss, loss[0] is NaN or
// infinite, first_bad[0] becomes `step` unless it already holds a step (>= 0): the threads that find a
// non-finite value all write the same number with atomicCAS from -1, so the result does not depend on their
// order. Threads run over n + has_loss elements (the last is the loss).
// accumulate_metrics: per sample row n of logits (N, K), correct[0] += 1 when its argmax (the first maximum;
// the first NaN, as numpy.argmax) is labels[n] (integer atomics: exact in any order); and loss_sum[0] +=
// double(loss[0] * count) (one thread), as `loss_sum += loss * count` with numpy's types (float64 sum, the
// product in T).
// Compiled after windows.cuh (GRID_STRIDE_LOOP).

template <typename T>
__device__ void nonfinite_check_impl(long long total, long long n, const T* __restrict__ values,
                                     const T* __restrict__ loss, long long step, long long* first_bad) {
  GRID_STRIDE_LOOP(i, total) {
    const T v = i < n ? values[i] : loss[0];
    if (!isfinite(v)) {
      atomicCAS((unsigned long long*)first_bad, (unsigned long long)-1ll, (unsigned long long)step);
    }
  }
}

template <typename T>
__device__ void accumulate_metrics_impl(long long N, int K, const T* __restrict__ logits,
                                        const long long* __restrict__ labels, const T* __restrict__ loss, T count,
                                        double* loss_sum, long long* correct) {
  GRID_STRIDE_LOOP(n, N) {
    const T* row = logits + n * K;
    T best = row[0];
    int arg = 0;
    for (int c = 1; c < K && !isnan(best); ++c) {
      const T v = row[c];
      if (v > best || isnan(v)) {
        best = v;
        arg = c;
      }
    }
    if (arg == labels[n]) atomicAdd((unsigned long long*)correct, 1ull);
    if (n == 0) loss_sum[0] += (double)(loss[0] * count);
  }
}

extern "C" __global__ void nonfinite_check_f32(long long total, long long n, const float* __restrict__ values,
                                               const float* __restrict__ loss, long long step, long long* first_bad) {
  nonfinite_check_impl<float>(total, n, values, loss, step, first_bad);
}

extern "C" __global__ void nonfinite_check_f64(long long total, long long n, const double* __restrict__ values,
                                               const double* __restrict__ loss, long long step,
                                               long long* first_bad) {
  nonfinite_check_impl<double>(total, n, values, loss, step, first_bad);
}

extern "C" __global__ void accumulate_metrics_f32(long long N, int K, const float* __restrict__ logits,
                                                  const long long* __restrict__ labels, const float* __restrict__ loss,
                                                  float count, double* loss_sum, long long* correct) {
  accumulate_metrics_impl<float>(N, K, logits, labels, loss, count, loss_sum, correct);
}

extern "C" __global__ void accumulate_metrics_f64(long long N, int K, const double* __restrict__ logits,
                                                  const long long* __restrict__ labels,
                                                  const double* __restrict__ loss, double count, double* loss_sum,
                                                  long long* correct) {
  accumulate_metrics_impl<double>(N, K, logits, labels, loss, count, loss_sum, correct);
}
