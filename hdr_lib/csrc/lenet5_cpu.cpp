// LeNet-5's training step on the CPU (the paper's variant: 28x28 input, no padding), as one native operator.
//
// hdr_lib.fastcpu.train_step computes the same loss and gradients with PyTorch operators from Python; this file
// does it in C++, for two reasons measured on a 2-core CPU:
//  - the first block (conv1 with 1 input channel, its ReLU and 2x2 max pooling) and the second pooling are small
//    and oddly shaped, and PyTorch's general kernels for them are far from the arithmetic they need: here they
//    are written out as loops that the compiler vectorises, forward and backward, with the pooling fused in;
//  - the step runs about a hundred operators, and calling each from Python costs a few microseconds.
// conv2 and the fully connected layers call the same ATen operators as the Python step (oneDNN, MKL).
//
// Rounding: the sums run in a different order from oneDNN's, so values differ in the last bits; the tests
// compare every gradient with autograd's on the module.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kIn = 28;   // input side
constexpr int64_t kK = 5;     // kernel side
constexpr int64_t kP1 = 12;   // pooled side of conv1 (its output is 24 x 24)
constexpr int64_t kCh1 = 6;   // conv1 channels
constexpr int64_t kPad = 32;  // row length of the column-split image (12 outputs + 4 taps + spare lanes)

// 16 floats in a vector register (AVX-512, or two AVX registers), loaded from any address.
typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t i16 __attribute__((vector_size(64), aligned(4)));

inline v16 splat(float v) { return v16{} + v; }
inline v16 select(i16 mask, v16 a, v16 b) { return mask ? a : b; }

// One image split by column parity, zero-padded: even[r][m] = x[r][2m], odd[r][m] = x[r][2m + 1]. With it, the
// 12 conv1 outputs at the even (or the odd) columns of a row are one 16-lane vector sum, 12 lanes used.
struct SplitImage {
  alignas(64) float even[kIn][kPad];
  alignas(64) float odd[kIn][kPad];

  explicit SplitImage(const float* x) {
    for (int64_t r = 0; r < kIn; ++r) {
      for (int64_t m = 0; m < kPad; ++m) {
        even[r][m] = m < kIn / 2 ? x[r * kIn + 2 * m] : 0.f;
        odd[r][m] = m < kIn / 2 ? x[r * kIn + 2 * m + 1] : 0.f;
      }
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
      for (int64_t c = 0; c < kCh1; ++c) {
        const float* w = wp + c * kK * kK;
        float* o = op + (n * kCh1 + c) * kP1 * kP1;
        uint8_t* k = cp + (n * kCh1 + c) * kP1 * kP1;
        for (int64_t pi = 0; pi < kP1; ++pi) {
          v16 v[4];  // the window's corners, in row-major order, for 16 windows (12 used)
          for (auto& corner_sum : v) corner_sum = splat(bp[c]);
#pragma GCC unroll 5
          for (int64_t ki = 0; ki < kK; ++ki) {
#pragma GCC unroll 5
            for (int64_t kj = 0; kj < kK; ++kj) {
              const v16 wv = splat(w[ki * kK + kj]);
              v[0] += wv * image.tap(2 * pi, ki, kj, 0);
              v[1] += wv * image.tap(2 * pi, ki, kj, 1);
              v[2] += wv * image.tap(2 * pi + 1, ki, kj, 0);
              v[3] += wv * image.tap(2 * pi + 1, ki, kj, 1);
            }
          }
          const i16 right_top = v[1] > v[0];
          const v16 top = select(right_top, v[1], v[0]);
          const i16 right_bottom = v[3] > v[2];
          const v16 bottom = select(right_bottom, v[3], v[2]);
          const i16 in_bottom = bottom > top;
          const v16 value = select(in_bottom, bottom, top);
          const v16 relu = select(value > 0.f, value, splat(0.f));
          // corner = 2 in_bottom + (in_bottom ? right_bottom : right_top); masks are 0 or -1
          const i16 which = in_bottom ? 2 - right_bottom : -right_top;
          for (int64_t pj = 0; pj < kP1; ++pj) {
            o[pi * kP1 + pj] = relu[pj];
            k[pi * kP1 + pj] = static_cast<uint8_t>(which[pj]);
          }
        }
      }
    }
  });
  return {out, corner};
}

// The gradients of conv1's weight [6, 1, 5, 5] and bias [6], given `grad`, the gradient of the output `out` of
// conv1_pool_forward: each window's gradient goes to its corner, none where ReLU cut (out == 0).
std::vector<at::Tensor> conv1_pool_backward(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& corner,
                                            const at::Tensor& x) {
  RECORD_FUNCTION("hdr_lenet5::conv1_pool_backward", std::vector<c10::IValue>());  // a span for the profiler
  const int64_t batch = x.size(0);
  const int64_t chunks = std::min<int64_t>(batch, at::get_num_threads());
  auto partial = at::zeros({chunks, kCh1, kK * kK + 1}, x.options());  // per chunk: weight, bias gradient
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
          v16 a[kK * kK];
          for (int64_t t = 0; t < kK * kK; ++t) a[t] = acc[c][t];
          for (int64_t pi = 0; pi < kP1; ++pi) {
            alignas(64) float g[16] = {};
            alignas(64) int32_t k[16];
            for (int64_t pj = 0; pj < kP1; ++pj) {
              g[pj] = op[at + pi * kP1 + pj] > 0.f ? gp[at + pi * kP1 + pj] : 0.f;
              k[pj] = cp[at + pi * kP1 + pj];
            }
            for (int64_t pj = kP1; pj < 16; ++pj) k[pj] = 0;
            const v16 gv = *reinterpret_cast<const v16*>(g);
            const i16 kv = *reinterpret_cast<const i16*>(k);
            bias_acc[c] += gv;
            for (int64_t which = 0; which < 4; ++which) {
              const v16 gk = select(kv == static_cast<int32_t>(which), gv, splat(0.f));
              const int64_t di = which >> 1, dj = which & 1;
#pragma GCC unroll 5
              for (int64_t ki = 0; ki < kK; ++ki) {
#pragma GCC unroll 5
                for (int64_t kj = 0; kj < kK; ++kj) a[ki * kK + kj] += gk * image.tap(2 * pi + di, ki, kj, dj);
              }
            }
          }
          for (int64_t t = 0; t < kK * kK; ++t) acc[c][t] = a[t];
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

// relu(max_pool2d(a, 2, 2)) for conv2's output a [B, C, 8, 8] (any even side): pooled [B, C, 4, 4] and, per
// window, the offset in `a` of its first maximum in row-major order, or -1 where ReLU cut (the maximum <= 0).
std::vector<at::Tensor> pool_relu_forward(const at::Tensor& a) {
  RECORD_FUNCTION("hdr_lenet5::pool_relu_forward", std::vector<c10::IValue>());  // a span for the profiler
  const int64_t planes = a.size(0) * a.size(1), side = a.size(2), half = side / 2;
  auto pooled = at::empty({a.size(0), a.size(1), half, half}, a.options());
  auto where = at::empty({a.size(0), a.size(1), half, half}, a.options().dtype(at::kInt));
  const float* ap = a.data_ptr<float>();
  float* pp = pooled.data_ptr<float>();
  int32_t* wp = where.data_ptr<int32_t>();
  at::parallel_for(0, planes, 16, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const float* in = ap + plane * side * side;
      for (int64_t i = 0; i < half; ++i) {
        for (int64_t j = 0; j < half; ++j) {
          const int64_t top = 2 * i * side + 2 * j, bottom = top + side;
          int64_t best = top;
          if (in[top + 1] > in[best]) best = top + 1;
          if (in[bottom] > in[best]) best = bottom;
          if (in[bottom + 1] > in[best]) best = bottom + 1;
          const float value = in[best];
          const int64_t at = plane * half * half + i * half + j;
          pp[at] = value > 0.f ? value : 0.f;
          wp[at] = value > 0.f ? static_cast<int32_t>(plane * side * side + best) : -1;
        }
      }
    }
  });
  return {pooled, where};
}

// The gradient of pool_relu_forward for its input [B, C, side, side], and its sum per channel (conv2's bias
// gradient).
std::vector<at::Tensor> pool_relu_backward(const at::Tensor& grad, const at::Tensor& where, int64_t side) {
  RECORD_FUNCTION("hdr_lenet5::pool_relu_backward", std::vector<c10::IValue>());  // a span for the profiler
  const int64_t batch = grad.size(0), channels = grad.size(1), windows = grad.size(2) * grad.size(3);
  const int64_t area = side * side;
  auto dense = at::empty({batch, channels, side, side}, grad.options());
  auto plane_sums = at::empty({batch, channels}, grad.options());
  const float* gp = grad.data_ptr<float>();
  const int32_t* wp = where.data_ptr<int32_t>();
  float* dp = dense.data_ptr<float>();
  float* sp = plane_sums.data_ptr<float>();
  at::parallel_for(0, batch * channels, 16, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      float* out = dp + plane * area;
      for (int64_t k = 0; k < area; ++k) out[k] = 0.f;
      float sum = 0.f;
      for (int64_t q = plane * windows; q < (plane + 1) * windows; ++q) {
        if (wp[q] >= 0) {
          dp[wp[q]] = gp[q];
          sum += gp[q];
        }
      }
      sp[plane] = sum;
    }
  });
  return {dense, plane_sums.sum(0)};
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
  at::Tensor a2, h0, h1, h2, logits;
  {
    RECORD_FUNCTION("hdr_lenet5::conv2", std::vector<c10::IValue>());
    a2 = at::conv2d(a1, conv2_weight, conv2_bias);  // [B, 16, 8, 8], before its ReLU
  }
  auto second = pool_relu_forward(a2);
  {
    RECORD_FUNCTION("hdr_lenet5::fully_connected", std::vector<c10::IValue>());
    h0 = second[0].flatten(1);
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
    grad = linear_backward(grad, h0, fc1_weight, fc1).view(second[0].sizes());
  }
  auto pooled_back = pool_relu_backward(grad, second[1], a2.size(2));
  const at::Tensor& grad_a2 = pooled_back[0];
  at::Tensor conv2_weight_grad, grad_a1;
  {
    RECORD_FUNCTION("hdr_lenet5::conv2", std::vector<c10::IValue>());
    // conv2's weight gradient as a forward convolution of its input with the output gradient, the batch in place
    // of the channels (oneDNN runs it faster than its backward-weights kernel here).
    conv2_weight_grad = at::conv2d(a1.transpose(0, 1), grad_a2.transpose(0, 1)).transpose(0, 1).contiguous();
    grad_a1 = std::get<0>(at::convolution_backward(grad_a2, a1, conv2_weight, c10::nullopt, {1, 1}, {0, 0}, {1, 1},
                                                   false, {0, 0}, 1, {true, false, false}));
  }
  auto conv1_grads = conv1_pool_backward(grad_a1.contiguous(), a1, first[1], x);
  return {loss_grad[0], conv1_grads[0], conv1_grads[1], conv2_weight_grad, pooled_back[1], fc1[0], fc1[1],
          fc2[0], fc2[1], fc3[0], fc3[1]};
}

}  // namespace

TORCH_LIBRARY(hdr_lenet5, m) {
  m.def("conv1_pool_forward(Tensor x, Tensor weight, Tensor bias) -> Tensor[]");
  m.def("conv1_pool_backward(Tensor grad, Tensor out, Tensor corner, Tensor x) -> Tensor[]");
  m.def("pool_relu_forward(Tensor a) -> Tensor[]");
  m.def("loss_and_gradients(Tensor x, Tensor y, Tensor conv1_weight, Tensor conv1_bias, Tensor conv2_weight, "
        "Tensor conv2_bias, Tensor fc1_weight, Tensor fc1_bias, Tensor fc2_weight, Tensor fc2_bias, "
        "Tensor fc3_weight, Tensor fc3_bias) -> Tensor[]");
  m.def("pool_relu_backward(Tensor grad, Tensor where, int side) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(hdr_lenet5, CPU, m) {
  m.impl("conv1_pool_forward", &conv1_pool_forward);
  m.impl("conv1_pool_backward", &conv1_pool_backward);
  m.impl("pool_relu_forward", &pool_relu_forward);
  m.impl("loss_and_gradients", &loss_and_gradients);
  m.impl("pool_relu_backward", &pool_relu_backward);
}
