"""The experiment in the paper's own framework: the §3.3 network in Keras 3 on TensorFlow, JAX or PyTorch, started
from the seed's PyTorch weights, timed as hdr_lib.train times its paths, written as the same hdr-run/1 record.

Keras is imported here and only when a Keras run is asked for: without it everything else still runs, and a
Keras run is one clear error. Keras reads its backend (KERAS_BACKEND) once, at import: one backend per process.

Two ways to train (`execution.keras_way`):
- "fit": the idiomatic `model.fit` on arrays, with its own shuffling (seeded by the run's seed), `verbose=0`; the
  train function is traced at its first step, so the first epoch's time includes that tracing (the record says so).
- "loop": a train step of the backend's own kind (a `tf.function`, a `jax.jit` of Keras' stateless calls, an eager
  PyTorch step) over hdr_lib.train.batch_order, the PyTorch runs' batches; traced before the first epoch, timed
  apart in `setup_seconds.trace`. Its losses can be compared with the PyTorch reference path's step by step.

One deviation of the framework, not of our settings: Keras' SGD keeps the learning rate inside its velocity
(v = 0.9 v - lr g; w += v) where PyTorch keeps it outside (b = 0.9 b + g; w -= lr b). The two are the same step
while the rate is constant; at the step decay (epoch 11) Keras' velocity still carries steps made at the old rate,
which fade as 0.9^k.
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
import torch

from hdr_lib import data as mnist
from hdr_lib.config import TrainConfig
from hdr_lib.validation import ConfigError
from hdr_lib.measure.machine import CpuMeter, environment, peak_rss_bytes
from hdr_lib.measure.records import write_json_atomic

FRAMEWORKS = ("torch", "keras-tensorflow", "keras-jax", "keras-torch")
KERAS_WAYS = ("fit", "loop")
BACKENDS = {"keras-tensorflow": "tensorflow", "keras-jax": "jax", "keras-torch": "torch"}
_BACKEND_PACKAGES = {"tensorflow": "tensorflow-cpu", "jax": "jax and jaxlib", "torch": "torch"}

OPTIMIZER_NOTE = ("Keras SGD: v = momentum * v - lr * g, w += v (lr inside the velocity); PyTorch: b = momentum * b + g, "
                  "w -= lr * b. The same step while lr is constant; after a decay Keras' velocity still carries steps "
                  "at the old lr, fading as momentum^k.")


def check_choice(framework: str, keras_way: str = "fit") -> None:
    if framework not in FRAMEWORKS:
        raise ConfigError(f"framework must be one of {', '.join(FRAMEWORKS)}; got {framework!r}")
    if keras_way not in KERAS_WAYS:
        raise ConfigError(f"keras way must be one of {', '.join(KERAS_WAYS)}; got {keras_way!r}")


def check_config(config: TrainConfig, framework: str, keras_way: str = "fit") -> None:
    """Refuse, before any work, what the Keras runs do not implement: the PyTorch-only options and the GPU."""
    check_choice(framework, keras_way)
    if framework == "torch":
        return
    config.validate()
    torch_only = [name for on, name in ((config.amp != "off", f"--amp {config.amp}"),
                                        (config.model != "lenet5", f"--model {config.model}"),
                                        (config.compile, "--compile"),
                                        (config.deterministic, "--deterministic"),
                                        (config.path != "fast", f"--path {config.path}")) if on]
    if torch_only:
        raise ConfigError(f"{', '.join(torch_only)} applies to the PyTorch runs only; drop it with --framework "
                          f"{framework}")
    if config.device == "cuda":
        raise ConfigError(f"--framework {framework} runs on the CPU here (tensorflow-cpu, jax for CPU); use --device "
                          f"cpu, or --framework torch for the GPU")


def import_keras(framework: str):
    """Keras on the framework's backend; ConfigError (one line, what to install) where it is missing, or where this
    process already imported Keras on another backend."""
    check_choice(framework)
    backend = BACKENDS[framework]
    loaded = sys.modules.get("keras")
    if loaded is not None and loaded.backend.backend() != backend:
        raise ConfigError(f"Keras is already loaded on the {loaded.backend.backend()} backend in this process; "
                          f"Keras reads its backend once, so run --framework {framework} in a new process")
    os.environ["KERAS_BACKEND"] = backend
    _load_triton_first()
    try:
        import keras

        __import__(backend)
    except ImportError as exc:
        raise ConfigError(f"--framework {framework} needs keras and {_BACKEND_PACKAGES[backend]}, which cannot be "
                          f"imported here ({type(exc).__name__}: {exc}); pip install -r requirements.txt, or use "
                          f"--framework torch") from exc
    if keras.backend.backend() != backend:
        raise ConfigError(f"Keras came up on the {keras.backend.backend()} backend, not {backend} (a keras.json "
                          f"or KERAS_BACKEND set elsewhere?); run --framework {framework} in a new process")
    return keras


def _load_triton_first() -> None:
    """Triton's LLVM library crashes the process (segmentation fault) when it is loaded after TensorFlow's, and
    torchvision loads it through torch._dynamo: so both come first, where installed."""
    for name in ("triton", "torchvision"):
        try:
            __import__(name)
        except ImportError:
            pass


def backend_versions(keras) -> dict:
    """What a record's `environment` adds for a Keras run."""
    backend = keras.backend.backend()
    module = sys.modules[backend]
    info = {"framework": f"keras-{backend}", "keras": keras.__version__, "keras_backend": backend,
            "backend_version": module.__version__, "keras_floatx": keras.config.floatx()}
    if backend == "tensorflow":
        info["tensorflow_threads"] = {"intra_op": module.config.threading.get_intra_op_parallelism_threads(),
                                      "inter_op": module.config.threading.get_inter_op_parallelism_threads(),
                                      "note": "0: TensorFlow picks (one per core)"}
    if backend == "jax":
        info["jaxlib"] = sys.modules["jaxlib"].__version__ if "jaxlib" in sys.modules else None
    return info


def build_model(keras, variant: str = "paper"):
    """§3.3 in Keras layers (channels last), logits out: the softmax lives in the loss, as in hdr_lib.model."""
    layers = keras.layers
    stack = [keras.Input((28, 28, 1))]
    if variant == "lenet1998":
        stack.append(layers.ZeroPadding2D(2))
    stack += [layers.Conv2D(6, 5, activation="relu", name="conv1"), layers.MaxPooling2D(2),
              layers.Conv2D(16, 5, activation="relu", name="conv2"), layers.MaxPooling2D(2),
              layers.Flatten(), layers.Dense(120, activation="relu", name="fc1"),
              layers.Dense(84, activation="relu", name="fc2"), layers.Dense(10, name="fc3")]
    return keras.Sequential(stack, name=f"lenet5_{variant}")


def torch_weights_to_keras(torch_model: torch.nn.Module) -> dict[str, list[np.ndarray]]:
    """The PyTorch LeNet5's weights in Keras' layouts, by layer name.

    Convolutions: OIHW -> HWIO. Dense: (out, in) -> (in, out). fc1 also has its inputs reordered: PyTorch flattens
    the [C, H, W] feature map as c*H*W + h*W + w, Keras' channels-last Flatten as h*W*C + w*C + c."""
    out = {}
    with torch.no_grad():
        for name in ("conv1", "conv2"):
            layer = getattr(torch_model, name)
            out[name] = [layer.weight.permute(2, 3, 1, 0).numpy().copy(), layer.bias.numpy().copy()]
        channels = torch_model.conv2.out_channels
        side = math.isqrt(torch_model.fc1.in_features // channels)
        w = torch_model.fc1.weight.reshape(-1, channels, side, side).permute(0, 2, 3, 1).reshape(
            torch_model.fc1.out_features, -1)
        out["fc1"] = [w.T.numpy().copy(), torch_model.fc1.bias.numpy().copy()]
        for name in ("fc2", "fc3"):
            layer = getattr(torch_model, name)
            out[name] = [layer.weight.T.numpy().copy(), layer.bias.numpy().copy()]
    return out


def keras_model_from_seed(keras, config: TrainConfig):
    """The Keras network with the seed's PyTorch initial weights (hdr_lib.train.init_model), and that PyTorch model."""
    from hdr_lib.train import init_model

    torch_model = init_model(config, torch.device("cpu"))
    model = build_model(keras, config.variant)
    for name, weights in torch_weights_to_keras(torch_model).items():
        model.get_layer(name).set_weights(weights)
    return model, torch_model


def nhwc(images: torch.Tensor) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 28, 28, 1] on [0, 1]: hdr_lib.data.to_float's values, channels last."""
    return mnist.to_float(images).permute(0, 2, 3, 1).contiguous().numpy()


def count_parameters(model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def accuracy(model, x: np.ndarray, y: np.ndarray, batch: int = 2000) -> float:
    """Test accuracy in percent (Keras' compiled predict, batches of 2000 as hdr_lib.train.evaluate)."""
    logits = np.asarray(model.predict(x, batch_size=batch, verbose=0))
    return 100.0 * float((logits.argmax(1) == y).sum()) / len(y)


# ------------------------------------------------------------------------------------------- the custom loops

class _Loop:
    """One training step of the backend's own kind over given batch indices; `run_epoch` returns the step losses."""

    def __init__(self, keras, model, optimizer, loss_fn, x_all, y_all):
        self.keras, self.model, self.optimizer, self.loss_fn = keras, model, optimizer, loss_fn
        self.backend = keras.backend.backend()
        self.x_np, self.y_np = x_all, y_all
        optimizer.build(model.trainable_variables)  # its momentum variables exist before any tracing
        getattr(self, f"_setup_{self.backend}")()

    # TensorFlow: a tf.function, gathering its batch from the whole set inside the graph.
    def _setup_tensorflow(self):
        import tensorflow as tf

        self.x, self.y = tf.constant(self.x_np), tf.constant(self.y_np)
        model, optimizer, loss_fn = self.model, self.optimizer, self.loss_fn

        @tf.function(jit_compile=False)  # Keras' own fit does not use XLA on a CPU-only machine either
        def step(x_all, y_all, idx):
            x, y = tf.gather(x_all, idx), tf.gather(y_all, idx)
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            return loss

        self.tf_step = step

    def _trace_tensorflow(self, sizes):
        import tensorflow as tf

        for size in sizes:
            self.tf_step.get_concrete_function(self.x, self.y, tf.TensorSpec([size], tf.int64))

    def _epoch_tensorflow(self, batches):
        import tensorflow as tf

        losses = [self.tf_step(self.x, self.y, tf.constant(idx)) for idx in batches]
        return np.array([float(v) for v in losses], dtype=np.float32)

    # JAX: Keras' stateless calls under one jax.jit; the state goes in and out of each step.
    def _setup_jax(self):
        import jax
        import jax.numpy as jnp

        self.x, self.y = jnp.asarray(self.x_np), jnp.asarray(self.y_np)
        model, optimizer, loss_fn = self.model, self.optimizer, self.loss_fn

        def loss_of(trainable, non_trainable, x, y):
            logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
            return loss_fn(y, logits), non_trainable

        grad_fn = jax.value_and_grad(loss_of, has_aux=True)

        @jax.jit
        def step(state, x_all, y_all, idx):
            trainable, non_trainable, opt_vars = state
            (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x_all[idx], y_all[idx])
            trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
            return loss, (trainable, non_trainable, opt_vars)

        self.jax_step = step

    def _state(self):
        return ([v.value for v in self.model.trainable_variables],
                [v.value for v in self.model.non_trainable_variables],
                [v.value for v in self.optimizer.variables])

    def _trace_jax(self, sizes):
        import jax

        state = self._state()
        for size in sizes:  # a step on a state that is then thrown away: compiled, nothing changed
            jax.block_until_ready(self.jax_step(state, self.x, self.y, np.arange(size))[0])

    def _epoch_jax(self, batches):
        import jax

        state = self._state()
        losses = []
        for idx in batches:
            loss, state = self.jax_step(state, self.x, self.y, idx)
            losses.append(loss)
        jax.block_until_ready(state)
        for variables, values in zip((self.model.trainable_variables, self.model.non_trainable_variables,
                                      self.optimizer.variables), state):
            for variable, value in zip(variables, values):
                variable.assign(value)
        return np.array([float(v) for v in losses], dtype=np.float32)

    # PyTorch under Keras: eager, autograd through Keras' layers, Keras' optimiser.
    def _setup_torch(self):
        device = self.model.trainable_variables[0].value.device
        self.x, self.y = torch.from_numpy(self.x_np).to(device), torch.from_numpy(self.y_np).to(device)

    def _trace_torch(self, sizes):
        pass  # eager: nothing to compile

    def _epoch_torch(self, batches):
        variables = self.model.trainable_variables
        losses = []
        for idx in batches:
            idx = torch.from_numpy(idx).to(self.x.device)
            loss = self.loss_fn(self.y[idx], self.model(self.x[idx], training=True))
            self.model.zero_grad()
            loss.backward()
            with torch.no_grad():
                self.optimizer.apply([v.value.grad for v in variables], variables)
            losses.append(loss.detach())
        return torch.stack(losses).float().cpu().numpy()

    def trace(self, sizes):
        getattr(self, f"_trace_{self.backend}")(sizes)

    def run_epoch(self, batches):
        return getattr(self, f"_epoch_{self.backend}")(batches)


# ------------------------------------------------------------------------------------------- the run

def _planned(steps_per_epoch: int, epochs: int, max_steps: int | None) -> list[int]:
    """The steps each epoch runs; `max_steps` caps them all together (as hdr_lib.train does)."""
    planned, done = [], 0
    for _ in range(epochs):
        limit = steps_per_epoch if max_steps is None else min(steps_per_epoch, max_steps - done)
        if limit <= 0:
            break
        planned.append(limit)
        done += limit
    return planned


def train(config: TrainConfig, framework: str, keras_way: str = "fit", *, data: mnist.MNISTTensors | None = None,
          data_root=None, out=None, progress: bool | None = None, on_epoch=None, max_steps: int | None = None,
          keep_step_losses: bool = False) -> dict:
    """Train the paper's CNN with Keras on `framework`'s backend and return its hdr-run/1 record. Same settings,
    record and bad-input rules as hdr_lib.train.train."""
    from hdr_lib import paths
    from hdr_lib.measure.run_record import Run
    from hdr_lib.train import lr_at

    check_config(config, framework, keras_way)
    if framework == "torch":
        raise ConfigError("hdr_lib.keras_lenet.train runs the Keras frameworks; use hdr_lib.train.train for torch")
    out = paths.output_file(out, "out") if out is not None else None
    with _Timer() as t_import:
        keras = import_keras(framework)
    with _Timer() as t_load:
        data = mnist.load_mnist(data_root) if data is None else data
        x_train, y_train = nhwc(data.train_images), data.train_labels.numpy().astype(np.int64)
        x_test, y_test = nhwc(data.test_images), data.test_labels.numpy().astype(np.int64)
    n = len(x_train)
    steps_per_epoch = math.ceil(n / config.batch_size)
    planned = _planned(steps_per_epoch, config.epochs, max_steps)
    if keras_way == "fit" and max_steps is not None and max_steps > steps_per_epoch:
        raise ConfigError(f"with --keras-way fit, --max-steps can cut the first epoch only (at most "
                          f"{steps_per_epoch} steps); got {max_steps}")

    env = environment(torch.device("cpu"))
    env.update(backend_versions(keras))
    run = Run(config=config, device=torch.device("cpu"), env=env)
    run.setup_seconds.update(keras_import=t_import.seconds, data_load=t_load.seconds)
    keras.utils.set_random_seed(config.seed)  # fit's shuffling
    with _Timer() as t_build:
        model, _ = keras_model_from_seed(keras, config)
        optimizer = keras.optimizers.SGD(learning_rate=lr_at(config, 1), momentum=config.momentum)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer=optimizer, loss=loss_fn)
    run.setup_seconds["model_build"] = t_build.seconds
    run.extra["execution"] = _execution(keras, model, framework, keras_way, steps_per_epoch)
    run.extra["keras"] = {"framework": framework, "keras_way": keras_way}  # for KerasRun.record
    record_of = lambda: _keras_record(run)  # noqa: E731
    cpu_meter = CpuMeter()
    step_losses: list[np.ndarray] = []
    if out is not None:
        write_json_atomic(out, record_of())

    def finish_epoch(epoch: int, seconds: float, loss: float, steps: int):
        with _Timer() as t_eval:
            acc = accuracy(model, x_test, y_test)
        entry = {"epoch": epoch, "train_loss": loss, "train_seconds": seconds, "test_accuracy": acc,
                 "eval_seconds": t_eval.seconds, "lr": lr_at(config, epoch), "steps": steps}
        run.epochs.append(entry)
        if out is not None:
            write_json_atomic(out, record_of())
        if on_epoch is not None:
            on_epoch(entry, record_of())
        if _show(progress):
            print(f"epoch {epoch}: loss {loss:.4f}, test accuracy {acc:.2f} %, {seconds:.2f} s", file=sys.stderr,
                  flush=True)
        return math.isfinite(loss)

    try:
        if keras_way == "fit":
            _fit(keras, model, config, x_train, y_train, planned, finish_epoch, lr_at)
        else:
            loop = _Loop(keras, model, optimizer, loss_fn, x_train, y_train)
            _run_loop(loop, optimizer, config, planned, run.setup_seconds, finish_epoch, step_losses)
        finite = all(math.isfinite(e["train_loss"]) for e in run.epochs)
        if not finite:
            run.extra["diverged"] = "train loss became non-finite; lr too high?"
        run.status = "complete" if len(run.epochs) == config.epochs and finite else "incomplete"
    finally:
        _meters_into(run, cpu_meter, max_steps)
        if out is not None:
            write_json_atomic(out, record_of())
    record = record_of()
    if keep_step_losses:
        record["step_losses"] = np.concatenate(step_losses).tolist() if step_losses else []
    return record


def _execution(keras, model, framework: str, keras_way: str, steps_per_epoch: int) -> dict:
    """How a Keras run ran, for its record's `execution`."""
    return {
        "framework": framework, "keras_way": keras_way, "steps_per_epoch": steps_per_epoch,
        "parameters": count_parameters(model),
        "jit_compile": bool(getattr(model, "jit_compile", False)) if keras_way == "fit"
        else {"tensorflow": "tf.function, no XLA", "jax": "jax.jit (XLA)", "torch": "eager"}[keras.backend.backend()],
        "batches": "model.fit's own shuffling (keras.utils.set_random_seed(seed))" if keras_way == "fit"
        else "hdr_lib.train.batch_order(seed, epoch), as the PyTorch runs",
        "first_epoch_includes_tracing": keras_way == "fit" and keras.backend.backend() != "torch",
        "optimizer_note": OPTIMIZER_NOTE,
        "initial_weights": "hdr_lib.train.init_model(seed), converted to Keras layouts",
        "cuda_graph": False, "fused_sgd": False, "compiled": False, "cpu_step": None,
        "amp_bfloat16": False, "channels_last": True,
    }


def _run_loop(loop: "_Loop", optimizer, config: TrainConfig, planned: list[int], setup_seconds: dict, finish_epoch,
              step_losses: list) -> None:
    """The custom loop's epochs: each over hdr_lib.train.batch_order(seed, epoch), timed, with its lr; the step is
    traced first for both batch sizes, timed apart (`setup_seconds["trace"]`)."""
    from hdr_lib.train import batch_order, lr_at

    n, size = len(loop.x_np), config.batch_size
    with _Timer() as t_trace:
        loop.trace(sorted({min(size, n), n - (math.ceil(n / size) - 1) * size}, reverse=True))
    setup_seconds["trace"] = t_trace.seconds
    for epoch, limit in zip(range(1, config.epochs + 1), planned):
        order = batch_order(config.seed, epoch, n).numpy()
        batches = [order[i * size:(i + 1) * size] for i in range(limit)]
        optimizer.learning_rate = lr_at(config, epoch)
        start = time.perf_counter()
        losses = loop.run_epoch(batches)  # returns host values: the epoch's work is done
        seconds = time.perf_counter() - start
        step_losses.append(losses)
        weights = np.array([len(b) for b in batches], dtype=np.float64)
        if not finish_epoch(epoch, seconds, float((losses * weights).sum() / weights.sum()), limit):
            break


def _meters_into(run, cpu_meter, max_steps: int | None) -> None:
    """What a Keras run measured besides time (memory, CPU use, the load at its end), and a cap on its steps."""
    run.extra["memory"] = {"peak_rss_bytes": peak_rss_bytes(), "cuda_peak_allocated_bytes": None,
                           "cuda_peak_reserved_bytes": None, "cuda_reason": "CPU run: no CUDA allocator"}
    run.extra["utilisation"] = {"cpu": cpu_meter.read(),
                                "gpu": {"utilisation_mean_percent": None, "reason": "CPU run: no GPU"}}
    if max_steps is not None:
        run.extra["max_steps"] = max_steps
        run.status = "incomplete"
    run.extra["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _fit(keras, model, config, x_train, y_train, planned, finish_epoch, lr_at):
    """One model.fit call for all epochs; a callback times each epoch (begin to end: its steps, no evaluation) and
    then evaluates, outside the timed span. Cut short by max_steps: fit on the first max_steps batches' images."""
    images = min(len(x_train), planned[0] * config.batch_size) if planned else 0

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.start
            if not finish_epoch(epoch + 1, seconds, float(logs["loss"]), planned[epoch]):
                self.model.stop_training = True

    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr_at(config, epoch + 1))
    model.fit(x_train[:images], y_train[:images], batch_size=config.batch_size, epochs=len(planned), shuffle=True,
              verbose=0, callbacks=[schedule, EpochTimer()])


def _keras_record(run) -> dict:
    record = run.record()
    keras_info = record.pop("keras")
    framework, way = keras_info["framework"], keras_info["keras_way"]
    config = record["config"]
    config["path"] = f"{framework}-{way}"  # never pooled with the PyTorch paths ("fast", "reference")
    config["framework"], config["keras_way"] = framework, way
    record["numerics"] = {"keras_floatx": run.env.get("keras_floatx"), "deterministic_algorithms": None}
    return record


def _show(progress: bool | None) -> bool:
    from hdr_lib.measure.run_record import progress_enabled

    return progress_enabled(progress)


class _Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


# ------------------------------------------------------------------------------------------- checks

def first_steps(framework: str, *, steps: int = 100, seed: int = 0, data_root=None) -> dict:
    """The Keras model on this backend against the seed's PyTorch model: the largest difference of their first
    forward pass on 256 test images (the weight conversion), and the loop way's first `steps` losses, to set beside
    hdr_lib.train's reference path on the same weights and batches (`equivalence`)."""
    keras = import_keras(framework)
    config = _check_config_for(seed)
    data = mnist.load_mnist(data_root)
    model, torch_model = keras_model_from_seed(keras, config)
    images = data.test_images[:256]
    with torch.no_grad():
        expected = torch_model(mnist.to_float(images)).numpy()
    got = np.asarray(keras.ops.convert_to_numpy(model(nhwc(images), training=False)))
    ours = train(config, framework, "loop", data=data, max_steps=steps, keep_step_losses=True, progress=False)
    return {"framework": framework, "parameters": count_parameters(model),
            "forward_max_abs_diff": float(np.abs(got - expected).max()),
            "forward_logit_scale": float(np.abs(expected).max()), "step_losses": ours["step_losses"]}


def reference_losses(*, steps: int = 100, seed: int = 0, data_root=None) -> list[float]:
    """The first `steps` losses of hdr_lib.train's reference path (plain PyTorch) from the same seed."""
    from hdr_lib.train import train as torch_train

    config = _check_config_for(seed).replace(path="reference")
    return torch_train(config, data_root=data_root, max_steps=steps, keep_step_losses=True,
                       progress=False)["step_losses"]


def equivalence(framework: str, *, steps: int = 100, seed: int = 0, data_root=None) -> dict:
    """`first_steps` with the reference path's losses beside it and their largest absolute difference."""
    out = first_steps(framework, steps=steps, seed=seed, data_root=data_root)
    ours, reference = np.array(out["step_losses"]), np.array(reference_losses(steps=steps, seed=seed,
                                                                             data_root=data_root))
    out["loss_max_abs_diff"] = float(np.abs(ours - reference).max()) if len(ours) == len(reference) else None
    return out


def _check_config_for(seed: int) -> TrainConfig:
    from hdr_lib.config import PAPER

    return PAPER.replace(device="cpu", seed=seed, epochs=1)


def equivalence_record(out, *, steps: int = 100, seed: int = 0, data_root=None) -> dict:
    """The check of `equivalence` for every Keras backend, each in its own process (Keras takes one backend per
    process), against one run of the reference path, written as a record (kind "keras-equivalence") so that the
    book can state the differences it measured. A backend that cannot run says why."""
    import json
    import subprocess

    from hdr_lib.measure.records import SCHEMA

    reference = np.array(reference_losses(steps=steps, seed=seed, data_root=data_root))
    backends = {}
    for framework in BACKENDS:
        proc = subprocess.run([sys.executable, "-m", "hdr_lib.keras_lenet", framework, str(steps)],
                              capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if proc.returncode != 0:
            backends[framework] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        losses = np.array(result.pop("step_losses"))
        diff = np.abs(losses - reference)
        first_apart = np.nonzero(diff > 1e-6)[0]
        backends[framework] = {**result, "loss_max_abs_diff": float(diff.max()),
                               "loss_diff_at": {str(k): float(diff[k - 1]) for k in (1, 10, 50, steps)},
                               "first_step_differing_by_more_than_1e-6": int(first_apart[0]) + 1
                               if len(first_apart) else None}
    env = environment(torch.device("cpu"))
    record = {"schema": SCHEMA, "kind": "keras-equivalence", "status": "complete",
              "config": {**_check_config_for(seed).as_dict(), "steps": steps, "forward_images": 256},
              "environment": env, "epochs": [], "reference_path_losses": reference.tolist(), "backends": backends}
    write_json_atomic(out, record)
    return record


if __name__ == "__main__":
    # python -m hdr_lib.keras_lenet <framework> [steps]: first_steps as one line of JSON;
    # python -m hdr_lib.keras_lenet --record <file> [steps]: equivalence_record for every backend
    import json

    if sys.argv[1:2] == ["--record"]:
        equivalence_record(sys.argv[2], steps=int(sys.argv[3]) if len(sys.argv) > 3 else 100)
    else:
        print(json.dumps(first_steps(sys.argv[1], steps=int(sys.argv[2]) if len(sys.argv) > 2 else 100)))
