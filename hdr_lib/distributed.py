"""Data-parallel training on torch.distributed, the paper's "distributed GPU training" (§5, future work).

Started by a launcher, `torchrun --standalone --nproc-per-node N -m hdr_lib train ...` (or across machines,
`torchrun --nnodes M --node-rank K --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint host:port -m hdr_lib
train ...`), each process reads the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), and `hdr_lib.train` splits **each global batch** of the paper's 64 images across the ranks: rank r
takes the r-th contiguous shard of the batch's indices in `batch_order`. Each rank's loss is the mean over its
shard, so the mean of the ranks' gradients (one all-reduce a step) is the gradient of the whole batch, up to the
order of float sums, and every rank applies the same SGD step: the arithmetic is the paper's, whatever N is.

The reference path wraps the model in DistributedDataParallel; the fast path all-reduces its gradient buffer (one
flat float32 tensor, with the step's loss in its last element) with `torch.distributed.all_reduce`. Only rank 0
writes records and checkpoints. A batch that does not split evenly, a world size larger than the batch, or a rank
that dies is one clear error on every rank, never a hang: the process group has a timeout.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from hdr_lib import settings
from hdr_lib.validation import ConfigError

DEFAULT_TIMEOUT_S = 300.0  # a rank that waits this long for the others gives up (HDR_DIST_TIMEOUT overrides)
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A collective that failed: a rank died, the network went, or the others did not answer within the timeout."""


@dataclass
class Context:
    """One process of a data-parallel run: who it is, how it talks to the others, and the seconds it spent talking."""

    rank: int
    world_size: int
    local_rank: int
    master: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    backend: str | None = None  # chosen at start(): gloo on the CPU, nccl on CUDA
    device: torch.device | None = None
    comm_seconds: float = 0.0  # in the all-reduces of gradients (and losses), since the last take_epoch_stats()
    comm_calls: int = 0
    epoch_comm: list = field(default_factory=list)

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes records and checkpoints (rank 0 only)."""
        return self.rank == 0

    def check(self, batch_size: int, n_train: int = 60_000) -> None:
        """Refuse, before any work and identically on every rank, a batch that does not split into equal shards."""
        last = n_train - (math.ceil(n_train / batch_size) - 1) * batch_size
        if self.world_size > batch_size:
            raise ConfigError(f"world size {self.world_size} is larger than the batch of {batch_size}: every rank "
                              f"needs at least one image of each batch; use at most {batch_size} processes")
        if batch_size % self.world_size or last % self.world_size:
            raise ConfigError(f"the batch of {batch_size} (and the epoch's last batch of {last}) must split evenly "
                              f"across {self.world_size} processes, so that the mean of their gradients is the "
                              f"batch's gradient; use a world size that divides both")

    def start(self, device: torch.device) -> float:
        """Join the process group: gloo on the CPU, NCCL on CUDA (each rank on GPU LOCAL_RANK), with the timeout;
        returns the seconds that took."""
        started = time.perf_counter()
        self.device = device
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
        if not dist.is_initialized():
            with _collective(self, "joining the process group"):
                dist.init_process_group(self.backend, rank=self.rank, world_size=self.world_size,
                                        timeout=datetime.timedelta(seconds=self.timeout_s))
        return time.perf_counter() - started

    def close(self) -> None:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()

    def shard(self, order: torch.Tensor, batch_size: int, limit: int) -> torch.Tensor:
        """This rank's indices of the epoch's first `limit` batches of `order`, concatenated: the r-th contiguous
        shard (batch / world size images) of each batch, so batches of batch / world size cut from the result in
        turn are this rank's shares of the global batches, the epoch's last (smaller) one included."""
        parts = []
        for i in range(limit):
            batch = order[i * batch_size:(i + 1) * batch_size]
            per = batch.shape[0] // self.world_size
            parts.append(batch[self.rank * per:(self.rank + 1) * per])
        return torch.cat(parts) if parts else order[:0]

    def all_reduce_mean_(self, flat: torch.Tensor) -> torch.Tensor:
        """Replace `flat` (on every rank) by its mean over the ranks, in place; timed into comm_seconds."""
        started = time.perf_counter()
        with _collective(self, "averaging the gradients"):
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            if flat.device.type == "cuda":
                torch.cuda.synchronize(flat.device)
        flat.div_(self.world_size)
        self.comm_seconds += time.perf_counter() - started
        self.comm_calls += 1
        return flat

    def mean_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """The ranks' per-step shard losses of an epoch -> each global batch's loss (their mean)."""
        flat = losses.detach().float().to(self.device).clone()
        return self.all_reduce_mean_(flat)

    def take_epoch_stats(self) -> dict:
        """Seconds and calls spent in communication since the last call: what an epoch's record entry holds."""
        stats = {"communication_seconds": self.comm_seconds, "all_reduce_calls": self.comm_calls}
        self.epoch_comm.append(stats)
        self.comm_seconds, self.comm_calls = 0.0, 0
        return stats

    def record(self, gradient_elements: int, batch_per_rank: int | None = None) -> dict:
        """What a record says about the run's data parallelism."""
        seconds = [e["communication_seconds"] for e in self.epoch_comm]
        return {"world_size": self.world_size, "backend": self.backend, "rank_writing": self.rank,
                "threads_per_rank": torch.get_num_threads(), "master": self.master,
                "timeout_s": self.timeout_s, "batch_per_rank": batch_per_rank,
                "gradient_elements": gradient_elements, "gradient_bytes_per_step": 4 * gradient_elements,
                "communication_seconds": sum(seconds) if seconds else None,
                "local_world_size": _int_env("LOCAL_WORLD_SIZE", None),
                "nodes": _nodes()}


def _int_env(name: str, default):
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} in the environment is not an integer (set by torchrun)") from None


def _nodes():
    local, world = _int_env("LOCAL_WORLD_SIZE", None), _int_env("WORLD_SIZE", None)
    return world // local if local and world else None


def from_environment(environ: dict | None = None) -> Context | None:
    """The Context a launcher (torchrun, or anything setting its variables) describes; None for a plain process."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ and "RANK" not in environ:
        return None
    missing = [name for name in LAUNCHER_VARIABLES if name not in environ and name != "LOCAL_RANK"]
    if missing:
        raise ConfigError(f"a distributed run needs {', '.join(LAUNCHER_VARIABLES)} in the environment; "
                          f"{', '.join(missing)} missing: start it with torchrun")
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        text = environ.get(name, environ["RANK"] if name == "LOCAL_RANK" else None)
        try:
            values[name] = int(text)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={text!r} in the environment is not an integer (set by torchrun)") from None
    if values["WORLD_SIZE"] < 1 or not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise ConfigError(f"RANK {values['RANK']} and WORLD_SIZE {values['WORLD_SIZE']} in the environment do not "
                          "fit (0 <= RANK < WORLD_SIZE)")
    timeout = settings.number("HDR_DIST_TIMEOUT", environ) or DEFAULT_TIMEOUT_S  # checked first by the CLI too
    return Context(rank=values["RANK"], world_size=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"],
                   master=f"{environ['MASTER_ADDR']}:{environ['MASTER_PORT']}", timeout_s=timeout)


@contextlib.contextmanager
def _collective(ctx: Context, what: str):
    """Turn a failed collective (a peer closed the connection, the timeout passed) into one DistributedError."""
    try:
        yield
    except DistributedError:
        raise
    except (RuntimeError, dist.DistError) as exc:
        lines = str(exc).strip().splitlines()
        first = lines[0][:200] if lines else type(exc).__name__
        raise DistributedError(
            f"rank {ctx.rank} of {ctx.world_size}: {what} failed, another rank died or stopped answering "
            f"(timeout {ctx.timeout_s:g} s): {type(exc).__name__}: {first}") from exc


def flat_gradients(params: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One float32 buffer for every parameter's gradient and one more element (the step's loss), and the views of
    it shaped as the parameters: a step that writes its gradients into the views all-reduces them in one call."""
    total = sum(p.numel() for p in params)
    flat = torch.zeros(total + 1, dtype=torch.float32, device=params[0].device)
    views, offset = [], 0
    for p in params:
        views.append(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()
    return flat, views


class NativeStep:
    """hdr_lib.fast.native's TrainStep with the all-reduce between the gradients and the update: the operator writes
    its gradients into views of one flat buffer, the buffer (with the loss) is averaged over the ranks, and the
    same fused SGD update follows on every rank."""

    def __init__(self, step, ctx: Context):
        self.step, self.ctx = step, ctx
        self.flat, step.grads = flat_gradients(step.params)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        s = self.step
        loss = s.ops.gradients_into(x, y, idx, s.weights, s.grads)  # the build for this CPU (native.ops)
        for p, g in zip(s.params, s.grads):
            if p.grad is not g:
                p.grad = g
        self.flat[-1] = loss
        self.ctx.all_reduce_mean_(self.flat)
        s._update()
        return self.flat[-1].clone()


def all_reduce_autograd(ctx: Context, model: torch.nn.Module, loss: torch.Tensor, state: dict) -> torch.Tensor:
    """After loss.backward() on the fast path's autograd step: average the gradients (and the loss) over the ranks
    in one all-reduce of a flat buffer kept in `state`; returns the global batch's loss."""
    params = [p for p in model.parameters() if p.grad is not None]
    if "flat" not in state or state["n"] != len(params):
        state["flat"], _ = flat_gradients(params)
        state["n"] = len(params)
    flat = state["flat"]
    torch.cat([p.grad.reshape(-1).float() for p in params] + [loss.detach().float().reshape(1)], out=flat)
    ctx.all_reduce_mean_(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()
    return flat[-1].clone()


def timed_allreduce_hook(ctx: Context, bucket):
    """DistributedDataParallel's communication hook on gloo: the bucket's all-reduce, run and timed here (one bucket
    for a network this small), so the record can say how long communication took."""
    buffer = bucket.buffer()
    ctx.all_reduce_mean_(buffer)
    future = torch.futures.Future()
    future.set_result(buffer)
    return future


def wrap_reference(ctx: Context, model: torch.nn.Module) -> torch.nn.Module:
    """The reference path's model under DistributedDataParallel (which checks that every rank starts from the same
    weights by broadcasting rank 0's); on gloo its all-reduces are timed, on NCCL they run asynchronously with
    the backward pass and are not (the record says so)."""
    from torch.nn.parallel import DistributedDataParallel

    with _collective(ctx, "wrapping the model in DistributedDataParallel"):
        wrapped = DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.backend == "nccl" else None)
    if ctx.backend == "gloo":
        wrapped.register_comm_hook(ctx, timed_allreduce_hook)
    return wrapped


def fail(exc: DistributedError) -> int:
    """One line on stderr for a failed collective; the exit status of a run that could not finish (1)."""
    print(f"error: {exc}", file=sys.stderr, flush=True)
    return 1
