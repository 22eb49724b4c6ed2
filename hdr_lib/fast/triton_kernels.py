"""The two Triton kernels of the CUDA training step (hdr_lib.fast.triton_step loads this module when it is used).

`sample_kernel`, one program per image of the batch: the whole forward pass, the loss, and the backward pass of
that image, with each convolution, its ReLU and its 2x2 max pooling computed per pooling corner (as
hdr_lib/fast/csrc/lenet5_cpu.cpp does on the CPU). conv2's input gradient uses the pooling too: only a window's winning
corner carries a gradient, so each pooled position reaches one 6x6 patch of conv2's input, through conv2.weight
shifted by its corner (about a third of the multiply-adds of a transposed convolution over the whole 8x8 output
gradient, three quarters of which is zeros). The image's share of every gradient goes to its row of a scratch
buffer: the convolutions' weight and bias gradients themselves, and for the fully connected layers the inputs and
output gradients whose outer products are theirs.

`update_kernel`, one program per 128 parameters: each parameter's gradient as a sum over the batch's rows, in a
fixed order (no atomics: the same inputs give the same bits), then SGD with momentum on a flat copy of the
parameters, buf = momentum * buf + grad and p -= lr * buf (PyTorch's SGD without dampening, weight decay or
Nesterov), and the batch's mean loss.

Every product is IEEE float32 (tl.dot with input_precision="ieee": no TF32), as the paper's configuration is.
With TRITON_INTERPRET=1 set before this module is imported, the kernels run on the CPU in Triton's interpreter:
that is how the test suite checks them on a machine without a GPU.
"""

import triton
import triton.language as tl

# A sample's row in the scratch buffer (float32 offsets).
C1W = tl.constexpr(0)  # conv1.weight's gradient, 6 x 25
C1B = tl.constexpr(150)  # conv1.bias's, 6
C2W = tl.constexpr(156)  # conv2.weight's, 16 x 6 x 25
C2B = tl.constexpr(2556)  # conv2.bias's, 16
DZ1 = tl.constexpr(2572)  # the loss's gradient at fc1's output (before ReLU), 120
DZ2 = tl.constexpr(2692)  # at fc2's, 84
DZ3 = tl.constexpr(2776)  # at fc3's (the logits), 10
H0 = tl.constexpr(2786)  # fc1's input (conv2 pooled, flattened as the module does), 256
H1 = tl.constexpr(3042)  # fc2's input, 120
H2 = tl.constexpr(3162)  # fc3's input, 84
ONE = tl.constexpr(3246)  # 1.0: a bias's gradient is its output gradient times this
LOSS = tl.constexpr(3247)  # the sample's loss divided by the batch size
A1 = tl.constexpr(3264)  # conv1 pooled, 16 x 256 (6 x 144 used)
DH = tl.constexpr(7360)  # fc2's, then fc1's input gradient, 256
T6 = tl.constexpr(7616)  # conv2's input gradient per pooled position over its 6x6 window, 16 x (6 x 36)
ROW = tl.constexpr(11072)
IROW = tl.constexpr(4352)  # int32 per sample: conv1's winning pooling corners (16 x 256, 6 x 144 used), conv2's


@triton.jit
def sample_kernel(x_ptr, y_ptr, idx_ptr, w1, b1, w2, b2, f1w, f1b, f2w, f2b, f3w, f3b, s_ptr, i_ptr, inv_n):
    b = tl.program_id(0)
    row = tl.load(idx_ptr + b)
    label = tl.load(y_ptr + row)
    x = x_ptr + row * 784
    s = s_ptr + b * ROW
    si = i_ptr + b * IROW
    c16 = tl.arange(0, 16)
    k32 = tl.arange(0, 32)  # a 5x5 kernel's 25 taps
    ky = k32 // 5
    kx = k32 % 5
    kok = k32 < 25
    p256 = tl.arange(0, 256)  # conv1's 12x12 pooled positions
    pi = p256 // 12
    pj = p256 % 12
    pok = p256 < 144
    q16 = tl.arange(0, 16)  # conv2's 4x4 pooled positions
    qi = q16 // 4
    qj = q16 % 4
    ok1 = (c16[:, None] < 6) & pok[None, :]

    # conv1 + ReLU + pooling: per corner (dy, dx) of the 2x2 windows, the convolution at those pixels; the first
    # corner in row-major order that holds the maximum wins, as in max_pool2d. One input channel: each of the 25
    # taps adds an outer product of the 6 (of 8) channels' weights and the 144 (of 256) pixels.
    c8 = tl.arange(0, 8)
    best1 = tl.full((8, 256), float("-inf"), tl.float32)
    win1 = tl.zeros((8, 256), tl.int32)
    for c in tl.static_range(4):
        conv = tl.zeros((8, 256), tl.float32)
        for tap in tl.static_range(25):
            w = tl.load(w1 + c8 * 25 + tap, mask=c8 < 6, other=0.0)
            pixels = tl.load(x + (2 * pi + c // 2 + tap // 5) * 28 + 2 * pj + c % 2 + tap % 5, mask=pok, other=0.0)
            conv += w[:, None] * pixels[None, :]
        better = conv > best1
        best1 = tl.where(better, conv, best1)
        win1 = tl.where(better, c, win1)
    a1 = tl.maximum(best1 + tl.load(b1 + c8, mask=c8 < 6, other=0.0)[:, None], 0.0)
    tl.store(s + A1 + c8[:, None] * 256 + p256[None, :], a1, mask=(c8[:, None] < 6) & pok[None, :])
    tl.store(si + c8[:, None] * 256 + p256[None, :], win1)
    tl.debug_barrier()

    # conv2 + ReLU + pooling, the same way: [16 channels, 16 pooled positions] per corner, summed over 6 inputs.
    best2 = tl.full((16, 16), float("-inf"), tl.float32)
    win2 = tl.zeros((16, 16), tl.int32)
    for c in tl.static_range(4):
        conv = tl.zeros((16, 16), tl.float32)
        for ci in tl.static_range(6):
            w2t = tl.load(w2 + c16[:, None] * 150 + ci * 25 + k32[None, :], mask=kok[None, :], other=0.0)
            patch = tl.load(s + A1 + ci * 256 + (2 * qi[None, :] + c // 2 + ky[:, None]) * 12
                            + (2 * qj[None, :] + c % 2 + kx[:, None]), mask=kok[:, None], other=0.0)
            conv += tl.dot(w2t, patch, input_precision="ieee")
        better = conv > best2
        best2 = tl.where(better, conv, best2)
        win2 = tl.where(better, c, win2)
    a2 = tl.maximum(best2 + tl.load(b2 + c16)[:, None], 0.0)
    tl.store(s + H0 + c16[:, None] * 16 + q16[None, :], a2)  # flattened channel-major, as torch.flatten does
    tl.store(si + 4096 + c16[:, None] * 16 + q16[None, :], win2)
    tl.debug_barrier()

    # fc1 + ReLU, fc2 + ReLU, fc3: matrix-vector products in column chunks.
    o128 = tl.arange(0, 128)
    k64 = tl.arange(0, 64)
    z1 = tl.load(f1b + o128, mask=o128 < 120, other=0.0)
    for kc in tl.static_range(4):
        kk = kc * 64 + k64
        w = tl.load(f1w + o128[:, None] * 256 + kk[None, :], mask=o128[:, None] < 120, other=0.0)
        z1 += tl.sum(w * tl.load(s + H0 + kk)[None, :], axis=1)
    h1 = tl.maximum(z1, 0.0)
    tl.store(s + H1 + o128, h1, mask=o128 < 120)
    tl.debug_barrier()
    z2 = tl.load(f2b + o128, mask=o128 < 84, other=0.0)
    for kc in tl.static_range(4):
        kk = kc * 32 + k32
        w = tl.load(f2w + o128[:, None] * 120 + kk[None, :], mask=(o128[:, None] < 84) & (kk[None, :] < 120),
                    other=0.0)
        z2 += tl.sum(w * tl.load(s + H1 + kk, mask=kk < 120, other=0.0)[None, :], axis=1)
    h2 = tl.maximum(z2, 0.0)
    tl.store(s + H2 + o128, h2, mask=o128 < 84)
    w3 = tl.load(f3w + c16[:, None] * 84 + o128[None, :], mask=(c16[:, None] < 10) & (o128[None, :] < 84), other=0.0)
    z3 = tl.sum(w3 * h2[None, :], axis=1) + tl.load(f3b + c16, mask=c16 < 10, other=0.0)

    # Cross-entropy as log_softmax and nll_loss compute it; its gradient at the logits, over the batch's mean.
    z3 = tl.where(c16 < 10, z3, float("-inf"))
    shifted = z3 - tl.max(z3, axis=0)
    e = tl.exp(shifted)
    total = tl.sum(e, axis=0)
    is_label = c16 == label
    loss = -tl.sum(tl.where(is_label, shifted - tl.log(total), 0.0), axis=0)
    dz3 = tl.where(c16 < 10, (e / total - tl.where(is_label, 1.0, 0.0)) * inv_n, 0.0)
    tl.store(s + LOSS, loss * inv_n)
    tl.store(s + ONE, 1.0)
    tl.store(s + DZ3 + c16, dz3, mask=c16 < 10)

    # Backward through fc3, fc2, fc1 (ReLU's gradient passes where its output is positive).
    dz2 = tl.where(h2 > 0, tl.sum(w3 * dz3[:, None], axis=0), 0.0)
    tl.store(s + DZ2 + o128, dz2, mask=o128 < 84)
    for kc in tl.static_range(4):
        kk = kc * 32 + k32
        w = tl.load(f2w + o128[:, None] * 120 + kk[None, :], mask=(o128[:, None] < 84) & (kk[None, :] < 120),
                    other=0.0)
        tl.store(s + DH + kk, tl.sum(w * dz2[:, None], axis=0), mask=kk < 120)
    tl.debug_barrier()
    dz1 = tl.where(h1 > 0, tl.load(s + DH + o128, mask=o128 < 120, other=0.0), 0.0)
    tl.store(s + DZ1 + o128, dz1, mask=o128 < 120)
    tl.debug_barrier()  # every thread has read fc2's input gradient before fc1's overwrites it
    for kc in tl.static_range(4):
        kk = kc * 64 + k64
        w = tl.load(f1w + o128[:, None] * 256 + kk[None, :], mask=o128[:, None] < 120, other=0.0)
        tl.store(s + DH + kk, tl.sum(w * dz1[:, None], axis=0))
    tl.debug_barrier()

    # conv2's backward: the pooled gradient goes to each window's winning corner where the ReLU passed it.
    dpre2 = tl.where(a2 > 0, tl.load(s + DH + c16[:, None] * 16 + q16[None, :]), 0.0)
    tl.store(s + C2B + c16, tl.sum(dpre2, axis=1))
    for ci in tl.static_range(6):
        dw2 = tl.zeros((16, 32), tl.float32)
        for c in tl.static_range(4):
            patch_t = tl.load(s + A1 + ci * 256 + (2 * qi[:, None] + c // 2 + ky[None, :]) * 12
                              + (2 * qj[:, None] + c % 2 + kx[None, :]), mask=kok[None, :], other=0.0)
            dw2 += tl.dot(tl.where(win2 == c, dpre2, 0.0), patch_t, input_precision="ieee")
        tl.store(s + C2W + c16[:, None] * 150 + ci * 25 + k32[None, :], dw2, mask=kok[None, :])

    # conv2's input gradient. Only the winning corner of each pooling window has an output gradient, so each pooled
    # position (qi, qj) reaches the 6x6 input window at (2qi, 2qj) alone, through conv2.weight shifted by its corner:
    # t[q, ci, u, v] = sum over c, co of [win2[co, q] == c] * dpre2[co, q] * conv2.weight[co, ci, u - c//2, v - c%2].
    # Stored, then summed into each input pixel over the (up to 3x3) windows that hold it. n = ci * 36 + u * 6 + v.
    nci = p256 // 36
    nu = p256 % 36 // 6
    nv = p256 % 6
    nok = p256 < 216
    t = tl.zeros((256, 16), tl.float32)
    for c in tl.static_range(4):
        wy = nu - c // 2
        wx = nv - c % 2
        wok = nok & (wy >= 0) & (wy < 5) & (wx >= 0) & (wx < 5)
        w6 = tl.load(w2 + c16[None, :] * 150 + (nci * 25 + wy * 5 + wx)[:, None], mask=wok[:, None], other=0.0)
        t += tl.dot(w6, tl.where(win2 == c, dpre2, 0.0), input_precision="ieee")
    tl.store(s + T6 + q16[None, :] * 216 + p256[:, None], t, mask=nok[:, None])
    tl.debug_barrier()
    da1 = tl.zeros((16, 256), tl.float32)
    for di in tl.static_range(3):
        for dj in tl.static_range(3):
            wi = pi // 2 - di
            wj = pj // 2 - dj
            held = pok & (wi >= 0) & (wi < 4) & (wj >= 0) & (wj < 4)
            da1 += tl.load(s + T6 + (wi * 4 + wj)[None, :] * 216 + c16[:, None] * 36
                           + ((pi % 2 + 2 * di) * 6 + pj % 2 + 2 * dj)[None, :],
                           mask=(c16[:, None] < 6) & held[None, :], other=0.0)

    # conv1's backward: weight and bias gradients (the image needs no gradient).
    a1 = tl.load(s + A1 + c16[:, None] * 256 + p256[None, :], mask=ok1, other=0.0)
    win1 = tl.load(si + c16[:, None] * 256 + p256[None, :], mask=ok1, other=0)
    dpre1 = tl.where(a1 > 0, da1, 0.0)
    tl.store(s + C1B + c16, tl.sum(dpre1, axis=1), mask=c16 < 6)
    dw1 = tl.zeros((16, 32), tl.float32)
    for c in tl.static_range(4):
        patch_t = tl.load(x + (2 * pi[:, None] + c // 2 + ky[None, :]) * 28 + (2 * pj[:, None] + c % 2 + kx[None, :]),
                          mask=pok[:, None] & kok[None, :], other=0.0)
        dw1 += tl.dot(tl.where(win1 == c, dpre1, 0.0), patch_t, input_precision="ieee")
    tl.store(s + C1W + c16[:, None] * 25 + k32[None, :], dw1, mask=(c16[:, None] < 6) & kok[None, :])


@triton.jit
def update_kernel(s_ptr, u_ptr, v_ptr, p_ptr, buf_ptr, lr_ptr, loss_ptr, g_ptr, n_samples, n_params, momentum,
                  STORE_GRAD: tl.constexpr):
    pid = tl.program_id(0)
    j = pid * 128 + tl.arange(0, 128)
    jok = j < n_params
    u = tl.load(u_ptr + j, mask=jok, other=0)
    v = tl.load(v_ptr + j, mask=jok, other=0)
    g = tl.zeros((128,), tl.float32)
    for start in range(0, n_samples, 16):  # each thread sums its parameter's rows in order, 16 loads at a time
        for r in tl.static_range(16):
            m = jok & (start + r < n_samples)
            base = s_ptr + (start + r) * ROW
            g += tl.load(base + u, mask=m, other=0.0) * tl.load(base + v, mask=m, other=0.0)
    buf = tl.load(buf_ptr + j, mask=jok, other=0.0) * momentum + g
    tl.store(buf_ptr + j, buf, mask=jok)
    tl.store(p_ptr + j, tl.load(p_ptr + j, mask=jok, other=0.0) - tl.load(lr_ptr) * buf, mask=jok)
    if STORE_GRAD:
        tl.store(g_ptr + j, g, mask=jok)
    if pid == 0:
        rows = tl.arange(0, 64)
        losses = tl.zeros((64,), tl.float32)
        for start in range(0, n_samples, 64):
            r = start + rows
            losses += tl.load(s_ptr + r * ROW + LOSS, mask=r < n_samples, other=0.0)
        tl.store(loss_ptr, tl.sum(losses, axis=0))
