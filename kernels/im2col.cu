// im2col and its adjoint col2im for convolution as one plain GEMM over all samples.
//
// Column layout: (N, oh, ow, kh, kw, C), C-contiguous: one row of kh*kw*C per output position. The image
// side is NCHW (x in im2col, the result in col2im), read and written in place: no transposes on the device.
// Padding reads as zero.
// col2im is a gather (one thread per NCHW input element, taps summed in row-major kernel order, as the CPU
// twin in gpucnn/ops.py sums them), so it needs no atomics, no zero-fill, and gives bit-identical results
// run to run.
// Totals and flat indices are 64-bit; one image plane (H*W, oh*ow) and kh*kw must fit in int32 (checked by
// the launcher). Self-contained on purpose: compiled as is by NVRTC (CuPy) and by g++ (gpucnn.emulator).

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
__device__ void im2col_impl(long long total, const T* __restrict__ x, int C, int H, int W, int kh, int kw,
                            int sh, int sw, int ph, int pw, int oh, int ow, T* __restrict__ col) {
  const long long row = (long long)kh * kw * C;  // one column row: all taps of one output position
  GRID_STRIDE_LOOP(idx, total) {                 // idx runs over (n, oy, ox, i, j, c), coalesced writes
    const long long pos = idx / row;             // n*oh*ow + oy*ow + ox
    const long long k = idx - pos * row;         // (i*kw + j)*C + c
    const int tap = (int)(k / C), c = (int)(k - (long long)tap * C);
    const long long n = pos / ((long long)oh * ow);
    const int rem = (int)(pos - n * oh * ow);
    const int y = (rem / ow) * sh - ph + tap / kw, xx = (rem % ow) * sw - pw + tap % kw;
    col[idx] = (y >= 0 && y < H && xx >= 0 && xx < W) ? x[((n * C + c) * H + y) * W + xx] : T(0);
  }
}

template <typename T>
__device__ void col2im_impl(long long total, const T* __restrict__ col, int C, int H, int W, int kh, int kw,
                            int sh, int sw, int ph, int pw, int oh, int ow, T* __restrict__ x) {
  const long long row = (long long)kh * kw * C;
  const int plane = H * W;
  GRID_STRIDE_LOOP(idx, total) {  // idx runs over (n, c, h, w) of dx
    const long long nc = idx / plane;
    const int rem = (int)(idx - nc * plane);
    const long long n = nc / C;
    const int c = (int)(nc - n * C);
    const int hp = rem / W + ph, wp = rem % W + pw;  // position in the padded image
    const T* src = col + n * oh * ow * row + c;
    const int j0 = first_tap(wp, sw, ow);
    T sum = T(0);
    for (int i = first_tap(hp, sh, oh); i < kh && i <= hp; i += sh) {
      const int oy = (hp - i) / sh;
      for (int j = j0; j < kw && j <= wp; j += sw) {
        const int ox = (wp - j) / sw;
        sum += src[((long long)oy * ow + ox) * row + (long long)(i * kw + j) * C];
      }
    }
    x[idx] = sum;
  }
}

extern "C" __global__ void im2col_f32(long long total, const float* __restrict__ x, int C, int H, int W,
                                      int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                      float* __restrict__ col) {
  im2col_impl<float>(total, x, C, H, W, kh, kw, sh, sw, ph, pw, oh, ow, col);
}

extern "C" __global__ void im2col_f64(long long total, const double* __restrict__ x, int C, int H, int W,
                                      int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                      double* __restrict__ col) {
  im2col_impl<double>(total, x, C, H, W, kh, kw, sh, sw, ph, pw, oh, ow, col);
}

extern "C" __global__ void col2im_f32(long long total, const float* __restrict__ col, int C, int H, int W,
                                      int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                      float* __restrict__ x) {
  col2im_impl<float>(total, col, C, H, W, kh, kw, sh, sw, ph, pw, oh, ow, x);
}

extern "C" __global__ void col2im_f64(long long total, const double* __restrict__ col, int C, int H, int W,
                                      int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                                      double* __restrict__ x) {
  col2im_impl<double>(total, col, C, H, W, kh, kw, sh, sw, ph, pw, oh, ow, x);
}
