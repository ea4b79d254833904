// Shared by every kernels/*.cu: gpucnn/devices/kernels.py compiles each source after this header
// (kernels.source_code), so the sources need no include path; NVRTC (CuPy) and g++ (gpucnn.emulator) compile
// the same text.

#define GRID_STRIDE_LOOP(i, n)                                                   \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
       i += (long long)blockDim.x * gridDim.x)

// The taps t of a kernel with stride s and dilation d that can cover padded position p, i.e. those with
// (p - t*d) divisible by s: the first such t (k or more if none) and the step between them, s / gcd(s, d).
__device__ __forceinline__ int first_tap(int p, int s, int d, int k, int* step) {
  int m = 1;
  while ((m * d) % s != 0) ++m;  // at most s iterations
  *step = m;
  int t = 0;
  while (t < m && t < k && (p - t * d) % s != 0) ++t;
  return t < m ? t : k;
}

// For a gather (col2im, pooling backward: one thread per input pixel): calls visit(i, j, oy, ox) for each
// window (oy, ox) whose tap (i, j) covers padded position (hp, wp), taps in row-major order.
template <typename Visit>
__device__ __forceinline__ void for_each_covering_tap(int hp, int wp, int kh, int kw, int sh, int sw, int dh,
                                                      int dw, int oh, int ow, Visit visit) {
  int step_h, step_w;
  const int i0 = first_tap(hp, sh, dh, kh, &step_h), j0 = first_tap(wp, sw, dw, kw, &step_w);
  for (int i = i0; i < kh && i * dh <= hp; i += step_h) {
    const int oy = (hp - i * dh) / sh;
    if (oy >= oh) continue;
    for (int j = j0; j < kw && j * dw <= wp; j += step_w) {
      const int ox = (wp - j * dw) / sw;
      if (ox < ow) visit(i, j, oy, ox);
    }
  }
}
