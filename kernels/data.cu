// A training batch gathered on the device from a device-resident uint8 dataset (N_all, C, H, W): out (B, C, H,
// W) in T and its labels, in one launch.
//
// draws (B, 4) int32, one row per sample: (image index, crop row offset dy, crop column offset dx, flip), made
// on the host for a whole epoch and uploaded once. Sample b is image draws[b][0]; with crops (has_crop),
// shifted by (dy, dx) - pad inside the image zero-padded by `pad` on each side (a pixel of the padding reads
// 0), after a left-right mirror when flip != 0 (has_flip), in the order of gpucnn.data's host loader (crop the
// padded image, then mirror the crop); then
// normalised as (value * scale[c]) - shift[c] (two roundings, as numpy's multiply then subtract). The threads of
// pixel (c, h, w) = (0, 0, 0) also copy the label. One thread per output element, grid-stride, 64-bit indices.
// Compiled after windows.cuh (GRID_STRIDE_LOOP).

template <typename T>
__device__ void gather_batch_impl(long long total, const unsigned char* __restrict__ images,
                                  const long long* __restrict__ labels, const int* __restrict__ draws, int has_crop,
                                  int has_flip, int pad, int C, int H, int W, const T* __restrict__ scale,
                                  const T* __restrict__ shift, T* __restrict__ out, long long* __restrict__ out_labels) {
  GRID_STRIDE_LOOP(idx, total) {  // idx runs over (b, c, h, w) of out
    const int w = (int)(idx % W);
    long long r = idx / W;
    const int h = (int)(r % H);
    r /= H;
    const int c = (int)(r % C);
    const long long b = r / C;
    const int* draw = draws + 4 * b;
    const long long src = draw[0];
    int x = (has_flip && draw[3]) ? W - 1 - w : w;
    int y = h;
    if (has_crop) {
      y += draw[1] - pad;
      x += draw[2] - pad;
    }
    const unsigned char raw = (y >= 0 && y < H && x >= 0 && x < W) ? images[((src * C + c) * H + y) * W + x] : 0;
    const T scaled = (T)raw * scale[c];
    out[idx] = scaled - shift[c];
    if (c == 0 && h == 0 && w == 0) out_labels[b] = labels[src];
  }
}

extern "C" __global__ void gather_batch_f32(long long total, const unsigned char* __restrict__ images,
                                            const long long* __restrict__ labels, const int* __restrict__ draws,
                                            int has_crop, int has_flip, int pad, int C, int H, int W,
                                            const float* __restrict__ scale, const float* __restrict__ shift,
                                            float* __restrict__ out, long long* __restrict__ out_labels) {
  gather_batch_impl<float>(total, images, labels, draws, has_crop, has_flip, pad, C, H, W, scale, shift, out,
                           out_labels);
}

extern "C" __global__ void gather_batch_f64(long long total, const unsigned char* __restrict__ images,
                                            const long long* __restrict__ labels, const int* __restrict__ draws,
                                            int has_crop, int has_flip, int pad, int C, int H, int W,
                                            const double* __restrict__ scale, const double* __restrict__ shift,
                                            double* __restrict__ out, long long* __restrict__ out_labels) {
  gather_batch_impl<double>(total, images, labels, draws, has_crop, has_flip, pad, C, H, W, scale, shift, out,
                            out_labels);
}
