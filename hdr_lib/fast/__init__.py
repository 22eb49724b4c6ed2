"""The fast paths: other ways to run the same training step, faster (a reader of the replication need not open this
package). `choose` picks the way for a run, and says why; the record names it by a short key (`CPU_STEPS`,
`CUDA_KERNELS`), whose description lives here, not in the record."""

from __future__ import annotations

# What the fast path runs for a step on the CPU, by the key its records give it (`execution.cpu_step`).
CPU_STEPS = {
    "native": "hdr_lib.fast.native: the loss and gradients in one C++ operator compiled for this CPU (each convolution "
              "with its ReLU and pooling as one hand-vectorised loop; the fully connected layers through ATen), "
              "no autograd graph",
    "explicit": "hdr_lib.fast.torch_cpu.train_step: conv1 computed per pooling corner, pooling as elementwise maxima, "
                "gradients written out layer by layer (no autograd graph)",
    "compiled": "the module compiled by torch.compile (Inductor) with autograd",
    "forward": "hdr_lib.fast.torch_cpu.forward with autograd: conv1 computed per pooling corner, pooling as elementwise "
               "maxima",
    "module": "the module's forward with autograd",
}

# Which kernels the CUDA fast path's step runs, by the key its records give it (`execution.cuda_kernels`).
CUDA_KERNELS = {
    "triton": "hdr_lib.fast.triton_step: two Triton kernels per step (one program per image for the forward and "
              "backward pass, then the batch's gradient sums with SGD and momentum), gradients checked against "
              "autograd's before the run",
    "aten": "PyTorch's own CUDA kernels (cuDNN convolutions, cuBLAS matrix products, elementwise kernels, fused "
            "SGD)",
}


def choose(config, model, optimizer, x_all, y_all, *, batch_size: int, total_steps: int, dist_ctx=None):
    """The fast step for this run, and why that one, in a sentence: (`hdr_lib.steps.Step`, reason).

    On the CPU: `native` where its operator builds and this CPU runs it fastest (`hdr_lib.fast.native.use`), else
    `explicit`; with mixed precision, compilation or data parallelism, autograd over torch_cpu's rearranged
    `forward` (or the `compiled` module); for networks torch_cpu does not arrange, the `module`. On CUDA: the
    `triton` kernels where they apply and pass their check, else PyTorch's (`aten`), with the full epochs
    replayed as CUDA graphs (`cuda_graphs.Graphed`) unless switched off, under float16's gradient scaler (which
    decides on the host) or data parallelism (a collective each step). One-time costs go to `setup_seconds`."""
    import torch

    from hdr_lib.fast import cuda_graphs, native, steps, torch_cpu
    from hdr_lib.measure.timing import Stopwatch
    from hdr_lib.steps import grad_scaler

    device = x_all.device
    on_cuda = device.type == "cuda"
    args = (model, optimizer, x_all, y_all, batch_size)
    kwargs = {"global_batch": config.batch_size}
    rearranged = torch_cpu.applies(model, x_all[:1])  # on the CPU only
    options = [name for name, on in (("amp", config.amp != "off"), ("compile", config.compile)) if on]
    plain = rearranged and not options
    setup = {"native_cpu_step": 0.0, "triton_step": 0.0, "compile": 0.0, "cuda_graph_capture": 0.0}
    with Stopwatch() as sw:  # the first call in a process loads the library, or builds it once
        use_native = plain and native.applies(model, x_all[:1]) and native.use()
    native_unavailable = native.reason() if plain and not use_native else None
    kernels, triton_unavailable = None, None
    if on_cuda and config.triton:
        with Stopwatch(device) as sw_triton:  # Triton compiles the kernels at their first launch
            kernels, triton_unavailable = try_triton(model, optimizer, x_all, y_all, batch_size, options)
        setup["triton_step"] = sw_triton.seconds if kernels is not None else 0.0
    if use_native:
        setup["native_cpu_step"] = sw.seconds
        step, key, reason = steps.NativeStep(*args, dist_ctx=dist_ctx, **kwargs), "native", (
            f"the paper's LeNet-5 in float32 on a CPU with {native.loaded_isa()}, where hdr_lib.fast.native "
            "builds")
    elif plain and dist_ctx is None:
        step, key, reason = steps.ExplicitStep(*args, **kwargs), "explicit", f"the native step is not used: " \
            f"{native_unavailable}"
    elif kernels is not None:
        step, key, reason = steps.TritonStep(*args, kernels=kernels, **kwargs), None, (
            "the paper's LeNet-5 in float32, and the Triton kernels' first gradient matches autograd's")
    else:
        forward = (torch.compile(model, dynamic=False) if config.compile
                   else (lambda x: torch_cpu.forward(model, x)) if rearranged else model)
        key = "compiled" if config.compile else "forward" if rearranged else "module"
        step = steps.AutogradStep(*args, forward=forward, config=config, scaler=grad_scaler(config, device),
                                  dist_ctx=dist_ctx, **kwargs)
        reason = (f"autograd, since {' and '.join(options)} {'is' if len(options) == 1 else 'are'} on" if options
                  else "autograd, since the native and explicit steps do not all-reduce" if rearranged and dist_ctx
                  else "autograd over the module: the rearranged steps fit the paper's 28x28 LeNet-5 on a CPU only")
        if on_cuda:
            reason = f"PyTorch's kernels with {reason}" + (f" ({triton_unavailable})" if triton_unavailable else "")
        if config.compile:
            with Stopwatch(device) as sw_compile:
                step.warm()
            setup["compile"] = sw_compile.seconds
    step.how = {"cpu_step": None if on_cuda else key, "native_unavailable": native_unavailable,
                "cuda_kernels": ("triton" if kernels is not None else "aten") if on_cuda else None,
                "triton_unavailable": triton_unavailable if on_cuda else None, "cuda_graph": False,
                "isa": native.loaded_isa() if use_native else None, **step.thread_record()}
    if on_cuda:
        use_graph = config.cuda_graph and config.amp != "fp16" and dist_ctx is None
        steps_per_epoch = step.steps_per_epoch
        with Stopwatch(device) as sw_capture:
            step = cuda_graphs.Graphed(step, capture=use_graph, full_epochs=total_steps >= steps_per_epoch,
                                       partial_epochs=total_steps % steps_per_epoch != 0)
        setup["cuda_graph_capture"] = sw_capture.seconds if use_graph else 0.0
        step.how["cuda_graph"] = use_graph
        reason += "; full epochs replayed as CUDA graphs" if use_graph else "; no CUDA graph"
    step.setup_seconds = setup
    return step, f"{step.how['cpu_step'] or step.how['cuda_kernels']}: {reason}"


def try_triton(model, optimizer, x_all, y_all, batch_size: int, options=()) -> tuple:
    """(`triton_step.TrainStep`, None) where it applies (no `options` that change the arithmetic) and its first
    gradient matches autograd's; else (None, why not)."""
    import torch

    from hdr_lib.fast import cuda_graphs, triton_step

    if options:
        return None, "the Triton step computes in IEEE float32, without the amp and compile options"
    why = triton_step.reason_not_applicable(model, optimizer, x_all)
    if why is not None:
        return None, why
    try:
        kernels = triton_step.TrainStep(model, optimizer, batch_size)
        why = kernels.check(x_all, y_all, torch.arange(batch_size, device=x_all.device))
    except Exception as exc:  # noqa: BLE001 (a kernel Triton cannot compile here: say why, use ATen's)
        why = cuda_graphs.brief(exc)
    return (kernels, None) if why is None else (None, why)
