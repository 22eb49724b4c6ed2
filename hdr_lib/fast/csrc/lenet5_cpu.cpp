// LeNet-5's training step on the CPU (the paper's variant: 28x28 input, no padding), as one native operator:
// the loss and the gradients of all ten parameters, what F.cross_entropy(model(x), y).backward() gives.
//
// hdr_lib.fast.torch_cpu.train_step computes the same with PyTorch operators called from Python. On a small CPU that
// leaves much of the step to general kernels far from the arithmetic they need at these shapes (1 and 6 input
// channels, 8x8 to 24x24 maps, a batch of 64), to scalar pooling loops, and to calling a hundred operators from
// Python. Here:
//  - each convolution, with its ReLU and 2x2 max pooling, is one loop forward and one backward, written with
//    16-lane vectors that the compiler maps onto the CPU's (AVX-512, AVX2, NEON); pooling compares whole vectors
//    and sends each window's gradient to its first maximum in row-major order, as max_pool2d does, ties included;
//  - conv1 splits each image by column parity, so that the four corners of 12 pooling windows are four vectors;
//    its forward pass sums all six channels' corners of a row of windows at once (24 vectors), loading each input
//    vector once for all of them, and its backward pass keeps a group of taps' sums in registers over the rows;
//  - rows are read and written as whole vectors (12 of 16 lanes), not element by element;
//  - conv2 holds a pixel's 16 output channels in one vector; its output is never stored;
//  - the fully connected layers call ATen (MKL), the loss is log_softmax and nll_loss as in F.cross_entropy;
//  - images are split over the threads (at::parallel_for); the weight gradients are summed in a fixed number of
//    chunks, then over chunks, so a run computes the same numbers whatever the number of threads;
//  - built twice: for AVX-512 (32 registers) and, with HDR_AVX2 and -mno-avx512f, for AVX2 (16 registers of 8
//    floats), where the loops keep fewer sums in registers at a time; the sums are the same, term by term.
//
// Rounding: sums run in another order than oneDNN's and MKL's, so values differ in the last bits; the tests compare
// the loss and every gradient with autograd's on the module.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kIn = 28;   // input side
constexpr int64_t kK = 5;     // kernel side
constexpr int64_t kP1 = 12;   // pooled side of conv1 (its output is 24 x 24)
constexpr int64_t kCh1 = 6;   // conv1 channels
// A batch's weight gradients are summed in this many chunks, whatever the thread count, so that the result does
// not depend on it (hdr_lib.fast.threads changes it during a run); 8 divides among 1, 2, 4 or 8 threads evenly.
constexpr int64_t kChunks = 8;
constexpr int64_t kPad = 32;  // row length of the column-split image (12 outputs + 4 taps + spare lanes)

// How many sums each loop keeps in registers. AVX-512 has 32 registers of 16 floats; AVX2 (HDR_AVX2, built with
// -mno-avx512f) 16 of 8, so a 16-lane sum takes two and the loops keep fewer at a time. Only the blocking changes:
// every sum adds the same terms in the same order, so both builds compute the same bits.
#if defined(HDR_AVX2)
constexpr int64_t kConv1Channels = 1;  // conv1 forward: channels whose four corners are summed together
constexpr int64_t kConv1TapColumns = 1;  // conv1 backward: tap columns whose 5 sums are kept
constexpr int64_t kConv2Windows = 1;   // conv2 forward: pooling windows of a row summed together
constexpr int64_t kConv2TapRows = 1;   // conv2 backward: tap rows whose 5 sums are kept
constexpr int64_t kInputColumns = 4;   // conv2's input gradient: columns summed together
#define HDR_NS hdr_lenet5_avx2
#else
constexpr int64_t kConv1Channels = 6;
constexpr int64_t kConv1TapColumns = 3;
constexpr int64_t kConv2Windows = 4;
constexpr int64_t kConv2TapRows = 5;
constexpr int64_t kInputColumns = 16;
#define HDR_NS hdr_lenet5
#endif

// 16 floats in a vector register (AVX-512, or two AVX registers), loaded from any address.
typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t i16 __attribute__((vector_size(64), aligned(4)));
typedef uint8_t u8x16 __attribute__((vector_size(16), aligned(1)));  // 16 winning corners, as stored

#if defined(HDR_AVX2)
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t i8 __attribute__((vector_size(32)));
// Without AVX-512, `v16{} + v` is built with 16 scalar stores and one load, which cannot be forwarded: a
// broadcast to 8 lanes, twice, instead.
inline v16 splat(float v) {
  const v8 h = {v, v, v, v, v, v, v, v};
  return __builtin_shufflevector(h, h, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}
#else
inline v16 splat(float v) { return v16{} + v; }
#endif
#if defined(HDR_AVX2)
// Without AVX-512, GCC computes a 16-lane comparison or `mask ? a : b` lane by lane, in scalar code, instead of
// splitting it into two 8-lane instructions: so they are written here as two halves and as bit operations. (The
// same bits: a comparison of each lane, and each lane a or b.)
inline i16 greater(v16 a, v16 b) {
  const v8 a0 = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7);
  const v8 a1 = __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
  const v8 b0 = __builtin_shufflevector(b, b, 0, 1, 2, 3, 4, 5, 6, 7);
  const v8 b1 = __builtin_shufflevector(b, b, 8, 9, 10, 11, 12, 13, 14, 15);
  const i8 lo = a0 > b0, hi = a1 > b1;
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}
inline v16 select(i16 mask, v16 a, v16 b) {
  return reinterpret_cast<v16>((mask & reinterpret_cast<i16>(a)) | (~mask & reinterpret_cast<i16>(b)));
}
inline i16 select(i16 mask, i16 a, i16 b) { return (mask & a) | (~mask & b); }
#else
inline i16 greater(v16 a, v16 b) { return a > b; }
inline v16 select(i16 mask, v16 a, v16 b) { return mask ? a : b; }
inline i16 select(i16 mask, i16 a, i16 b) { return mask ? a : b; }
#endif

// relu(max_pool2d) over 16 windows at once, given their corners in row-major order (top left, top right, bottom
// left, bottom right): the value, and the corner max_pool2d sends the gradient to, its first maximum in row-major
// order, also on ties (0 to 3).
inline void pool_relu(v16 v0, v16 v1, v16 v2, v16 v3, v16& relu, i16& corner) {
  const i16 right_top = greater(v1, v0);
  const v16 top = select(right_top, v1, v0);
  const i16 right_bottom = greater(v3, v2);
  const v16 bottom = select(right_bottom, v3, v2);
  const i16 in_bottom = greater(bottom, top);
  const v16 value = select(in_bottom, bottom, top);
  relu = select(greater(value, splat(0.f)), value, splat(0.f));
  corner = select(in_bottom, 2 - right_bottom, -right_top);  // masks are 0 or -1
}

// One image split by column parity, zero-padded: even[r][m] = x[r][2m], odd[r][m] = x[r][2m + 1]. With it, the
// 12 conv1 outputs at the even (or the odd) columns of a row are one 16-lane vector sum, 12 lanes used.
struct SplitImage {
  alignas(64) float even[kIn][kPad];
  alignas(64) float odd[kIn][kPad];

  explicit SplitImage(const float* x) {
    alignas(64) float row[2 * 16] = {};  // one image row, 28 floats and 4 zeros
    for (int64_t r = 0; r < kIn; ++r) {
      std::memcpy(row, x + r * kIn, kIn * sizeof(float));
#if defined(HDR_AVX2)
      // The same split in 8-lane halves (a 16-lane shuffle would be done lane by lane without AVX-512).
      for (int64_t h = 0; h < 2; ++h) {
        const v8 a = *reinterpret_cast<const v8*>(row + 16 * h), b = *reinterpret_cast<const v8*>(row + 16 * h + 8);
        *reinterpret_cast<v8*>(even[r] + 8 * h) = __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
        *reinterpret_cast<v8*>(odd[r] + 8 * h) = __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
      }
#else
      const v16 lo = *reinterpret_cast<const v16*>(row), hi = *reinterpret_cast<const v16*>(row + 16);
      *reinterpret_cast<v16*>(even[r]) =
          __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
      *reinterpret_cast<v16*>(odd[r]) =
          __builtin_shufflevector(lo, hi, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
#endif
      *reinterpret_cast<v16*>(even[r] + 16) = splat(0.f);
      *reinterpret_cast<v16*>(odd[r] + 16) = splat(0.f);
    }
  }

  // The input under tap (ki, kj) for the outputs at columns 2 m + phase, m = 0..15 (lanes), of output row r.
  inline v16 tap(int64_t r, int64_t ki, int64_t kj, int64_t phase) const {
    const int64_t column = phase + kj;  // column of x = 2 m + column
    const float* row = (column & 1) ? odd[r + ki] : even[r + ki];
    return *reinterpret_cast<const v16*>(row + (column >> 1));
  }
};

// relu(max_pool2d(conv1(x))) for x [B, 1, 28, 28]: out [B, 6, 12, 12], and the corner of each window that
// max_pool2d routes the gradient to: the first maximum in row-major order (0 top left, 1 top right, 2 bottom
// left, 3 bottom right), also on ties.
std::vector<at::Tensor> conv1_pool_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  RECORD_FUNCTION("hdr_lenet5::conv1_pool_forward", std::vector<c10::IValue>());  // a span for the profiler
  const int64_t batch = x.size(0);
  auto out = at::empty({batch, kCh1, kP1, kP1}, x.options());
  auto corner = at::empty({batch, kCh1, kP1, kP1}, x.options().dtype(at::kByte));
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* op = out.data_ptr<float>();
  uint8_t* cp = corner.data_ptr<uint8_t>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const SplitImage image(xp + n * kIn * kIn);
      for (int64_t pi = 0; pi < kP1; ++pi) {
        // For 16 windows (12 used) of row pi, each channel's four corners in row-major order: 24 independent sums,
        // so that each input vector is loaded once for all six channels.
        for (int64_t c0 = 0; c0 < kCh1; c0 += kConv1Channels) {
        v16 v[kConv1Channels][4];
        for (int64_t c = 0; c < kConv1Channels; ++c)
          for (auto& corner_sum : v[c]) corner_sum = splat(bp[c0 + c]);
#pragma GCC unroll 5
        for (int64_t ki = 0; ki < kK; ++ki) {
#pragma GCC unroll 5
          for (int64_t kj = 0; kj < kK; ++kj) {
            const v16 t0 = image.tap(2 * pi, ki, kj, 0), t1 = image.tap(2 * pi, ki, kj, 1);
            const v16 t2 = image.tap(2 * pi + 1, ki, kj, 0), t3 = image.tap(2 * pi + 1, ki, kj, 1);
#pragma GCC unroll 6
            for (int64_t c = 0; c < kConv1Channels; ++c) {
              const v16 wv = splat(wp[(c0 + c) * kK * kK + ki * kK + kj]);
              v[c][0] += wv * t0;
              v[c][1] += wv * t1;
              v[c][2] += wv * t2;
              v[c][3] += wv * t3;
            }
          }
        }
        for (int64_t c = 0; c < kConv1Channels; ++c) {
          v16 relu;
          i16 which;
          pool_relu(v[c][0], v[c][1], v[c][2], v[c][3], relu, which);
          const u8x16 corners = __builtin_convertvector(which, u8x16);
          std::memcpy(op + ((n * kCh1 + c0 + c) * kP1 + pi) * kP1, &relu, kP1 * sizeof(float));
          std::memcpy(cp + ((n * kCh1 + c0 + c) * kP1 + pi) * kP1, &corners, kP1);
        }
        }
      }
    }
  });
  return {out, corner};
}

// For the 12 rows of pooling windows of one image and channel: each window's gradient (none where ReLU cut) and
// its winning corner (di, dj) = (bottom, right), as lane masks, 16 windows (12 used) per row.
struct WindowGradients {
  v16 grad[kP1];
  i16 right[kP1];
  i16 bottom[kP1];
};

// acc[ki * 5 + kj] += the gradient of conv1's weight at tap (ki, kj), for kj = KJ0 .. KJ0 + NKJ - 1. Each lane's
// gradient goes to its window's corner: under tap (ki, kj) that is image row 2 pi + di + ki, column phase dj + kj.
// Pick each lane's value by its corner, then one product per tap, instead of a product for each of the four corners.
template <int64_t KJ0, int64_t NKJ>
inline void tap_gradients(const SplitImage& image, const WindowGradients& windows, v16* acc) {
  v16 a[kK][NKJ];
  for (int64_t ki = 0; ki < kK; ++ki)
    for (int64_t j = 0; j < NKJ; ++j) a[ki][j] = acc[ki * kK + KJ0 + j];
  for (int64_t pi = 0; pi < kP1; ++pi) {
    const v16 gv = windows.grad[pi];
    const i16 right = windows.right[pi], bottom = windows.bottom[pi];
#pragma GCC unroll 5
    for (int64_t j = 0; j < NKJ; ++j) {
      v16 column[kK + 1];  // rows 2 pi + r, r = 0..5, at each lane's column phase
#pragma GCC unroll 6
      for (int64_t r = 0; r <= kK; ++r)
        column[r] = select(right, image.tap(2 * pi, r, KJ0 + j, 1), image.tap(2 * pi, r, KJ0 + j, 0));
#pragma GCC unroll 5
      for (int64_t ki = 0; ki < kK; ++ki) a[ki][j] += gv * select(bottom, column[ki + 1], column[ki]);
    }
  }
  for (int64_t ki = 0; ki < kK; ++ki)
    for (int64_t j = 0; j < NKJ; ++j) acc[ki * kK + KJ0 + j] = a[ki][j];
}

// The gradients of conv1's weight [6, 1, 5, 5] and bias [6], given `grad`, the gradient of the output `out` of
// conv1_pool_forward: each window's gradient goes to its corner, none where ReLU cut (out == 0).
std::vector<at::Tensor> conv1_pool_backward(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& corner,
                                            const at::Tensor& x) {
  RECORD_FUNCTION("hdr_lenet5::conv1_pool_backward", std::vector<c10::IValue>());  // a span for the profiler
  const int64_t batch = x.size(0);
  const int64_t chunks = std::min<int64_t>(batch, kChunks);
  auto partial = at::empty({chunks, kCh1, kK * kK + 1}, x.options());  // per chunk: weight, bias gradient
  const float* gp = grad.data_ptr<float>();
  const float* op = out.data_ptr<float>();
  const uint8_t* cp = corner.data_ptr<uint8_t>();
  const float* xp = x.data_ptr<float>();
  float* pp = partial.data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      v16 acc[kCh1][kK * kK] = {};
      v16 bias_acc[kCh1] = {};
      for (int64_t n = batch * chunk / chunks; n < batch * (chunk + 1) / chunks; ++n) {
        const SplitImage image(xp + n * kIn * kIn);
        for (int64_t c = 0; c < kCh1; ++c) {
          const int64_t at = (n * kCh1 + c) * kP1 * kP1;
          WindowGradients windows;
          for (int64_t pi = 0; pi < kP1; ++pi) {
            alignas(64) float g[16] = {}, o[16] = {};
            alignas(16) uint8_t kb[16] = {};
            std::memcpy(g, gp + at + pi * kP1, kP1 * sizeof(float));
            std::memcpy(o, op + at + pi * kP1, kP1 * sizeof(float));
            std::memcpy(kb, cp + at + pi * kP1, kP1);
            const i16 kv = __builtin_convertvector(*reinterpret_cast<const u8x16*>(kb), i16);
            const i16 relu_passed = greater(*reinterpret_cast<const v16*>(o), splat(0.f));
            windows.grad[pi] = select(relu_passed, *reinterpret_cast<const v16*>(g), splat(0.f));
            windows.right[pi] = -(kv & 1);         // corners 0..3: -1 where the right column won, else 0
            windows.bottom[pi] = -((kv >> 1) & 1);  // -1 where the bottom row won
            bias_acc[c] += windows.grad[pi];
          }
          // Taps in two groups of columns, so that a group's sums stay in registers.
          if constexpr (kConv1TapColumns == 1) {
            tap_gradients<0, 1>(image, windows, acc[c]);
            tap_gradients<1, 1>(image, windows, acc[c]);
            tap_gradients<2, 1>(image, windows, acc[c]);
            tap_gradients<3, 1>(image, windows, acc[c]);
            tap_gradients<4, 1>(image, windows, acc[c]);
          } else {
            tap_gradients<0, 3>(image, windows, acc[c]);
            tap_gradients<3, 2>(image, windows, acc[c]);
          }
        }
      }
      float* p = pp + chunk * kCh1 * (kK * kK + 1);
      for (int64_t c = 0; c < kCh1; ++c) {
        for (int64_t t = 0; t < kK * kK; ++t) {
          float s = 0.f;
          for (int64_t lane = 0; lane < kP1; ++lane) s += acc[c][t][lane];
          p[c * (kK * kK + 1) + t] = s;
        }
        float s = 0.f;
        for (int64_t lane = 0; lane < kP1; ++lane) s += bias_acc[c][lane];
        p[c * (kK * kK + 1) + kK * kK] = s;
      }
    }
  });
  auto total = partial.sum(0);  // [6, 26]
  return {total.narrow(1, 0, kK * kK).reshape({kCh1, 1, kK, kK}).contiguous(), total.select(1, kK * kK).contiguous()};
}

constexpr int64_t kCh2 = 16;  // conv2 channels: one 16-lane vector holds a pixel's channels
constexpr int64_t kC2 = 8;    // conv2 output side
constexpr int64_t kP2 = 4;    // pooled side of conv2
constexpr int64_t kTaps2 = kCh1 * kK * kK;  // 150 weights per output channel

// relu(max_pool2d(conv2(a1))) for a1 [B, 6, 12, 12] and conv2's weight as [6 * 5 * 5, 16] (tap-major, so that a
// tap's 16 output channels are one vector): out [B, 256] in the order torch.flatten gives the NCHW pooled map
// (channel, row, column), and the winning corner of each window as [B, 16 windows, 16 channels]. A pixel's 16
// channels are one vector, so pooling compares whole vectors and conv2's output is never stored.
std::vector<at::Tensor> conv2_pool_forward(const at::Tensor& a1, const at::Tensor& taps, const at::Tensor& bias) {
  RECORD_FUNCTION("hdr_lenet5::conv2_pool_forward", std::vector<c10::IValue>());  // a span for the profiler
  const int64_t batch = a1.size(0);
  auto out = at::empty({batch, kCh2 * kP2 * kP2}, a1.options());
  auto corner = at::empty({batch, kP2 * kP2, kCh2}, a1.options().dtype(at::kByte));
  const float* ap = a1.data_ptr<float>();
  const float* tp = taps.data_ptr<float>();
  const v16 b = *reinterpret_cast<const v16*>(bias.data_ptr<float>());
  float* op = out.data_ptr<float>();
  uint8_t* cp = corner.data_ptr<uint8_t>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const float* a = ap + n * kCh1 * kP1 * kP1;
      for (int64_t pi = 0; pi < kP2; ++pi) {
        for (int64_t pj0 = 0; pj0 < kP2; pj0 += kConv2Windows) {
        constexpr int64_t kPixels = 2 * kConv2Windows;
        // output rows 2 pi and 2 pi + 1, pixels 2 pj0 .. 2 pj0 + kPixels - 1, 16 channels per pixel
        v16 acc[2][kPixels];
        for (auto& row : acc)
          for (auto& pixel : row) pixel = b;
        for (int64_t ci = 0; ci < kCh1; ++ci) {
#pragma GCC unroll 5
          for (int64_t ki = 0; ki < kK; ++ki) {
            const float* row0 = a + ci * kP1 * kP1 + (2 * pi + ki) * kP1 + 2 * pj0;
            const float* row1 = row0 + kP1;
#pragma GCC unroll 5
            for (int64_t kj = 0; kj < kK; ++kj) {
              const v16 w = *reinterpret_cast<const v16*>(tp + ((ci * kK + ki) * kK + kj) * kCh2);
#pragma GCC unroll 8
              for (int64_t j = 0; j < kPixels; ++j) {
                acc[0][j] += w * splat(row0[j + kj]);
                acc[1][j] += w * splat(row1[j + kj]);
              }
            }
          }
        }
        for (int64_t pj = pj0; pj < pj0 + kConv2Windows; ++pj) {
          const int64_t q = 2 * (pj - pj0);
          v16 relu;
          i16 which;
          pool_relu(acc[0][q], acc[0][q + 1], acc[1][q], acc[1][q + 1], relu, which);
          const int64_t window = pi * kP2 + pj;
          for (int64_t co = 0; co < kCh2; ++co) {
            op[n * kCh2 * kP2 * kP2 + co * kP2 * kP2 + window] = relu[co];
            cp[(n * kP2 * kP2 + window) * kCh2 + co] = static_cast<uint8_t>(which[co]);
          }
        }
        }
      }
    }
  });
  return {out, corner};
}

// r[k] = the sum of a[k]'s 16 lanes, for 16 vectors: four rounds of pairing halves, quarters, ... of two vectors.
#if defined(HDR_AVX2)
// The same sums in the same order, in 8-lane vectors: lane j + lane j + 8, then + 4, + 2, + 1 apart.
inline v16 lane_sums(v16 (&a)[16]) {
  v8 h[16];
  for (int64_t k = 0; k < 16; ++k)
    h[k] = __builtin_shufflevector(a[k], a[k], 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(a[k], a[k], 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t k = 0; k < 8; ++k)  // [h0 4 | h1 4], ...
    h[k] = __builtin_shufflevector(h[2 * k], h[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(h[2 * k], h[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15);
  for (int64_t k = 0; k < 4; ++k)  // [h0 2 | h1 2 | h2 2 | h3 2], ...
    h[k] = __builtin_shufflevector(h[2 * k], h[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
           __builtin_shufflevector(h[2 * k], h[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15);
  for (int64_t k = 0; k < 2; ++k)
    h[k] = __builtin_shufflevector(h[2 * k], h[2 * k + 1], 0, 2, 4, 6, 8, 10, 12, 14) +
           __builtin_shufflevector(h[2 * k], h[2 * k + 1], 1, 3, 5, 7, 9, 11, 13, 15);
  return __builtin_shufflevector(h[0], h[1], 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}
#else
inline v16 lane_sums(v16 (&a)[16]) {
  for (int64_t k = 0; k < 8; ++k)  // [a0 8 partial sums | a1 8], [a2 | a3], ...
    a[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int64_t k = 0; k < 4; ++k)  // [a0 4 | a1 4 | a2 4 | a3 4], ...
    a[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  for (int64_t k = 0; k < 2; ++k)  // [a0 2 | a1 2 | ... | a7 2], [a8 2 | ... ]
    a[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  return __builtin_shufflevector(a[0], a[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(a[0], a[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
#endif

// conv2's input gradient for one image, d[ci][y][x] = sum_{co, ki, kj} w[co][ci][ki][kj] g[y - ki][x - kj][co],
// from its output gradient g [8][8][16] and its taps [6][5][5][16]: for each input pixel, a sum of 16-channel
// products over the taps that reach it, then of the 16 lanes (12 pixels of a row at a time).
inline void input_gradient(const float (&g)[kC2][kC2][kCh2], const float* taps, float* d) {
  for (int64_t ci = 0; ci < kCh1; ++ci) {
    for (int64_t y = 0; y < kP1; ++y) {
      v16 acc[16] = {};  // x = 0..11, and 4 left at zero
      if constexpr (kInputColumns >= 16) {
      for (int64_t ki = std::max<int64_t>(0, y - (kC2 - 1)); ki <= std::min<int64_t>(kK - 1, y); ++ki) {
        const float (&row)[kC2][kCh2] = g[y - ki];
#pragma GCC unroll 5
        for (int64_t kj = 0; kj < kK; ++kj) {
          const v16 w = *reinterpret_cast<const v16*>(taps + ((ci * kK + ki) * kK + kj) * kCh2);
#pragma GCC unroll 8
          for (int64_t t = 0; t < kC2; ++t) acc[kj + t] += w * *reinterpret_cast<const v16*>(row[t]);
        }
      }
      } else {
      // The same terms in the same order for each column x, kInputColumns columns at a time.
      for (int64_t x0 = 0; x0 < kP1; x0 += kInputColumns) {
        v16 part[kInputColumns] = {};
        for (int64_t ki = std::max<int64_t>(0, y - (kC2 - 1)); ki <= std::min<int64_t>(kK - 1, y); ++ki) {
          const float (&row)[kC2][kCh2] = g[y - ki];
#pragma GCC unroll 5
          for (int64_t kj = 0; kj < kK; ++kj) {
            const v16 w = *reinterpret_cast<const v16*>(taps + ((ci * kK + ki) * kK + kj) * kCh2);
#pragma GCC unroll 4
            for (int64_t u = 0; u < kInputColumns; ++u) {
              const int64_t t = x0 + u - kj;
              if (t >= 0 && t < kC2) part[u] += w * *reinterpret_cast<const v16*>(row[t]);
            }
          }
        }
        for (int64_t u = 0; u < kInputColumns; ++u) acc[x0 + u] = part[u];
      }
      }
      const v16 sums = lane_sums(acc);
      for (int64_t x = 0; x < kP1; ++x) d[(ci * kP1 + y) * kP1 + x] = sums[x];
    }
  }
}

// Given `grad`, the gradient of conv2_pool_forward's output [B, 256]: the gradient of conv2's input a1
// [B, 6, 12, 12], and those of conv2's taps [150, 16] and bias [16]. conv2's output gradient (each window's
// gradient at its winning corner, none where ReLU cut) is built per image and never stored.
std::vector<at::Tensor> conv2_pool_backward(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& corner,
                                            const at::Tensor& a1, const at::Tensor& taps) {
  RECORD_FUNCTION("hdr_lenet5::conv2_pool_backward", std::vector<c10::IValue>());  // a span for the profiler
  const int64_t batch = a1.size(0);
  const int64_t chunks = std::min<int64_t>(batch, kChunks);
  auto grad_a1 = at::empty({batch, kCh1, kP1, kP1}, a1.options());
  auto partial = at::empty({chunks, kTaps2 + 1, kCh2}, a1.options());  // per chunk: taps, then the bias
  const float* wp = taps.data_ptr<float>();  // [6 * 5 * 5, 16]
  const float* gp = grad.data_ptr<float>();
  const float* op = out.data_ptr<float>();
  const uint8_t* cp = corner.data_ptr<uint8_t>();
  const float* ap = a1.data_ptr<float>();
  float* dp = grad_a1.data_ptr<float>();
  float* pp = partial.data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      v16* tap_grads = reinterpret_cast<v16*>(pp + chunk * (kTaps2 + 1) * kCh2);
      for (int64_t t = 0; t <= kTaps2; ++t) tap_grads[t] = splat(0.f);
      for (int64_t n = batch * chunk / chunks; n < batch * (chunk + 1) / chunks; ++n) {
        // conv2's output gradient, a pixel's 16 channels per vector.
        alignas(64) float g[kC2][kC2][kCh2] = {};
        for (int64_t co = 0; co < kCh2; ++co) {
          for (int64_t window = 0; window < kP2 * kP2; ++window) {
            const int64_t at = n * kCh2 * kP2 * kP2 + co * kP2 * kP2 + window;
            const int64_t k = cp[(n * kP2 * kP2 + window) * kCh2 + co];
            g[2 * (window / kP2) + (k >> 1)][2 * (window % kP2) + (k & 1)][co] = op[at] > 0.f ? gp[at] : 0.f;
          }
        }
        input_gradient(g, wp, dp + n * kCh1 * kP1 * kP1);
        const float* a = ap + n * kCh1 * kP1 * kP1;
        for (int64_t ci = 0; ci < kCh1; ++ci) {
          for (int64_t k0 = 0; k0 < kK; k0 += kConv2TapRows) {
          v16 acc[kConv2TapRows * kK];
          for (int64_t t = 0; t < kConv2TapRows * kK; ++t) acc[t] = tap_grads[ci * kK * kK + k0 * kK + t];
          for (int64_t i = 0; i < kC2; ++i) {
            for (int64_t j = 0; j < kC2; ++j) {
              const v16 gv = *reinterpret_cast<const v16*>(g[i][j]);
#pragma GCC unroll 5
              for (int64_t ki = 0; ki < kConv2TapRows; ++ki) {
                const float* row = a + ci * kP1 * kP1 + (i + k0 + ki) * kP1 + j;
#pragma GCC unroll 5
                for (int64_t kj = 0; kj < kK; ++kj) acc[ki * kK + kj] += gv * splat(row[kj]);
              }
            }
          }
          for (int64_t t = 0; t < kConv2TapRows * kK; ++t) tap_grads[ci * kK * kK + k0 * kK + t] = acc[t];
          }
        }
        for (int64_t i = 0; i < kC2; ++i)
          for (int64_t j = 0; j < kC2; ++j) tap_grads[kTaps2] += *reinterpret_cast<const v16*>(g[i][j]);
      }
    }
  });
  auto total = partial.sum(0);  // [151, 16]
  return {grad_a1, total.narrow(0, 0, kTaps2), total.select(0, kTaps2).contiguous()};
}

// The mean cross-entropy of logits [B, 10] against labels y, and its gradient for the logits:
// (softmax - one_hot(y)) / B. Computed as log_softmax then the negative log-likelihood, like F.cross_entropy.
std::vector<at::Tensor> cross_entropy_forward_backward(const at::Tensor& logits, const at::Tensor& y) {
  RECORD_FUNCTION("hdr_lenet5::cross_entropy_forward_backward", std::vector<c10::IValue>());  // a span for the profiler
  auto log_p = at::log_softmax(logits, 1);
  auto loss = at::nll_loss(log_p, y);
  auto grad = log_p.exp_();
  const int64_t batch = logits.size(0), classes = logits.size(1);
  float* gp = grad.data_ptr<float>();
  const int64_t* yp = y.data_ptr<int64_t>();
  const float scale = 1.f / static_cast<float>(batch);
  for (int64_t n = 0; n < batch; ++n) {
    gp[n * classes + yp[n]] -= 1.f;
    for (int64_t k = 0; k < classes; ++k) gp[n * classes + k] *= scale;
  }
  return {loss, grad};
}

// y = relu?(x W^T + b) backward: (dW, db) and the gradient for x.
inline at::Tensor linear_backward(const at::Tensor& grad, const at::Tensor& inputs, const at::Tensor& weight,
                                  std::vector<at::Tensor>& grads) {
  grads.push_back(grad.t().mm(inputs));
  grads.push_back(grad.sum(0));
  return grad.mm(weight);
}

// The loss of the paper's LeNet-5 on images x [B, 1, 28, 28] with labels y, and the gradients of its ten
// parameters in the order of model.parameters(): conv1 (weight, bias), conv2, fc1, fc2, fc3.
std::vector<at::Tensor> loss_and_gradients(const at::Tensor& x, const at::Tensor& y, const at::Tensor& conv1_weight,
                                           const at::Tensor& conv1_bias, const at::Tensor& conv2_weight,
                                           const at::Tensor& conv2_bias, const at::Tensor& fc1_weight,
                                           const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
                                           const at::Tensor& fc2_bias, const at::Tensor& fc3_weight,
                                           const at::Tensor& fc3_bias) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == 1 && x.size(2) == kIn && x.size(3) == kIn && x.is_contiguous() &&
                  x.scalar_type() == at::kFloat,
              "hdr_lenet5: x must be a contiguous float32 tensor [B, 1, 28, 28]");
  TORCH_CHECK(y.dim() == 1 && y.size(0) == x.size(0) && y.scalar_type() == at::kLong,
              "hdr_lenet5: y must be int64 labels [B]");
  at::NoGradGuard no_grad;
  // Forward, keeping what the backward pass reads.
  auto first = conv1_pool_forward(x, conv1_weight.contiguous(), conv1_bias.contiguous());
  const at::Tensor& a1 = first[0];
  auto taps = conv2_weight.permute({1, 2, 3, 0}).contiguous().view({kTaps2, kCh2});  // [ci, ki, kj] x co
  auto second = conv2_pool_forward(a1, taps, conv2_bias.contiguous());
  const at::Tensor& h0 = second[0];
  at::Tensor h1, h2, logits;
  {
    RECORD_FUNCTION("hdr_lenet5::fully_connected", std::vector<c10::IValue>());
    h1 = at::linear(h0, fc1_weight, fc1_bias).relu_();
    h2 = at::linear(h1, fc2_weight, fc2_bias).relu_();
    logits = at::linear(h2, fc3_weight, fc3_bias);
  }
  auto loss_grad = cross_entropy_forward_backward(logits, y);
  // Backward, from the loss to conv1.
  std::vector<at::Tensor> fc3, fc2, fc1;
  at::Tensor grad;
  {
    RECORD_FUNCTION("hdr_lenet5::fully_connected", std::vector<c10::IValue>());
    grad = at::threshold_backward(linear_backward(loss_grad[1], h2, fc3_weight, fc3), h2, 0);
    grad = at::threshold_backward(linear_backward(grad, h1, fc2_weight, fc2), h1, 0);
    grad = linear_backward(grad, h0, fc1_weight, fc1);
  }
  auto conv2_grads = conv2_pool_backward(grad, h0, second[1], a1, taps);
  auto conv2_weight_grad = conv2_grads[1].view({kCh1, kK, kK, kCh2}).permute({3, 0, 1, 2}).contiguous();
  const at::Tensor& grad_a1 = conv2_grads[0];
  auto conv1_grads = conv1_pool_backward(grad_a1, a1, first[1], x);
  return {loss_grad[0], conv1_grads[0], conv1_grads[1], conv2_weight_grad, conv2_grads[2], fc1[0], fc1[1],
          fc2[0], fc2[1], fc3[0], fc3[1]};
}

// The same, written into the parameters' gradient tensors `grads` (in place; what the optimiser reads), given the
// parameters as `weights`, both in the order of model.parameters(); returns the loss.
at::Tensor gradients_into(const at::Tensor& x, const at::Tensor& y, at::TensorList weights, at::TensorList grads) {
  TORCH_CHECK(weights.size() == 10 && grads.size() == 10, "hdr_lenet5: LeNet-5 has 10 parameter tensors");
  auto out = loss_and_gradients(x, y, weights[0], weights[1], weights[2], weights[3], weights[4], weights[5],
                                weights[6], weights[7], weights[8], weights[9]);
  for (size_t k = 0; k < grads.size(); ++k) {
    TORCH_CHECK(grads[k].sizes() == out[k + 1].sizes(), "hdr_lenet5: gradient ", k, " has the wrong shape");
    grads[k].copy_(out[k + 1]);
  }
  return out[0];
}

}  // namespace

// The namespace is the build's (hdr_lenet5, hdr_lenet5_avx2), so that both builds can be loaded in one process.
#define HDR_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define HDR_LIBRARY_IMPL(ns, k, m) TORCH_LIBRARY_IMPL(ns, k, m)

HDR_LIBRARY(HDR_NS, m) {
  m.def("loss_and_gradients(Tensor x, Tensor y, Tensor conv1_weight, Tensor conv1_bias, Tensor conv2_weight, "
        "Tensor conv2_bias, Tensor fc1_weight, Tensor fc1_bias, Tensor fc2_weight, Tensor fc2_bias, "
        "Tensor fc3_weight, Tensor fc3_bias) -> Tensor[]");
  m.def("gradients_into(Tensor x, Tensor y, Tensor[] weights, Tensor(a!)[] grads) -> Tensor");
}

HDR_LIBRARY_IMPL(HDR_NS, CPU, m) {
  m.impl("loss_and_gradients", &loss_and_gradients);
  m.impl("gradients_into", &gradients_into);
}
