// Multi-tensor optimizer updates: one launch updates a contiguous range of a flat parameter buffer from the
// same range of the flat gradient buffer and of each state buffer (gpucnn/devices/flat.py lays them out),
// with torch.optim's update rules, each operation in the order and rounding of the numpy code in
// gpucnn/devices/step_twins.py (one rounding per operation, in T). Learning rate, bias corrections and every
// other hyper-parameter arrive as kernel scalars in T (computed on the host from the step count in double, as
// numpy takes Python floats), so a step neither syncs nor uploads. Flags are ints; a state pointer a rule does
// not use may be any array (it is not read). One thread per element, grid-stride, 64-bit indices.
// Compiled after windows.cuh (GRID_STRIDE_LOOP).

__device__ __forceinline__ float sqrt_of(float v) { return sqrtf(v); }
__device__ __forceinline__ double sqrt_of(double v) { return sqrt(v); }

// numpy.maximum: NaN from either side.
template <typename T> __device__ __forceinline__ T maximum_of(T a, T b) { return (a >= b || isnan(a)) ? a : b; }

// The gradient with L2 weight decay: g + wd * p, computed as numpy's (p * wd) + g.
template <typename T> __device__ __forceinline__ T decayed(T g, T p, int decay, T wd) {
  return decay ? p * wd + g : g;
}

// SGD (torch.optim.SGD): momentum buffer started at the first gradient, undamped (first != 0); dampening as
// keep = 1 - dampening (damped != 0); Nesterov: g + momentum * buf.
template <typename T>
__device__ void sgd_step_impl(long long total, T* p, const T* g, T* buf, T lr, int decay, T wd, int use_momentum,
                              T momentum, int first, int damped, T keep, int nesterov) {
  GRID_STRIDE_LOOP(i, total) {
    T gi = decayed(g[i], p[i], decay, wd);
    if (use_momentum) {
      T b;
      if (first) {
        b = gi;
      } else {
        b = buf[i] * momentum;
        b = b + (damped ? keep * gi : gi);
      }
      buf[i] = b;
      gi = nesterov ? b * momentum + gi : b;
    }
    p[i] = p[i] - lr * gi;
  }
}

// AdaGrad (torch.optim.Adagrad): clr = lr / (1 + (step - 1) * lr_decay) from the host.
template <typename T>
__device__ void adagrad_step_impl(long long total, T* p, const T* g, T* sum, T clr, int decay, T wd, T eps) {
  GRID_STRIDE_LOOP(i, total) {
    const T gi = decayed(g[i], p[i], decay, wd);
    const T s = sum[i] + gi * gi;
    sum[i] = s;
    T t = sqrt_of(s) + eps;
    t = gi / t;
    t = t * clr;
    p[i] = p[i] - t;
  }
}

// RMSprop (torch.optim.RMSprop), optionally centred and with momentum; one_minus_alpha = 1 - alpha.
template <typename T>
__device__ void rmsprop_step_impl(long long total, T* p, const T* g, T* square_avg, T* grad_avg, T* buf, T lr,
                                  int decay, T wd, T alpha, T one_minus_alpha, T eps, int centered, int use_momentum,
                                  T momentum) {
  GRID_STRIDE_LOOP(i, total) {
    const T gi = decayed(g[i], p[i], decay, wd);
    T sq = square_avg[i] * alpha;
    T t = gi * gi;
    t = t * one_minus_alpha;
    sq = sq + t;
    square_avg[i] = sq;
    if (centered) {
      T ga = grad_avg[i];
      t = gi - ga;
      t = t * one_minus_alpha;
      ga = ga + t;
      grad_avg[i] = ga;
      t = ga * ga;
      t = sq - t;
      t = sqrt_of(t);
    } else {
      t = sqrt_of(sq);
    }
    t = t + eps;
    t = gi / t;
    if (use_momentum) {
      T b = buf[i] * momentum;
      b = b + t;
      buf[i] = b;
      t = b * lr;
    } else {
      t = t * lr;
    }
    p[i] = p[i] - t;
  }
}

// Adam and AdamW (torch.optim.Adam, AdamW), optionally AMSGrad. decoupled: p *= shrink (= 1 - lr * wd)
// first; else L2 decay into the gradient. step_size = lr / (1 - beta1^step), bc2_sqrt = sqrt(1 - beta2^step).
template <typename T>
__device__ void adam_step_impl(long long total, T* p, const T* g, T* exp_avg, T* exp_avg_sq, T* max_exp_avg_sq,
                               int decay, T wd, int decoupled, T shrink, T one_minus_beta1, T beta2,
                               T one_minus_beta2, int amsgrad, T bc2_sqrt, T eps, T step_size) {
  GRID_STRIDE_LOOP(i, total) {
    T pi = p[i];
    T gi = g[i];
    if (decay) {
      if (decoupled) pi = pi * shrink;
      else gi = pi * wd + gi;
    }
    T m = exp_avg[i];
    T t = gi - m;
    t = t * one_minus_beta1;
    m = m + t;
    exp_avg[i] = m;
    T v = exp_avg_sq[i] * beta2;
    t = gi * gi;
    t = t * one_minus_beta2;
    v = v + t;
    exp_avg_sq[i] = v;
    if (amsgrad) {
      v = maximum_of(max_exp_avg_sq[i], v);
      max_exp_avg_sq[i] = v;
    }
    t = sqrt_of(v);
    t = t / bc2_sqrt;
    t = t + eps;
    t = m / t;
    t = t * step_size;
    p[i] = pi - t;
  }
}

extern "C" __global__ void sgd_step_f32(long long total, float* p, const float* g, float* buf, float lr, int decay,
                                        float wd, int use_momentum, float momentum, int first, int damped,
                                        float keep, int nesterov) {
  sgd_step_impl<float>(total, p, g, buf, lr, decay, wd, use_momentum, momentum, first, damped, keep, nesterov);
}

extern "C" __global__ void adagrad_step_f32(long long total, float* p, const float* g, float* sum, float clr,
                                            int decay, float wd, float eps) {
  adagrad_step_impl<float>(total, p, g, sum, clr, decay, wd, eps);
}

extern "C" __global__ void rmsprop_step_f32(long long total, float* p, const float* g, float* square_avg,
                                            float* grad_avg, float* buf, float lr, int decay, float wd, float alpha,
                                            float one_minus_alpha, float eps, int centered, int use_momentum,
                                            float momentum) {
  rmsprop_step_impl<float>(total, p, g, square_avg, grad_avg, buf, lr, decay, wd, alpha, one_minus_alpha, eps,
                           centered, use_momentum, momentum);
}

extern "C" __global__ void adam_step_f32(long long total, float* p, const float* g, float* exp_avg,
                                         float* exp_avg_sq, float* max_exp_avg_sq, int decay, float wd,
                                         int decoupled, float shrink, float one_minus_beta1, float beta2,
                                         float one_minus_beta2, int amsgrad, float bc2_sqrt, float eps,
                                         float step_size) {
  adam_step_impl<float>(total, p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, decay, wd, decoupled, shrink,
                        one_minus_beta1, beta2, one_minus_beta2, amsgrad, bc2_sqrt, eps, step_size);
}

extern "C" __global__ void sgd_step_f64(long long total, double* p, const double* g, double* buf, double lr,
                                        int decay, double wd, int use_momentum, double momentum, int first,
                                        int damped, double keep, int nesterov) {
  sgd_step_impl<double>(total, p, g, buf, lr, decay, wd, use_momentum, momentum, first, damped, keep, nesterov);
}

extern "C" __global__ void adagrad_step_f64(long long total, double* p, const double* g, double* sum, double clr,
                                            int decay, double wd, double eps) {
  adagrad_step_impl<double>(total, p, g, sum, clr, decay, wd, eps);
}

extern "C" __global__ void rmsprop_step_f64(long long total, double* p, const double* g, double* square_avg,
                                            double* grad_avg, double* buf, double lr, int decay, double wd,
                                            double alpha, double one_minus_alpha, double eps, int centered,
                                            int use_momentum, double momentum) {
  rmsprop_step_impl<double>(total, p, g, square_avg, grad_avg, buf, lr, decay, wd, alpha, one_minus_alpha, eps,
                            centered, use_momentum, momentum);
}

extern "C" __global__ void adam_step_f64(long long total, double* p, const double* g, double* exp_avg,
                                         double* exp_avg_sq, double* max_exp_avg_sq, int decay, double wd,
                                         int decoupled, double shrink, double one_minus_beta1, double beta2,
                                         double one_minus_beta2, int amsgrad, double bc2_sqrt, double eps,
                                         double step_size) {
  adam_step_impl<double>(total, p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, decay, wd, decoupled, shrink,
                         one_minus_beta1, beta2, one_minus_beta2, amsgrad, bc2_sqrt, eps, step_size);
}
