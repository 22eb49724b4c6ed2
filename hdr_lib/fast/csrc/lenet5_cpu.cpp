// LeNet-5's training step on the CPU (the paper's variant: 28x28 input, no padding), as one native operator:
// the loss and the gradients of all ten parameters, what F.cross_entropy(model(x), y).backward() gives.
//
// hdr_lib.fast.torch_cpu.train_step computes the same with PyTorch operators called from Python. On a small CPU that
// leaves much of the step to general kernels far from the arithmetic they need at these shapes (1 and 6 input
// channels, 8x8 to 24x24 maps, a batch of 64), to scalar pooling loops, and to calling a hundred operators from
// Python. Here the two convolutions, with their ReLU and 2x2 max pooling, run on images side by side:
//  - a batch is cut into chunks of 16 images, and a chunk's maps are stored pixel by pixel with the 16 images'
//    values next to each other ([channel][row][column][16 images]). A vector register then holds one pixel of 16
//    images (AVX-512) or of 8 (AVX2, two registers per chunk), so every product of a convolution, forward or
//    backward, is a weight broadcast to all lanes times one vector: no lane is idle at any map size, no sum runs
//    across lanes inside a loop, and pooling and ReLU compare whole vectors;
//  - each loop keeps a block of sums in registers (a pooling window's four outputs for several channels; a group
//    of taps' weight gradients; a row of input gradients), and reads each input vector once for all of them;
//  - pooling sends each window's gradient to its first maximum in row-major order, as max_pool2d does, ties
//    included; the backward pass spreads it into a full-size gradient map, then computes the weight gradients as
//    dense sums over it (the FLOPs counted for the step);
//  - a chunk's weight gradients are summed over its 16 lanes in a fixed tree, then the chunks in order, so the
//    result is the same whatever the number of threads, and the same in both builds;
//  - the fully connected layers call ATen (MKL) on the pooled maps in the usual layout, and the loss is
//    log_softmax and nll_loss as in F.cross_entropy;
//  - built twice: for AVX-512 (32 registers of 16 floats) and, with HDR_AVX2 and -mno-avx512f, for AVX2 (16 of 8),
//    where a chunk is two halves of 8 lanes done one after the other and the blocks of sums are smaller; every sum
//    adds the same terms in the same order, so both builds compute the same bits.
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
constexpr int64_t kC1 = 24;   // conv1 output side
constexpr int64_t kP1 = 12;   // pooled side of conv1
constexpr int64_t kCh1 = 6;   // conv1 channels
constexpr int64_t kC2 = 8;    // conv2 output side
constexpr int64_t kP2 = 4;    // pooled side of conv2
constexpr int64_t kCh2 = 16;  // conv2 channels
constexpr int64_t kTaps1 = kK * kK;         // conv1 weights per channel
constexpr int64_t kTaps2 = kCh1 * kK * kK;  // conv2 weights per output channel
constexpr int64_t kL = 16;  // images per chunk: the lanes of a pixel
// A chunk's weight gradients, in PyTorch's layouts, one after the other: conv1's weight and bias, conv2's.
constexpr int64_t kGradW1 = 0, kGradB1 = kCh1 * kTaps1, kGradW2 = kGradB1 + kCh1, kGradB2 = kGradW2 + kCh2 * kTaps2;
constexpr int64_t kGrads = (kGradB2 + kCh2 + kL - 1) / kL * kL;  // rounded up to whole vectors of 16

#if defined(HDR_AVX2)
#define HDR_W 8
#define HDR_NS hdr_lenet5_avx2
// How many sums each loop keeps in registers, for 16 registers of 8 floats.
constexpr int64_t kConv1Channels = 3;   // conv1 forward: channels of a pooling window (x 4 outputs)
constexpr int64_t kConv2Channels = 2;   // conv2 forward: output channels of a pooling window (x 4 outputs)
constexpr int64_t kConv1TapRows = 2;    // conv1 weight gradient: tap rows (x 5 taps)
constexpr int64_t kConv2Outputs = 2;    // conv2 weight gradient: output channels (x 5 taps)
constexpr int64_t kInputChannels = 1;   // conv2 input gradient: input channels (x 12 columns of a row)
#else
#define HDR_W 16
#define HDR_NS hdr_lenet5
constexpr int64_t kConv1Channels = 6;
constexpr int64_t kConv2Channels = 4;
constexpr int64_t kConv1TapRows = 5;
constexpr int64_t kConv2Outputs = 4;
constexpr int64_t kInputChannels = 2;
#endif
constexpr int64_t kW = HDR_W;      // lanes of a register
constexpr int64_t kV = kL / kW;    // registers per pixel of a chunk

typedef float vf __attribute__((vector_size(4 * HDR_W)));
typedef int32_t vi __attribute__((vector_size(4 * HDR_W)));
typedef int8_t vb __attribute__((vector_size(HDR_W)));
// 16 floats, for the sums over a chunk's lanes (two AVX registers without AVX-512).
typedef float v16 __attribute__((vector_size(64), aligned(4)));

inline vf load(const float* p) { return *reinterpret_cast<const vf*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf*>(p) = v; }
inline vi load_corner(const int8_t* p) {
  vb b;
  std::memcpy(&b, p, sizeof b);
  return __builtin_convertvector(b, vi);
}
inline void store_corner(int8_t* p, vi v) {
  const vb b = __builtin_convertvector(v, vb);
  std::memcpy(p, &b, sizeof b);
}

// relu(max_pool2d) over a window's four outputs, given in row-major order (top left, top right, bottom left,
// bottom right), lane by lane: the value, and the corner max_pool2d sends the gradient to, its first maximum in
// row-major order, also on ties (0 to 3).
inline void pool_relu(vf v0, vf v1, vf v2, vf v3, vf& relu, vi& corner) {
  const vi right_top = v1 > v0;
  const vf top = right_top ? v1 : v0;
  const vi right_bottom = v3 > v2;
  const vf bottom = right_bottom ? v3 : v2;
  const vi in_bottom = bottom > top;
  const vf value = in_bottom ? bottom : top;
  const vf zero = {};
  relu = value > zero ? value : zero;
  corner = in_bottom ? 2 - right_bottom : -right_top;  // masks are 0 or -1
}

// Where a chunk's maps lie in its workspace (floats; corners are bytes in float-sized room): what the forward
// pass keeps for the backward pass, then the backward pass's own.
struct Chunk {
  float* x;        // the images [28][28][16]
  float* a1;       // relu(pool(conv1)) [6][12][12][16]
  int8_t* c1;      // its winning corners, same shape
  float* h0;       // relu(pool(conv2)) [16][4][4][16]
  int8_t* c2;      // its winning corners
  float* g_h0;     // the gradient of h0
  float* g_a1;     // the gradient of a1
  float* g_conv2;  // conv2's output gradient [16][8][8][16]
  float* g_conv1;  // conv1's output gradient, one channel at a time [24][24][16]
  float* lanes;    // weight gradients per lane [kGrads][16]
  float* grads;    // weight gradients of the chunk [kGrads]
};
constexpr int64_t kChunkFloats = kIn * kIn * kL + kCh1 * kP1 * kP1 * kL * 5 / 4 + kCh2 * kP2 * kP2 * kL * 5 / 4 +
                                 kCh2 * kP2 * kP2 * kL + kCh1 * kP1 * kP1 * kL + kCh2 * kC2 * kC2 * kL +
                                 kC1 * kC1 * kL + kGrads * kL + kGrads;
static_assert(kChunkFloats % 16 == 0, "each chunk's maps start on a 64-byte boundary");

// The workspace of the calling thread's steps, kept from step to step (allocating it each step would fault its
// pages in again each time), 64-byte aligned; the threads of a step share it, each working on its own chunks.
float* workspace(int64_t chunks) {
  thread_local std::vector<float> space;
  const size_t need = static_cast<size_t>(chunks * kChunkFloats + 16);
  if (space.size() < need) space.assign(need, 0.f);
  return space.data() + (16 - (reinterpret_cast<uintptr_t>(space.data()) / 4) % 16) % 16;
}

Chunk chunk_at(float* space, int64_t chunk) {
  float* p = space + chunk * kChunkFloats;
  Chunk c;
  c.x = p, p += kIn * kIn * kL;
  c.a1 = p, p += kCh1 * kP1 * kP1 * kL;
  c.c1 = reinterpret_cast<int8_t*>(p), p += kCh1 * kP1 * kP1 * kL / 4;
  c.h0 = p, p += kCh2 * kP2 * kP2 * kL;
  c.c2 = reinterpret_cast<int8_t*>(p), p += kCh2 * kP2 * kP2 * kL / 4;
  c.g_h0 = p, p += kCh2 * kP2 * kP2 * kL;
  c.g_a1 = p, p += kCh1 * kP1 * kP1 * kL;
  c.g_conv2 = p, p += kCh2 * kC2 * kC2 * kL;
  c.g_conv1 = p, p += kC1 * kC1 * kL;
  c.lanes = p, p += kGrads * kL;
  c.grads = p;
  return c;
}

// Offset of pixel (row, column) of channel `channel` in a map of side `side`, lane group h (kW lanes).
inline int64_t at(int64_t channel, int64_t row, int64_t column, int64_t side, int64_t h) {
  return ((channel * side + row) * side + column) * kL + h * kW;
}

// conv1 with ReLU and pooling for channels C0 .. C0 + NC - 1 of lane group h: each pooling window's four outputs
// for NC channels are NC x 4 sums in registers; each of the 6 x 6 input pixels under the window is loaded once and
// added to every output it reaches (taps in row-major order for each output).
template <int64_t C0, int64_t NC>
inline void conv1_channels(const Chunk& c, const float* w, const float* b, int64_t h) {
  for (int64_t pi = 0; pi < kP1; ++pi) {
    for (int64_t pj = 0; pj < kP1; ++pj) {
      vf acc[NC][4];
      for (int64_t k = 0; k < NC; ++k)
        for (auto& corner_sum : acc[k]) corner_sum = vf{} + b[C0 + k];
#pragma GCC unroll 6
      for (int64_t ry = 0; ry < kK + 1; ++ry) {
#pragma GCC unroll 6
        for (int64_t rx = 0; rx < kK + 1; ++rx) {
          const vf in = load(c.x + at(0, 2 * pi + ry, 2 * pj + rx, kIn, h));
#pragma GCC unroll 2
          for (int64_t dy = 0; dy < 2; ++dy) {
#pragma GCC unroll 2
            for (int64_t dx = 0; dx < 2; ++dx) {
              const int64_t ky = ry - dy, kx = rx - dx;
              if (ky < 0 || ky >= kK || kx < 0 || kx >= kK) continue;
#pragma GCC unroll 6
              for (int64_t k = 0; k < NC; ++k) acc[k][2 * dy + dx] += in * w[(C0 + k) * kTaps1 + ky * kK + kx];
            }
          }
        }
      }
      for (int64_t k = 0; k < NC; ++k) {
        vf relu;
        vi corner;
        pool_relu(acc[k][0], acc[k][1], acc[k][2], acc[k][3], relu, corner);
        store(c.a1 + at(C0 + k, pi, pj, kP1, h), relu);
        store_corner(c.c1 + at(C0 + k, pi, pj, kP1, h), corner);
      }
    }
  }
}

// The same for conv2 (6 input channels), output channels C0 .. C0 + NC - 1.
template <int64_t NC>
inline void conv2_channels(const Chunk& c, int64_t c0, const float* w, const float* b, int64_t h) {
  for (int64_t pi = 0; pi < kP2; ++pi) {
    for (int64_t pj = 0; pj < kP2; ++pj) {
      vf acc[NC][4];
      for (int64_t k = 0; k < NC; ++k)
        for (auto& corner_sum : acc[k]) corner_sum = vf{} + b[c0 + k];
      for (int64_t ci = 0; ci < kCh1; ++ci) {
        const float* wc = w + c0 * kTaps2 + ci * kTaps1;
#pragma GCC unroll 6
        for (int64_t ry = 0; ry < kK + 1; ++ry) {
#pragma GCC unroll 6
          for (int64_t rx = 0; rx < kK + 1; ++rx) {
            const vf in = load(c.a1 + at(ci, 2 * pi + ry, 2 * pj + rx, kP1, h));
#pragma GCC unroll 2
            for (int64_t dy = 0; dy < 2; ++dy) {
#pragma GCC unroll 2
              for (int64_t dx = 0; dx < 2; ++dx) {
                const int64_t ky = ry - dy, kx = rx - dx;
                if (ky < 0 || ky >= kK || kx < 0 || kx >= kK) continue;
#pragma GCC unroll 4
                for (int64_t k = 0; k < NC; ++k) acc[k][2 * dy + dx] += in * wc[k * kTaps2 + ky * kK + kx];
              }
            }
          }
        }
      }
      for (int64_t k = 0; k < NC; ++k) {
        vf relu;
        vi corner;
        pool_relu(acc[k][0], acc[k][1], acc[k][2], acc[k][3], relu, corner);
        store(c.h0 + at(c0 + k, pi, pj, kP2, h), relu);
        store_corner(c.c2 + at(c0 + k, pi, pj, kP2, h), corner);
      }
    }
  }
}

// A pooled map's gradient spread over the full-size map of one channel: each window's gradient (none where ReLU
// cut, out == 0) at its winning corner, zero at the other three; returns the window gradients' sum (the bias's).
inline vf spread(const float* grad, const float* out, const int8_t* corner, float* full, int64_t pooled, int64_t h,
                 int64_t channel) {
  vf bias = {};
  const vf zero = {};
  for (int64_t pi = 0; pi < pooled; ++pi) {
    for (int64_t pj = 0; pj < pooled; ++pj) {
      const int64_t i = at(channel, pi, pj, pooled, h);
      const vf g = load(out + i) > zero ? load(grad + i) : zero;
      const vi k = load_corner(corner + i);
      bias += g;
      for (int64_t dy = 0; dy < 2; ++dy)
        for (int64_t dx = 0; dx < 2; ++dx)
          store(full + at(0, 2 * pi + dy, 2 * pj + dx, 2 * pooled, h), k == static_cast<int32_t>(2 * dy + dx) ? g : zero);
    }
  }
  return bias;
}

// conv1's weight gradient for one channel, tap rows KY0 .. KY0 + NKY - 1: dense sums over the 24 x 24 outputs
// (row-major) of the output gradient times the input under each tap, per lane, into `lanes`.
template <int64_t KY0, int64_t NKY>
inline void conv1_tap_rows(const Chunk& c, int64_t channel, int64_t h) {
  vf acc[NKY][kK] = {};
  for (int64_t y = 0; y < kC1; ++y) {
    for (int64_t x = 0; x < kC1; ++x) {
      const vf g = load(c.g_conv1 + at(0, y, x, kC1, h));
#pragma GCC unroll 5
      for (int64_t ky = 0; ky < NKY; ++ky)
#pragma GCC unroll 5
        for (int64_t kx = 0; kx < kK; ++kx) acc[ky][kx] += g * load(c.x + at(0, y + KY0 + ky, x + kx, kIn, h));
    }
  }
  for (int64_t ky = 0; ky < NKY; ++ky)
    for (int64_t kx = 0; kx < kK; ++kx)
      store(c.lanes + (kGradW1 + channel * kTaps1 + (KY0 + ky) * kK + kx) * kL + h * kW, acc[ky][kx]);
}

template <int64_t KY0>
inline void conv1_taps(const Chunk& c, int64_t channel, int64_t h) {
  if constexpr (KY0 < kK) {
    constexpr int64_t n = std::min<int64_t>(kConv1TapRows, kK - KY0);
    conv1_tap_rows<KY0, n>(c, channel, h);
    conv1_taps<KY0 + n>(c, channel, h);
  }
}

// conv2's weight gradient for output channels c0 .. c0 + NC - 1, input channel ci, tap row ky: dense sums over the
// 8 x 8 outputs (row-major), per lane, into `lanes`.
template <int64_t NC>
inline void conv2_taps(const Chunk& c, int64_t c0, int64_t ci, int64_t ky, int64_t h) {
  vf acc[NC][kK] = {};
  for (int64_t y = 0; y < kC2; ++y) {
    for (int64_t x = 0; x < kC2; ++x) {
      vf in[kK];
#pragma GCC unroll 5
      for (int64_t kx = 0; kx < kK; ++kx) in[kx] = load(c.a1 + at(ci, y + ky, x + kx, kP1, h));
#pragma GCC unroll 4
      for (int64_t k = 0; k < NC; ++k) {
        const vf g = load(c.g_conv2 + at(c0 + k, y, x, kC2, h));
#pragma GCC unroll 5
        for (int64_t kx = 0; kx < kK; ++kx) acc[k][kx] += g * in[kx];
      }
    }
  }
  for (int64_t k = 0; k < NC; ++k)
    for (int64_t kx = 0; kx < kK; ++kx)
      store(c.lanes + (kGradW2 + (c0 + k) * kTaps2 + ci * kTaps1 + ky * kK + kx) * kL + h * kW, acc[k][kx]);
}

// conv2's input gradient for input channels c0 .. c0 + NC - 1, row y: d[ci][y][x] = sum over output channels co
// (in order), tap rows ky (ascending) and output columns t (ascending) with x = t + kx of w[co][ci][ky][kx] g[co][y -
// ky][t]; the row's 12 columns for NC channels are NC x 12 sums in registers.
template <int64_t NC>
inline void conv2_input_row(const Chunk& c, const float* w, int64_t c0, int64_t y, int64_t h) {
  vf acc[NC][kP1] = {};
  for (int64_t co = 0; co < kCh2; ++co) {
    for (int64_t ky = std::max<int64_t>(0, y - (kC2 - 1)); ky <= std::min<int64_t>(kK - 1, y); ++ky) {
      const float* wr = w + co * kTaps2 + c0 * kTaps1 + ky * kK;
#pragma GCC unroll 8
      for (int64_t t = 0; t < kC2; ++t) {
        const vf g = load(c.g_conv2 + at(co, y - ky, t, kC2, h));
#pragma GCC unroll 5
        for (int64_t kx = 0; kx < kK; ++kx)
#pragma GCC unroll 2
          for (int64_t k = 0; k < NC; ++k) acc[k][t + kx] += g * wr[k * kTaps1 + kx];
      }
    }
  }
  for (int64_t k = 0; k < NC; ++k)
    for (int64_t x = 0; x < kP1; ++x) store(c.g_a1 + at(c0 + k, y, x, kP1, h), acc[k][x]);
}

// out[k] = the sum of the 16 lanes of row k of p [16][16]: four rounds of pairing halves, quarters, ... of two vectors.
#if defined(HDR_AVX2)
typedef float v8 __attribute__((vector_size(32)));
// The same sums in the same order, in 8-lane vectors: lane j + lane j + 8, then + 4, + 2, + 1 apart.
inline void lane_sums(const float* p, float* out) {
  v8 h[16];
  for (int64_t k = 0; k < 16; ++k)
    h[k] = *reinterpret_cast<const v8*>(p + 16 * k) + *reinterpret_cast<const v8*>(p + 16 * k + 8);
  for (int64_t k = 0; k < 8; ++k)  // [h0 4 | h1 4], ...
    h[k] = __builtin_shufflevector(h[2 * k], h[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(h[2 * k], h[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15);
  for (int64_t k = 0; k < 4; ++k)  // [h0 2 | h1 2 | h2 2 | h3 2], ...
    h[k] = __builtin_shufflevector(h[2 * k], h[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
           __builtin_shufflevector(h[2 * k], h[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15);
  for (int64_t k = 0; k < 2; ++k)
    h[k] = __builtin_shufflevector(h[2 * k], h[2 * k + 1], 0, 2, 4, 6, 8, 10, 12, 14) +
           __builtin_shufflevector(h[2 * k], h[2 * k + 1], 1, 3, 5, 7, 9, 11, 13, 15);
  std::memcpy(out, &h[0], sizeof h[0]);
  std::memcpy(out + 8, &h[1], sizeof h[1]);
}
#else
inline void lane_sums(const float* p, float* out) {
  v16 a[16];
  for (int64_t k = 0; k < 16; ++k) a[k] = *reinterpret_cast<const v16*>(p + 16 * k);
  for (int64_t k = 0; k < 8; ++k)  // [a0 8 partial sums | a1 8], [a2 | a3], ...
    a[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int64_t k = 0; k < 4; ++k)  // [a0 4 | a1 4 | a2 4 | a3 4], ...
    a[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  for (int64_t k = 0; k < 2; ++k)  // [a0 2 | a1 2 | ... | a7 2], [a8 2 | ... ]
    a[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  const v16 sums = __builtin_shufflevector(a[0], a[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
                   __builtin_shufflevector(a[0], a[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  std::memcpy(out, &sums, sizeof sums);
}
#endif

inline int64_t chunks_of(int64_t batch) { return (batch + kL - 1) / kL; }

// Forward, chunk by chunk: the images into lanes, then relu(max_pool2d(conv1)) [6, 12, 12] with its winning
// corners. Images past the batch's end (its last chunk may be short) are zeros.
void conv1_pool_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, float* space) {
  RECORD_FUNCTION("hdr_lenet5::conv1_pool_forward", std::vector<c10::IValue>());  // a span for the profiler
  const int64_t batch = x.size(0), chunks = chunks_of(batch);
  const float* xp = x.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const Chunk c = chunk_at(space, k);
      const int64_t images = std::min(kL, batch - k * kL);
      for (int64_t lane = 0; lane < kL; ++lane) {
        const float* image = xp + (k * kL + lane) * kIn * kIn;
        for (int64_t p = 0; p < kIn * kIn; ++p) c.x[p * kL + lane] = lane < images ? image[p] : 0.f;
      }
      for (int64_t h = 0; h < kV; ++h) {
        if constexpr (kConv1Channels == 6) {
          conv1_channels<0, 6>(c, w, b, h);
        } else {
          conv1_channels<0, 3>(c, w, b, h);
          conv1_channels<3, 3>(c, w, b, h);
        }
      }
    }
  });
}

// relu(max_pool2d(conv2(a1))) per chunk, with its winning corners; returns it as [B, 256] in the order
// torch.flatten gives the NCHW pooled map (channel, row, column), for the fully connected layers.
at::Tensor conv2_pool_forward(int64_t batch, const at::Tensor& weight, const at::Tensor& bias, float* space) {
  RECORD_FUNCTION("hdr_lenet5::conv2_pool_forward", std::vector<c10::IValue>());  // a span for the profiler
  const int64_t chunks = chunks_of(batch);
  auto out = at::empty({batch, kCh2 * kP2 * kP2}, weight.options());
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const Chunk c = chunk_at(space, k);
      for (int64_t h = 0; h < kV; ++h)
        for (int64_t c0 = 0; c0 < kCh2; c0 += kConv2Channels) conv2_channels<kConv2Channels>(c, c0, w, b, h);
      const int64_t images = std::min(kL, batch - k * kL);
      for (int64_t lane = 0; lane < images; ++lane)
        for (int64_t p = 0; p < kCh2 * kP2 * kP2; ++p) op[(k * kL + lane) * kCh2 * kP2 * kP2 + p] = c.h0[p * kL + lane];
    }
  });
  return out;
}

// Given `grad`, the gradient of conv2_pool_forward's output [B, 256]: per chunk, conv2's output gradient (each
// window's gradient at its winning corner, none where ReLU cut), the gradient of conv2's input a1, and the lanes'
// gradients of conv2's weight and bias.
void conv2_pool_backward(const at::Tensor& grad, const at::Tensor& weight, float* space) {
  RECORD_FUNCTION("hdr_lenet5::conv2_pool_backward", std::vector<c10::IValue>());  // a span for the profiler
  const int64_t batch = grad.size(0), chunks = chunks_of(batch);
  const float* gp = grad.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const Chunk c = chunk_at(space, k);
      const int64_t images = std::min(kL, batch - k * kL);
      for (int64_t lane = 0; lane < kL; ++lane)
        for (int64_t p = 0; p < kCh2 * kP2 * kP2; ++p)
          c.g_h0[p * kL + lane] = lane < images ? gp[(k * kL + lane) * kCh2 * kP2 * kP2 + p] : 0.f;
      for (int64_t h = 0; h < kV; ++h) {
        for (int64_t co = 0; co < kCh2; ++co) {
          const vf bias = spread(c.g_h0, c.h0, c.c2, c.g_conv2 + at(co, 0, 0, kC2, 0), kP2, h, co);
          store(c.lanes + (kGradB2 + co) * kL + h * kW, bias);
        }
        for (int64_t c0 = 0; c0 < kCh2; c0 += kConv2Outputs)
          for (int64_t ci = 0; ci < kCh1; ++ci)
            for (int64_t ky = 0; ky < kK; ++ky) conv2_taps<kConv2Outputs>(c, c0, ci, ky, h);
        for (int64_t c0 = 0; c0 < kCh1; c0 += kInputChannels)
          for (int64_t y = 0; y < kP1; ++y) conv2_input_row<kInputChannels>(c, w, c0, y, h);
      }
    }
  });
}

// Per chunk: conv1's output gradient, channel by channel, from a1's, and the lanes' gradients of conv1's weight and
// bias; then each chunk's gradients summed over its 16 lanes (lane_sums' fixed tree), and the chunks in order.
// Returns conv1's weight and bias gradients and conv2's.
std::vector<at::Tensor> conv1_pool_backward(int64_t batch, const at::TensorOptions& options, float* space) {
  RECORD_FUNCTION("hdr_lenet5::conv1_pool_backward", std::vector<c10::IValue>());  // a span for the profiler
  const int64_t chunks = chunks_of(batch);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const Chunk c = chunk_at(space, k);
      for (int64_t h = 0; h < kV; ++h) {
        for (int64_t channel = 0; channel < kCh1; ++channel) {
          const vf bias = spread(c.g_a1, c.a1, c.c1, c.g_conv1, kP1, h, channel);
          store(c.lanes + (kGradB1 + channel) * kL + h * kW, bias);
          conv1_taps<0>(c, channel, h);
        }
      }
      for (int64_t i = kGradB2 + kCh2; i < kGrads; ++i) std::memset(c.lanes + i * kL, 0, kL * sizeof(float));
      for (int64_t i = 0; i < kGrads; i += kL) {
        lane_sums(c.lanes + i * kL, c.grads + i);
      }
    }
  });
  auto total = at::empty({kGrads}, options);
  float* t = total.data_ptr<float>();
  for (int64_t i = 0; i < kGrads; ++i) {
    float s = chunk_at(space, 0).grads[i];
    for (int64_t k = 1; k < chunks; ++k) s += chunk_at(space, k).grads[i];
    t[i] = s;
  }
  return {total.narrow(0, kGradW1, kGradB1 - kGradW1).view({kCh1, 1, kK, kK}),
          total.narrow(0, kGradB1, kCh1), total.narrow(0, kGradW2, kGradB2 - kGradW2).view({kCh2, kCh1, kK, kK}),
          total.narrow(0, kGradB2, kCh2)};
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
  TORCH_CHECK(x.size(0) > 0, "hdr_lenet5: the batch is empty");
  at::NoGradGuard no_grad;
  const int64_t batch = x.size(0);
  float* space = workspace(chunks_of(batch));
  const auto w1 = conv1_weight.contiguous(), b1 = conv1_bias.contiguous();
  const auto w2 = conv2_weight.contiguous(), b2 = conv2_bias.contiguous();
  // Forward, keeping what the backward pass reads (in the workspace).
  conv1_pool_forward(x, w1, b1, space);
  const at::Tensor h0 = conv2_pool_forward(batch, w2, b2, space);
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
    grad = linear_backward(grad, h0, fc1_weight, fc1).contiguous();
  }
  conv2_pool_backward(grad, w2, space);
  auto conv = conv1_pool_backward(batch, x.options(), space);
  return {loss_grad[0], conv[0], conv[1], conv[2], conv[3], fc1[0], fc1[1], fc2[0], fc2[1], fc3[0], fc3[1]};
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
