// LeNet-5's training step on the CPU (the paper's variant: 28x28 input, no padding), as one native operator:
// the loss and the gradients of all ten parameters, what F.cross_entropy(model(x), y).backward() gives.
//
// hdr_lib.fast.torch_cpu.train_step computes the same with PyTorch operators called from Python. On a small CPU that
// leaves much of the step to general kernels far from the arithmetic they need at these shapes (1 and 6 input
// channels, 8x8 to 24x24 maps, a batch of 64), to scalar pooling loops, and to calling a hundred operators from
// Python. Here the whole step runs on images side by side:
//  - a batch is cut into chunks of 16 images, each run through the whole step (both convolutions with their ReLU
//    and 2x2 max pooling, the fully connected layers, the loss, and back) in one parallel region; a chunk's maps
//    are stored pixel by pixel with the 16 images' values next to each other ([channel][row][column][16 images]).
//    A vector register then holds one pixel of 16 images (AVX-512) or of 8 (AVX2, two registers per chunk), so
//    every product, forward or backward, is a weight broadcast to all lanes times one vector: no lane is idle at
//    any map size, no sum runs across lanes inside a loop, and pooling and ReLU compare whole vectors;
//  - each loop keeps a block of sums in registers (a pooling window's four outputs for several channels; a group
//    of taps' weight gradients; a row of input gradients), and reads each input vector once for all of them;
//  - pooling sends each window's gradient to its first maximum in row-major order, as max_pool2d does, ties
//    included; the backward pass spreads it into a full-size gradient map, then computes the weight gradients as
//    dense sums over it (the FLOPs counted for the step);
//  - a chunk's weight gradients are summed over its 16 lanes in a fixed tree, then the chunks in order, so the
//    result is the same whatever the number of threads, and the same in both builds;
//  - the fully connected layers' weight gradients are sums over a chunk's images, vectorised along a weight row;
//    the loss is log_softmax then the negative log-likelihood, as in F.cross_entropy, image by image;
//  - the batch is read by index from the whole training set (no copy), the gradients are written where the
//    optimiser reads them, and `train_step` then updates the weights as torch._fused_sgd_ does, bit for bit;
//    `train_steps` runs a block of such steps over consecutive batches in one call (no Python between them);
//  - each part of the step is clocked in each thread (part_seconds; bench --profile reports them);
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
#include <atomic>
#include <chrono>
#include <cmath>
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
// The fully connected layers: 256 -> 120 -> 84 -> 10. Their inputs, image by image, are kept in rows rounded up to
// 64 floats (zeros after the end), for their weight gradients.
constexpr int64_t kF0 = kCh2 * kP2 * kP2, kF1 = 120, kF2 = 84, kF3 = 10;
constexpr int64_t kRow0 = 256, kRow1 = 128, kRow2 = 128;
// A chunk's fully connected gradients, in padded rows: fc1's weight [120][256] and bias, fc2's [84][128] and bias,
// fc3's [10][128] and bias.
constexpr int64_t kFcW1 = 0, kFcB1 = kFcW1 + kF1 * kRow0, kFcW2 = kFcB1 + 128, kFcB2 = kFcW2 + kF2 * kRow1,
                  kFcW3 = kFcB2 + 128, kFcB3 = kFcW3 + kF3 * kRow2, kFcGrads = kFcB3 + 16;

#if defined(HDR_AVX2)
#define HDR_W 8
#define HDR_NS hdr_lenet5_avx2
// How many sums each loop keeps in registers, for 16 registers of 8 floats (by measurement, as below).
constexpr int64_t kConv1Windows = 1;    // conv1 forward: pooling windows of a row (x 4 outputs)...
constexpr int64_t kConv1Channels = 2;   // ... for this many channels
constexpr int64_t kConv2Channels = 2;   // conv2 forward: output channels of a pooling window (x 4 outputs)
constexpr int64_t kConv1TapRows = 2;    // conv1 weight gradient: tap rows (x 5 taps)
constexpr int64_t kConv2Outputs = 2;    // conv2 weight gradient: output channels (x 5 taps)
constexpr int64_t kInputChannels = 1;   // conv2 input gradient: input channels (x 12 columns of a row)
#else
#define HDR_W 16
#define HDR_NS hdr_lenet5
// For 32 registers of 16 floats. Chosen by measurement (per-part clocks, bench --profile): larger blocks made GCC
// keep sums on the stack.
constexpr int64_t kConv1Windows = 2;
constexpr int64_t kConv1Channels = 2;
constexpr int64_t kConv2Channels = 2;
constexpr int64_t kConv1TapRows = 3;
constexpr int64_t kConv2Outputs = 4;
constexpr int64_t kInputChannels = 1;
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
  float* h1;       // relu(fc1) [120][16]
  float* h2;       // relu(fc2) [84][16]
  float* z;        // the logits [10][16]; then their gradient
  float* g_h1;     // gradients of h1, h2 (lanes)
  float* g_h2;
  float* rows;     // h0, h1, h2 image by image: [16][256], [16][128], [16][128]
  float* fc;       // the chunk's fully connected gradients [kFcGrads]
  float* losses;   // each image's loss [16]
};
constexpr int64_t kChunkFloats = kIn * kIn * kL + kCh1 * kP1 * kP1 * kL * 5 / 4 + kCh2 * kP2 * kP2 * kL * 5 / 4 +
                                 kCh2 * kP2 * kP2 * kL + kCh1 * kP1 * kP1 * kL + kCh2 * kC2 * kC2 * kL +
                                 kC1 * kC1 * kL + kGrads * kL + kGrads + (kF1 + kF2 + 16) * kL +
                                 (kF1 + kF2) * kL + kL * (kRow0 + kRow1 + kRow2) + kFcGrads + kL;
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
  c.grads = p, p += kGrads;
  c.h1 = p, p += kF1 * kL;
  c.h2 = p, p += kF2 * kL;
  c.z = p, p += 16 * kL;
  c.g_h1 = p, p += kF1 * kL;
  c.g_h2 = p, p += kF2 * kL;
  c.rows = p, p += kL * (kRow0 + kRow1 + kRow2);
  c.fc = p, p += kFcGrads;
  c.losses = p;
  return c;
}

// Offset of pixel (row, column) of channel `channel` in a map of side `side`, lane group h (kW lanes).
inline int64_t at(int64_t channel, int64_t row, int64_t column, int64_t side, int64_t h) {
  return ((channel * side + row) * side + column) * kL + h * kW;
}

// conv1 with ReLU and pooling for channels c0 .. c0 + NC - 1 of lane group h, NW pooling windows of a row at a time:
// their 4 NW outputs for NC channels are sums in registers. Tap by tap (row-major, so each output adds its taps in
// that order), the NC weights are broadcast once and each of the 4 NW inputs under the tap loaded once for all NC.
template <int64_t NW, int64_t NC>
inline void conv1_channels(const Chunk& c, int64_t c0, const float* w, const float* b, int64_t h) {
  for (int64_t pi = 0; pi < kP1; ++pi) {
    for (int64_t pj = 0; pj < kP1; pj += NW) {
      vf acc[NC][2][2 * NW];  // [channel][output row][output column]
      for (int64_t k = 0; k < NC; ++k)
        for (auto& row : acc[k])
          for (auto& out : row) out = vf{} + b[c0 + k];
#pragma GCC unroll 5
      for (int64_t ky = 0; ky < kK; ++ky) {
#pragma GCC unroll 5
        for (int64_t kx = 0; kx < kK; ++kx) {
          vf wv[NC];
          for (int64_t k = 0; k < NC; ++k) wv[k] = vf{} + w[(c0 + k) * kTaps1 + ky * kK + kx];
#pragma GCC unroll 2
          for (int64_t dy = 0; dy < 2; ++dy) {
#pragma GCC unroll 4
            for (int64_t col = 0; col < 2 * NW; ++col) {
              const vf in = load(c.x + at(0, 2 * pi + dy + ky, 2 * pj + col + kx, kIn, h));
#pragma GCC unroll 3
              for (int64_t k = 0; k < NC; ++k) acc[k][dy][col] += in * wv[k];
            }
          }
        }
      }
      for (int64_t k = 0; k < NC; ++k) {
        for (int64_t q = 0; q < NW; ++q) {
          vf relu;
          vi corner;
          pool_relu(acc[k][0][2 * q], acc[k][0][2 * q + 1], acc[k][1][2 * q], acc[k][1][2 * q + 1], relu, corner);
          store(c.a1 + at(c0 + k, pi, pj + q, kP1, h), relu);
          store_corner(c.c1 + at(c0 + k, pi, pj + q, kP1, h), corner);
        }
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
  constexpr int64_t kRun = 4;  // outputs of a row at a time: each input vector under them is loaded once
  vf acc[NKY][kK] = {};
  for (int64_t y = 0; y < kC1; ++y) {
    for (int64_t x0 = 0; x0 < kC1; x0 += kRun) {
      vf g[kRun];
      for (int64_t q = 0; q < kRun; ++q) g[q] = load(c.g_conv1 + at(0, y, x0 + q, kC1, h));
#pragma GCC unroll 5
      for (int64_t ky = 0; ky < NKY; ++ky) {
#pragma GCC unroll 8
        for (int64_t col = 0; col < kRun + kK - 1; ++col) {
          const vf in = load(c.x + at(0, y + KY0 + ky, x0 + col, kIn, h));
#pragma GCC unroll 4
          for (int64_t q = 0; q < kRun; ++q) {  // output x0 + q, tap col - q: outputs in row-major order per tap
            const int64_t kx = col - q;
            if (kx >= 0 && kx < kK) acc[ky][kx] += g[q] * in;
          }
        }
      }
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

// out[j] = b[j] + sum_k w[j][k] in[k] (k ascending), then ReLU if `relu`, for lane group h of maps stored [K][16]
// and [J][16]; NJ outputs at a time (NJ divides J), each input vector loaded once for them.
template <int64_t NJ>
inline void dense_forward(const float* w, const float* b, const float* in, float* out, int64_t J, int64_t K,
                          bool relu, int64_t h) {
  for (int64_t j0 = 0; j0 < J; j0 += NJ) {
    vf acc[NJ];
    for (int64_t j = 0; j < NJ; ++j) acc[j] = vf{} + b[j0 + j];
    for (int64_t k = 0; k < K; ++k) {
      const vf x = load(in + k * kL + h * kW);
#pragma GCC unroll 12
      for (int64_t j = 0; j < NJ; ++j) acc[j] += x * w[(j0 + j) * K + k];
    }
    const vf zero = {};
    for (int64_t j = 0; j < NJ; ++j) store(out + (j0 + j) * kL + h * kW, relu ? (acc[j] > zero ? acc[j] : zero) : acc[j]);
  }
}

// The gradient for the inputs of dense_forward: in_grad[k] = sum_j w[j][k] g[j] (j ascending), set to zero where
// the input (a ReLU's output) is zero when `mask` is given; NK inputs at a time (NK divides K).
template <int64_t NK>
inline void dense_input_gradient(const float* w, const float* g, const float* mask, float* in_grad, int64_t J,
                                 int64_t K, int64_t h) {
  for (int64_t k0 = 0; k0 < K; k0 += NK) {
    vf acc[NK] = {};
    for (int64_t j = 0; j < J; ++j) {
      const vf gv = load(g + j * kL + h * kW);
#pragma GCC unroll 16
      for (int64_t k = 0; k < NK; ++k) acc[k] += gv * w[j * K + k0 + k];
    }
    const vf zero = {};
    for (int64_t k = 0; k < NK; ++k) {
      const int64_t i = (k0 + k) * kL + h * kW;
      store(in_grad + i, mask ? (load(mask + i) > zero ? acc[k] : zero) : acc[k]);
    }
  }
}

// A map [K][16] (lanes) as rows, image by image: rows[n][k], zeros after K up to `row`.
inline void to_rows(const float* map, float* rows, int64_t K, int64_t row) {
  for (int64_t n = 0; n < kL; ++n) {
    for (int64_t k = 0; k < K; ++k) rows[n * row + k] = map[k * kL + n];
    for (int64_t k = K; k < row; ++k) rows[n * row + k] = 0.f;
  }
}

// A fully connected layer's weight and bias gradients over a chunk, in padded rows: dw[j][k] = sum over the chunk's
// 16 images n (in order) of g[j][n] rows[n][k]; db[j] = sum over n of g[j][n]. Two output rows at a time.
inline void dense_weight_gradient(const float* g, const float* rows, float* dw, float* db, int64_t J, int64_t row) {
  constexpr int64_t kBlock = 4;  // vectors of a row done at a time
  for (int64_t j = 0; j < J; j += 2) {
    for (int64_t k0 = 0; k0 < row; k0 += kBlock * kW) {
      vf acc[2][kBlock] = {};
      for (int64_t n = 0; n < kL; ++n) {
        const float g0 = g[j * kL + n], g1 = g[(j + 1) * kL + n];
#pragma GCC unroll 4
        for (int64_t v = 0; v < kBlock; ++v) {
          const vf r = load(rows + n * row + k0 + v * kW);
          acc[0][v] += r * g0;
          acc[1][v] += r * g1;
        }
      }
      for (int64_t v = 0; v < kBlock; ++v) {
        store(dw + j * row + k0 + v * kW, acc[0][v]);
        store(dw + (j + 1) * row + k0 + v * kW, acc[1][v]);
      }
    }
    for (int64_t jj = j; jj < j + 2; ++jj) {
      float sum = 0.f;
      for (int64_t n = 0; n < kL; ++n) sum += g[jj * kL + n];
      db[jj] = sum;
    }
  }
}

// Thread-time per part of the step, in nanoseconds since the last part_seconds(true): a profile that costs two
// clock reads per part and chunk. The parts, in the order of PART_NAMES in hdr_lib/fast/native.py.
enum Part { kToLanes, kConv1Forward, kConv2Forward, kFcForward, kLoss, kFcBackward, kConv2Backward, kConv1Backward,
            kSums, kUpdate, kParts };
std::atomic<int64_t> part_nanoseconds[kParts];

struct PartClock {
  std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
  void lap(Part part) {
    const auto now = std::chrono::steady_clock::now();
    part_nanoseconds[part].fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(now - last).count(),
                                     std::memory_order_relaxed);
    last = now;
  }
};

// The whole step for chunk k: forward through the network, the loss, and backward to every weight gradient (each
// summed over the chunk's lanes), with the maps in the chunk's workspace; the weights in PyTorch's layouts.
struct Weights {
  const float *w1, *b1, *w2, *b2, *f1, *fb1, *f2, *fb2, *f3, *fb3;
};

// The images of chunk k (rows idx[n] of xp, or rows n where idx is null) into lanes: x[pixel][image], zeros for
// the lanes past the batch's end.
inline void to_lanes(const Chunk& c, const float* xp, const int64_t* idx, int64_t k, int64_t images) {
  const float* image[kL];
  for (int64_t n = 0; n < images; ++n) image[n] = xp + (idx ? idx[k * kL + n] : k * kL + n) * kIn * kIn;
#if !defined(HDR_AVX2)
  if (images == kL) {
    // 16 pixels of 16 images at a time, transposed in registers (swapping ever smaller blocks).
    for (int64_t p0 = 0; p0 < kIn * kIn; p0 += kL) {
      v16 a[kL];
      for (int64_t n = 0; n < kL; ++n) a[n] = *reinterpret_cast<const v16*>(image[n] + p0);
      for (int64_t i = 0; i < kL; ++i) {
        if (i & 8) continue;
        const v16 lo = __builtin_shufflevector(a[i], a[i + 8], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
        a[i + 8] = __builtin_shufflevector(a[i], a[i + 8], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
        a[i] = lo;
      }
      for (int64_t i = 0; i < kL; ++i) {
        if (i & 4) continue;
        const v16 lo = __builtin_shufflevector(a[i], a[i + 4], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
        a[i + 4] = __builtin_shufflevector(a[i], a[i + 4], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
        a[i] = lo;
      }
      for (int64_t i = 0; i < kL; ++i) {
        if (i & 2) continue;
        const v16 lo = __builtin_shufflevector(a[i], a[i + 2], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
        a[i + 2] = __builtin_shufflevector(a[i], a[i + 2], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
        a[i] = lo;
      }
      for (int64_t i = 0; i < kL; i += 2) {
        const v16 lo = __builtin_shufflevector(a[i], a[i + 1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
        a[i + 1] = __builtin_shufflevector(a[i], a[i + 1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
        a[i] = lo;
      }
      for (int64_t i = 0; i < kL; ++i) *reinterpret_cast<v16*>(c.x + (p0 + i) * kL) = a[i];
    }
    return;
  }
#endif
  for (int64_t n = 0; n < kL; ++n)
    for (int64_t i = 0; i < kIn * kIn; ++i) c.x[i * kL + n] = n < images ? image[n][i] : 0.f;
}

void chunk_step(const Chunk& c, const float* xp, const int64_t* yp, const int64_t* idx, int64_t k, int64_t batch,
                const Weights& p) {
  PartClock clock;
  const int64_t images = std::min(kL, batch - k * kL);
  to_lanes(c, xp, idx, k, images);
  clock.lap(kToLanes);
  for (int64_t h = 0; h < kV; ++h) {
    for (int64_t c0 = 0; c0 < kCh1; c0 += kConv1Channels)
      conv1_channels<kConv1Windows, kConv1Channels>(c, c0, p.w1, p.b1, h);
  }
  clock.lap(kConv1Forward);
  for (int64_t h = 0; h < kV; ++h)
    for (int64_t c0 = 0; c0 < kCh2; c0 += kConv2Channels) conv2_channels<kConv2Channels>(c, c0, p.w2, p.b2, h);
  clock.lap(kConv2Forward);
  constexpr int64_t kOutputs = kW == 16 ? 12 : 6;  // outputs of a dense layer at a time
  for (int64_t h = 0; h < kV; ++h) {
    dense_forward<kOutputs>(p.f1, p.fb1, c.h0, c.h1, kF1, kF0, true, h);
    dense_forward<kOutputs>(p.f2, p.fb2, c.h1, c.h2, kF2, kF1, true, h);
    dense_forward<kF3>(p.f3, p.fb3, c.h2, c.z, kF3, kF2, false, h);
  }
  clock.lap(kFcForward);
  // The loss of each image, log_softmax then the negative log-likelihood as in F.cross_entropy, and the logits'
  // gradient of the batch's mean, (softmax - one_hot(y)) / B; none for the lanes past the batch's end.
  const float scale = 1.f / static_cast<float>(batch);
  for (int64_t n = 0; n < kL; ++n) {
    if (n >= images) {
      for (int64_t j = 0; j < kF3; ++j) c.z[j * kL + n] = 0.f;
      c.losses[n] = 0.f;
      continue;
    }
    float top = c.z[n];
    for (int64_t j = 1; j < kF3; ++j) top = std::max(top, c.z[j * kL + n]);
    float sum = 0.f;
    for (int64_t j = 0; j < kF3; ++j) sum += std::exp(c.z[j * kL + n] - top);
    const float log_sum = std::log(sum);
    const int64_t label = yp[idx ? idx[k * kL + n] : k * kL + n];
    c.losses[n] = -(c.z[label * kL + n] - top - log_sum);
    for (int64_t j = 0; j < kF3; ++j) {
      float g = std::exp(c.z[j * kL + n] - top - log_sum);
      if (j == label) g -= 1.f;
      c.z[j * kL + n] = g * scale;
    }
  }
  clock.lap(kLoss);
  for (int64_t h = 0; h < kV; ++h) {
    dense_input_gradient<kW == 16 ? 12 : 7>(p.f3, c.z, c.h2, c.g_h2, kF3, kF2, h);
    dense_input_gradient<kW == 16 ? 12 : 8>(p.f2, c.g_h2, c.h1, c.g_h1, kF2, kF1, h);
    dense_input_gradient<kW == 16 ? 16 : 8>(p.f1, c.g_h1, nullptr, c.g_h0, kF1, kF0, h);  // h0's ReLU: in spread
  }
  float* rows0 = c.rows;
  float* rows1 = rows0 + kL * kRow0;
  float* rows2 = rows1 + kL * kRow1;
  to_rows(c.h0, rows0, kF0, kRow0);
  to_rows(c.h1, rows1, kF1, kRow1);
  to_rows(c.h2, rows2, kF2, kRow2);
  dense_weight_gradient(c.z, rows2, c.fc + kFcW3, c.fc + kFcB3, kF3, kRow2);
  dense_weight_gradient(c.g_h2, rows1, c.fc + kFcW2, c.fc + kFcB2, kF2, kRow1);
  dense_weight_gradient(c.g_h1, rows0, c.fc + kFcW1, c.fc + kFcB1, kF1, kRow0);
  clock.lap(kFcBackward);
  for (int64_t h = 0; h < kV; ++h) {
    for (int64_t co = 0; co < kCh2; ++co) {
      const vf bias = spread(c.g_h0, c.h0, c.c2, c.g_conv2 + at(co, 0, 0, kC2, 0), kP2, h, co);
      store(c.lanes + (kGradB2 + co) * kL + h * kW, bias);
    }
    for (int64_t c0 = 0; c0 < kCh2; c0 += kConv2Outputs)
      for (int64_t ci = 0; ci < kCh1; ++ci)
        for (int64_t ky = 0; ky < kK; ++ky) conv2_taps<kConv2Outputs>(c, c0, ci, ky, h);
    for (int64_t c0 = 0; c0 < kCh1; c0 += kInputChannels)
      for (int64_t y = 0; y < kP1; ++y) conv2_input_row<kInputChannels>(c, p.w2, c0, y, h);
  }
  clock.lap(kConv2Backward);
  for (int64_t h = 0; h < kV; ++h) {
    for (int64_t channel = 0; channel < kCh1; ++channel) {
      const vf bias = spread(c.g_a1, c.a1, c.c1, c.g_conv1, kP1, h, channel);
      store(c.lanes + (kGradB1 + channel) * kL + h * kW, bias);
      conv1_taps<0>(c, channel, h);
    }
  }
  clock.lap(kConv1Backward);
  for (int64_t i = kGradB2 + kCh2; i < kGrads; ++i) std::memset(c.lanes + i * kL, 0, kL * sizeof(float));
  for (int64_t i = 0; i < kGrads; i += kL) lane_sums(c.lanes + i * kL, c.grads + i);
  clock.lap(kSums);
}

// Each parameter's gradient in a chunk's conv or fc gradients: offset, rows, row length there and in the parameter.
struct Piece { bool fc; int64_t from, rows, stride, length; };
constexpr Piece kPieces[10] = {{false, kGradW1, 1, 0, kGradB1 - kGradW1}, {false, kGradB1, 1, 0, kCh1},
                               {false, kGradW2, 1, 0, kGradB2 - kGradW2}, {false, kGradB2, 1, 0, kCh2},
                               {true, kFcW1, kF1, kRow0, kF0}, {true, kFcB1, 1, 0, kF1},
                               {true, kFcW2, kF2, kRow1, kF1}, {true, kFcB2, 1, 0, kF2},
                               {true, kFcW3, kF3, kRow2, kF2}, {true, kFcB3, 1, 0, kF3}};
// The parameters in two groups of about the same size (fc1's weight cut at a row), whose gradients are summed over
// the chunks, and updated, in parallel: (parameter, first row, rows).
struct Rows { int64_t param, first, rows; };
constexpr int64_t kSplit = 76;  // fc1's weight rows in the first group
constexpr Rows kGroups[2][6] = {{{0, 0, 1}, {1, 0, 1}, {2, 0, 1}, {3, 0, 1}, {4, 0, kSplit}, {5, 0, 1}},
                                {{4, kSplit, kF1 - kSplit}, {6, 0, kF2}, {7, 0, 1}, {8, 0, kF3}, {9, 0, 1}, {-1, 0, 0}}};

// The loss of the paper's LeNet-5 on B images with their labels, and the gradients of its ten parameters, written
// to `grads` (in the order of model.parameters(): conv1 weight, bias, conv2, fc1, fc2, fc3; contiguous float32).
// The images are rows idx[0 .. B-1] of xp (and their labels of yp), or its first B rows where idx is null. The
// chunks of 16 images run in parallel, each through the whole step; then their gradients are summed in order (in
// parallel over the parameters), so the result is the same whatever the number of threads. Where `update` is
// given, each group of parameters is then updated by it, in the same parallel region.
template <typename Update>
float step(const float* xp, const int64_t* yp, const int64_t* idx, int64_t batch, const at::Tensor (&weights)[10],
           float* const (&grads)[10], const Update& update) {
  at::NoGradGuard no_grad;
  RECORD_FUNCTION("hdr_lenet5::chunks", std::vector<c10::IValue>());  // a span for the profiler
  const int64_t chunks = chunks_of(batch);
  const Weights p = {weights[0].data_ptr<float>(), weights[1].data_ptr<float>(), weights[2].data_ptr<float>(),
                     weights[3].data_ptr<float>(), weights[4].data_ptr<float>(), weights[5].data_ptr<float>(),
                     weights[6].data_ptr<float>(), weights[7].data_ptr<float>(), weights[8].data_ptr<float>(),
                     weights[9].data_ptr<float>()};
  float* space = workspace(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) chunk_step(chunk_at(space, k), xp, yp, idx, k, batch, p);
  });
  at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
    for (int64_t group = begin; group < end; ++group) {
      PartClock clock;
      for (const Rows& part : kGroups[group]) {
        if (part.param < 0) continue;
        const Piece& piece = kPieces[part.param];
        for (int64_t r = part.first; r < part.first + part.rows; ++r) {
          float* to = grads[part.param] + r * piece.length;
          for (int64_t k = 0; k < chunks; ++k) {
            const Chunk c = chunk_at(space, k);
            const float* from = (piece.fc ? c.fc : c.grads) + piece.from + r * piece.stride;
            if (k == 0) {
              std::memcpy(to, from, piece.length * sizeof(float));
            } else {
              for (int64_t e = 0; e < piece.length; ++e) to[e] += from[e];
            }
          }
        }
      }
      clock.lap(kSums);
      update(kGroups[group]);
      clock.lap(kUpdate);
    }
  });
  float loss = 0.f;
  for (int64_t k = 0; k < chunks; ++k)
    for (int64_t n = 0; n < kL; ++n) loss += chunk_at(space, k).losses[n];
  return loss / static_cast<float>(batch);
}

inline void no_update(const Rows (&)[6]) {}

// The parameters, checked, contiguous.
void check_weights(at::TensorList given, at::Tensor (&weights)[10]) {
  TORCH_CHECK(given.size() == 10, "hdr_lenet5: LeNet-5 has 10 parameter tensors");
  static const std::vector<std::vector<int64_t>> shapes = {{kCh1, 1, kK, kK}, {kCh1}, {kCh2, kCh1, kK, kK}, {kCh2},
                                                           {kF1, kF0}, {kF1}, {kF2, kF1}, {kF2}, {kF3, kF2}, {kF3}};
  for (int64_t i = 0; i < 10; ++i) {
    TORCH_CHECK(given[i].scalar_type() == at::kFloat && given[i].sizes() == at::IntArrayRef(shapes[i]),
                "hdr_lenet5: parameter ", i, " must be float32 of the paper's LeNet-5 shape");
    weights[i] = given[i].contiguous();
  }
}

void check_images(const at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == 1 && x.size(2) == kIn && x.size(3) == kIn && x.is_contiguous() &&
                  x.scalar_type() == at::kFloat,
              "hdr_lenet5: x must be a contiguous float32 tensor [B, 1, 28, 28]");
  TORCH_CHECK(y.dim() == 1 && y.size(0) == x.size(0) && y.scalar_type() == at::kLong && y.is_contiguous(),
              "hdr_lenet5: y must be int64 labels [B]");
}

// The labels of the images picked (rows idx, or the first `batch`) are classes 0 to 9.
void check_labels(const at::Tensor& y, const int64_t* idx, int64_t batch) {
  const int64_t* yp = y.data_ptr<int64_t>();
  for (int64_t n = 0; n < batch; ++n) {
    const int64_t label = yp[idx ? idx[n] : n];
    TORCH_CHECK(label >= 0 && label < kF3, "hdr_lenet5: labels must be 0 to 9, not ", label);
  }
}

// The loss and the gradients of the ten parameters, as new tensors: [loss, conv1 weight, conv1 bias, ...].
std::vector<at::Tensor> loss_and_gradients(const at::Tensor& x, const at::Tensor& y, const at::Tensor& conv1_weight,
                                           const at::Tensor& conv1_bias, const at::Tensor& conv2_weight,
                                           const at::Tensor& conv2_bias, const at::Tensor& fc1_weight,
                                           const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
                                           const at::Tensor& fc2_bias, const at::Tensor& fc3_weight,
                                           const at::Tensor& fc3_bias) {
  check_images(x, y);
  TORCH_CHECK(x.size(0) > 0, "hdr_lenet5: the batch is empty");
  check_labels(y, nullptr, x.size(0));
  at::Tensor weights[10];
  check_weights({conv1_weight, conv1_bias, conv2_weight, conv2_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                 fc3_weight, fc3_bias}, weights);
  std::vector<at::Tensor> out(11);
  float* grads[10];
  for (int64_t i = 0; i < 10; ++i) grads[i] = (out[i + 1] = at::empty(weights[i].sizes(), x.options())).data_ptr<float>();
  const float loss = step(x.data_ptr<float>(), y.data_ptr<int64_t>(), nullptr, x.size(0), weights, grads, no_update);
  out[0] = at::full({}, loss, x.options());
  return out;
}

// The images picked (rows idx of x, or all of x) and the gradients' pointers, checked.
int64_t picked_batch(const at::Tensor& x, const at::Tensor& y, const c10::optional<at::Tensor>& idx,
                     at::TensorList given, at::TensorList grads, at::Tensor (&weights)[10], float* (&out)[10],
                     const int64_t*& picked) {
  check_images(x, y);
  check_weights(given, weights);
  TORCH_CHECK(grads.size() == 10, "hdr_lenet5: LeNet-5 has 10 parameter tensors");
  for (int64_t i = 0; i < 10; ++i) {
    TORCH_CHECK(grads[i].sizes() == weights[i].sizes() && grads[i].is_contiguous() &&
                    grads[i].scalar_type() == at::kFloat,
                "hdr_lenet5: gradient ", i, " must be a contiguous float32 tensor of its parameter's shape");
    out[i] = grads[i].data_ptr<float>();
  }
  picked = nullptr;
  int64_t batch = x.size(0);
  if (idx.has_value()) {
    TORCH_CHECK(idx->dim() == 1 && idx->scalar_type() == at::kLong && idx->is_contiguous(),
                "hdr_lenet5: idx must be int64 indices [B]");
    picked = idx->data_ptr<int64_t>();
    batch = idx->size(0);
    for (int64_t n = 0; n < batch; ++n)
      TORCH_CHECK(picked[n] >= 0 && picked[n] < x.size(0), "hdr_lenet5: index ", picked[n], " is out of range");
  }
  TORCH_CHECK(batch > 0, "hdr_lenet5: the batch is empty");
  check_labels(y, picked, batch);
  return batch;
}

// The same, written into the parameters' gradient tensors `grads` (in place; what the optimiser reads), given the
// parameters as `weights`, both in the order of model.parameters(), for the images idx of x (and their labels in y);
// returns the loss. The batch is gathered inside the step: no copy of it is made.
at::Tensor gradients_into(const at::Tensor& x, const at::Tensor& y, const c10::optional<at::Tensor>& idx,
                          at::TensorList given, at::TensorList grads) {
  at::Tensor weights[10];
  float* out[10];
  const int64_t* picked;
  const int64_t batch = picked_batch(x, y, idx, given, grads, weights, out, picked);
  return at::full({}, step(x.data_ptr<float>(), y.data_ptr<int64_t>(), picked, batch, weights, out, no_update),
                  x.options());
}

// SGD with momentum on n floats (n a multiple of 16), as torch._fused_sgd_'s CPU kernel computes it in its vector
// loop (ATen's sgd_math, float, after the first step, no dampening, weight decay or Nesterov), bit for bit: buf =
// buf * momentum + grad * 1, the product and the sum rounded each on its own (the empty asm statement keeps the
// compiler from fusing them, as the kernel's `* (1 - dampening)` does there), then param = param + buf * (-lr) as
// one fused multiply-add (as the kernel's compiler contracts it). Elements that the kernel would leave to its
// scalar loop (a tensor's last n % 16) are never given here: they go to the kernel itself. tests/test_native.py
// compares the result with optimizer.step()'s, bit for bit.
inline void sgd(float* param, const float* grad, float* buf, int64_t n, double momentum, double lr) {
  const vf m = vf{} + static_cast<float>(momentum), step = vf{} + static_cast<float>(-lr);
  for (int64_t i = 0; i < n; i += kW) {
    vf kept = load(buf + i) * m;
    asm("" : "+x"(kept));
    const vf b = kept + load(grad + i);
    store(buf + i, b);
    store(param + i, load(param + i) + b * step);
  }
}

// The momentum buffers `buffers` of the parameters `params` (the tensors the optimiser holds), checked.
void check_buffers(at::TensorList params, at::TensorList buffers) {
  TORCH_CHECK(buffers.size() == 10, "hdr_lenet5: one momentum buffer per parameter");
  for (int64_t i = 0; i < 10; ++i)
    TORCH_CHECK(params[i].is_contiguous() && buffers[i].sizes() == params[i].sizes() &&
                    buffers[i].is_contiguous() && buffers[i].scalar_type() == at::kFloat,
                "hdr_lenet5: parameter ", i, " and its momentum buffer must be contiguous float32 of one shape");
}

// SGD with momentum (no dampening, weight decay or Nesterov) on one group of parameters (`params`, updated in
// place, with their momentum buffers): the arithmetic of torch._fused_sgd_, the kernel that
// torch.optim.SGD(fused=True).step() calls after its first step, so the same numbers and the same state; run in the
// threads that summed the group's gradients (the kernel's own parallel loop would be a region per tensor).
struct FusedSgd {
  at::TensorList params, grads, buffers;
  double lr, momentum;

  void operator()(const Rows (&group)[6]) const {
    std::vector<at::Tensor> p, g, b;
    for (const Rows& part : group) {
      if (part.param < 0) continue;
      const int64_t i = part.param;
      const int64_t length = kPieces[i].rows == 1 ? kPieces[i].length : part.rows * kPieces[i].length;
      const int64_t from = kPieces[i].rows == 1 ? 0 : part.first * kPieces[i].length;
      if (length % 16 == 0) {  // whole vectors only: see sgd above
        sgd(params[i].data_ptr<float>() + from, grads[i].data_ptr<float>() + from,
            buffers[i].data_ptr<float>() + from, length, momentum, lr);
        continue;
      }
      // A piece of rows (of a fully connected weight, its rows are the tensor's), or the whole tensor.
      const bool whole = kPieces[i].rows == 1 || (part.first == 0 && part.rows == kPieces[i].rows);
      p.push_back(whole ? params[i] : params[i].narrow(0, part.first, part.rows));
      g.push_back(whole ? grads[i] : grads[i].narrow(0, part.first, part.rows));
      b.push_back(whole ? buffers[i] : buffers[i].narrow(0, part.first, part.rows));
    }
    if (!p.empty())
      at::_fused_sgd_(p, g, b, 0.0, momentum, lr, 0.0, false, false, false, c10::nullopt, c10::nullopt);
  }
};

// gradients_into, then the update (FusedSgd) on the parameters `params` with their momentum buffers. Returns the
// loss.
at::Tensor train_step(const at::Tensor& x, const at::Tensor& y, const c10::optional<at::Tensor>& idx,
                      at::TensorList params, at::TensorList grads, at::TensorList buffers, double lr,
                      double momentum) {
  at::Tensor weights[10];
  float* out[10];
  const int64_t* picked;
  const int64_t batch = picked_batch(x, y, idx, params, grads, weights, out, picked);
  check_buffers(params, buffers);
  const FusedSgd update{params, grads, buffers, lr, momentum};
  return at::full({}, step(x.data_ptr<float>(), y.data_ptr<int64_t>(), picked, batch, weights, out, update),
                  x.options());
}

// train_step over consecutive batches of `order` (batch_size images each, the last one what is left), one after the
// other in one call, so that no Python runs between them: step k's loss goes to losses[k] and its wall-clock
// seconds to seconds[k]. A step that takes longer than `stop_after` seconds is the last one run (the thread
// governor's probe of a slower thread count ends after one such step). Returns the number of steps run.
int64_t train_steps(const at::Tensor& x, const at::Tensor& y, const at::Tensor& order, int64_t batch_size,
                    at::TensorList params, at::TensorList grads, at::TensorList buffers, double lr, double momentum,
                    double stop_after, const at::Tensor& losses, const at::Tensor& seconds) {
  TORCH_CHECK(batch_size > 0, "hdr_lenet5: batch_size must be positive");
  at::Tensor weights[10];
  float* out[10];
  const int64_t* picked;
  const int64_t total = picked_batch(x, y, order, params, grads, weights, out, picked);  // every index checked once
  check_buffers(params, buffers);
  const int64_t steps = (total + batch_size - 1) / batch_size;
  TORCH_CHECK(losses.scalar_type() == at::kFloat && losses.is_contiguous() && losses.numel() >= steps &&
                  seconds.scalar_type() == at::kDouble && seconds.is_contiguous() && seconds.numel() >= steps,
              "hdr_lenet5: losses (float32) and seconds (float64) need room for ", steps, " steps");
  const FusedSgd update{params, grads, buffers, lr, momentum};
  float* loss_out = losses.data_ptr<float>();
  double* seconds_out = seconds.data_ptr<double>();
  for (int64_t k = 0; k < steps; ++k) {
    const auto start = std::chrono::steady_clock::now();
    const int64_t first = k * batch_size;
    loss_out[k] = step(x.data_ptr<float>(), y.data_ptr<int64_t>(), picked + first,
                       std::min(batch_size, total - first), weights, out, update);
    seconds_out[k] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (seconds_out[k] > stop_after) return k + 1;
  }
  return steps;
}

// Seconds of thread time spent in each part of the step (Part, in order) since the last call with reset = true.
at::Tensor part_seconds(bool reset) {
  auto out = at::empty({kParts}, at::kDouble);
  for (int64_t i = 0; i < kParts; ++i)
    out[i] = static_cast<double>(reset ? part_nanoseconds[i].exchange(0) : part_nanoseconds[i].load()) * 1e-9;
  return out;
}

}  // namespace

// The namespace is the build's (hdr_lenet5, hdr_lenet5_avx2), so that both builds can be loaded in one process.
#define HDR_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define HDR_LIBRARY_IMPL(ns, k, m) TORCH_LIBRARY_IMPL(ns, k, m)

HDR_LIBRARY(HDR_NS, m) {
  m.def("loss_and_gradients(Tensor x, Tensor y, Tensor conv1_weight, Tensor conv1_bias, Tensor conv2_weight, "
        "Tensor conv2_bias, Tensor fc1_weight, Tensor fc1_bias, Tensor fc2_weight, Tensor fc2_bias, "
        "Tensor fc3_weight, Tensor fc3_bias) -> Tensor[]");
  m.def("gradients_into(Tensor x, Tensor y, Tensor? idx, Tensor[] weights, Tensor(a!)[] grads) -> Tensor");
  m.def("train_step(Tensor x, Tensor y, Tensor? idx, Tensor(a!)[] params, Tensor(b!)[] grads, "
        "Tensor(c!)[] buffers, float lr, float momentum) -> Tensor");
  m.def("train_steps(Tensor x, Tensor y, Tensor order, int batch_size, Tensor(a!)[] params, Tensor(b!)[] grads, "
        "Tensor(c!)[] buffers, float lr, float momentum, float stop_after, Tensor(d!) losses, Tensor(e!) seconds) "
        "-> int");
  m.def("part_seconds(bool reset) -> Tensor");
}

HDR_LIBRARY_IMPL(HDR_NS, CPU, m) {
  m.impl("loss_and_gradients", &loss_and_gradients);
  m.impl("gradients_into", &gradients_into);
  m.impl("train_step", &train_step);
  m.impl("train_steps", &train_steps);
}

HDR_LIBRARY_IMPL(HDR_NS, CatchAll, m) { m.impl("part_seconds", &part_seconds); }
