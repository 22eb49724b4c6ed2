"""The experiment: train the paper's CNN on MNIST with SGD and step decay, timing each epoch, and write its record.

Each epoch runs through one `hdr_lib.steps.Step`: the reference path's plain PyTorch loop, or the fast way that
`hdr_lib.fast.choose` picks (and says why). Both see the same initial weights and the same batches."""

from __future__ import annotations

import math
import os
from typing import Callable

import torch

from hdr_lib import checkpoint, distributed, fast, paths, settings, weights
from hdr_lib import data as mnist
from hdr_lib.config import TrainConfig
from hdr_lib.validation import ConfigError, check
from hdr_lib.measure import run_record
from hdr_lib.measure.machine import environment, resolve_device
from hdr_lib.measure.records import write_json_atomic
from hdr_lib.measure.timing import Stopwatch
from hdr_lib.model import build_model
from hdr_lib.steps import ReferenceStep

TRAIN_STEPS_LABEL = "hdr.train_steps"  # marks an epoch's optimiser steps for hdr_lib.measure.profiling


def batch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The permutation of the training set for one epoch: a function of (seed, epoch) alone, made on the CPU,
    so every device and both paths see the same batches, and a resumed run needs no generator state."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def init_model(config: TrainConfig, device: torch.device) -> torch.nn.Module:
    """Initial weights drawn on the CPU from the seed, then moved: the same on every device (and every rank)."""
    torch.manual_seed(config.seed)
    return build_model(config.model, config.variant).to(device)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Step decay (our reading of §3.4): lr * gamma ** floor((epoch - 1) / step), epochs counted from 1."""
    return config.lr * config.lr_gamma ** ((epoch - 1) // config.lr_step_epochs)


def make_optimizer(model, config: TrainConfig, *, fused: bool = False, lr_device: torch.device | None = None):
    """SGD with momentum (§3.4) and its step decay. `lr_device`: lr as a tensor there (a CUDA graph and the Triton
    step read it at every step)."""
    lr = torch.tensor(config.lr, device=lr_device) if lr_device is not None else config.lr
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum, **({"fused": True} if fused else {}))
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step_epochs, gamma=config.lr_gamma)


def set_lr(optimizer, lr: float, tensors: list | None = None) -> None:
    """Write the epoch's lr; a tensor lr (`tensors`, one per group, else the groups' own) in place, and put back in
    its group should anything (a scheduler of another torch version) have put a number there."""
    for i, group in enumerate(optimizer.param_groups):
        tensor = tensors[i] if tensors is not None else group["lr"]
        group["lr"] = tensor.fill_(lr) if isinstance(tensor, torch.Tensor) else lr


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 2000) -> float:
    """Test accuracy in percent on float images [N, 1, 28, 28] already on the model's device."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    for start in range(0, images.shape[0], batch):
        correct += (model(images[start:start + batch]).argmax(1) == labels[start:start + batch]).sum()
    model.train(was_training)
    return 100.0 * correct.item() / images.shape[0]


@torch.no_grad()
def predict_proba(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities for float images [N, 1, 28, 28]."""
    model.eval()
    return torch.softmax(model(images.to(next(model.parameters()).device)), dim=1).cpu()


def train(config: TrainConfig, **kwargs) -> dict:
    """`train_model`'s record alone."""
    return train_model(config, **kwargs)[0]


def train_model(config: TrainConfig, *, data: mnist.MNISTTensors | None = None, data_root=None, out=None,
                checkpoint_dir=None, resume: bool = False, progress: bool | None = None,
                on_epoch: Callable[[dict, dict], None] | None = None, max_steps: int | None = None,
                keep_step_losses: bool = False, dist_ctx: distributed.Context | None = None,
                overwrite_checkpoint: bool = False, weights_out=None):
    """Train the paper's CNN; return its record and the trained model. Bad settings are refused before any work.
    Each epoch's entry: train loss, training seconds (no evaluation, no data loading), test accuracy, evaluation
    seconds. `out` is locked for this run and rewritten after every epoch; it never replaces a finished record or
    another kind's (`hdr_lib.paths.output_file`). `checkpoint_dir` is locked, checkpointed, and `resume`d from
    (only at an epoch's end: a checkpoint of an epoch cut short by `max_steps` is refused, as its batch order
    cannot be continued); a checkpoint there is replaced by a new run only with `overwrite_checkpoint`. A run
    stopped by `max_steps` is never complete, and says so in `max_steps` and `deviations_from_paper`.
    `weights_out`: the trained state dict is saved there at the end, and the record names it (`weights`)."""
    device, out, folder, max_steps = _check(config, out, checkpoint_dir, resume, max_steps, dist_ctx,
                                            overwrite_checkpoint)
    if weights_out is not None:
        weights_out = paths.output_file(weights_out, "weights_out") if dist_ctx is None or dist_ctx.is_writer else None
    lock = paths.FolderLock(folder) if folder is not None and (dist_ctx is None or dist_ctx.is_writer) else None
    out_lock = paths.WriteLock(out, "record") if out is not None else None
    try:
        if out_lock is not None:
            out_lock.acquire()  # a second writer of the same record is refused, not interleaved
        if lock is not None and folder.is_dir():
            lock.acquire()  # before reading its checkpoint: no other run may be writing it
        state = checkpoint.load_train_state(folder, config) if resume else None
        run = run_record.Run(config=config, device=device, env=environment(device))
        run.extra["numerics"] = run_record.numerics(config, device)
        if max_steps is not None:
            run.extra["max_steps"] = max_steps
        train_set, x_test, y_test = _data(config, data, data_root, device, run.setup_seconds)
        if dist_ctx is not None:
            run.setup_seconds["process_group"] = dist_ctx.start(device)
        model = init_model(config, device)
        on_fast = config.path == "fast"  # on CUDA its lr is a device tensor: graphs and Triton read it at every step
        optimizer, scheduler = make_optimizer(model, config, fused=on_fast,
                                              lr_device=device if on_fast and device.type == "cuda" else None)
        start = 1 if state is None else _resume(run, state, model, optimizer, scheduler, folder)
        lr_tensors = [group["lr"] for group in optimizer.param_groups]
        n_train = len(train_set[0]) if on_fast else len(train_set)
        steps_per_epoch = math.ceil(n_train / config.batch_size)
        if state is not None:
            _check_resumable(state, steps_per_epoch, folder)
        total = min((config.epochs - start + 1) * steps_per_epoch, max_steps or math.inf)
        local_batch = config.batch_size // (dist_ctx.world_size if dist_ctx is not None else 1)
        step, why = fast.choose(config, model, optimizer, *train_set, batch_size=local_batch, total_steps=total,
                                dist_ctx=dist_ctx) if on_fast else (ReferenceStep(
            model, optimizer, train_set, local_batch, config, device, dist_ctx), "reference: as asked (--path)")
        run.setup_seconds.update(step.setup_seconds)
        run.extra["execution"] = run_record.execution(config, device, step, why, steps_per_epoch)
        if dist_ctx is not None:
            run.extra["distributed"] = dist_ctx.record(sum(p.numel() for p in model.parameters()), local_batch)
        show, step_losses = run_record.progress_enabled(progress), []
        model.train()
        if lock is not None:
            lock.acquire()  # now that the run is sure to start: this makes the folder where it did not exist
        epoch_bar = run_record.bar(show, total=config.epochs, initial=start - 1, unit="epoch",
                                   desc=f"train {device.type}/{config.path}")
        meters = run_record.Meters(device)
        try:
            _write(out, run)
            with meters:
                for epoch in range(start, config.epochs + 1):
                    limit = min(steps_per_epoch, total - (epoch - start) * steps_per_epoch)
                    if limit <= 0 or "diverged" in run.extra:
                        break
                    set_lr(optimizer, lr_at(config, epoch), lr_tensors)
                    losses, entry = _train_epoch(step, config, epoch, limit, n_train, device, show, dist_ctx)
                    scheduler.step()
                    step_losses.append(losses)
                    with Stopwatch(device) as sw_eval:
                        entry["test_accuracy"] = accuracy = evaluate(model, x_test, y_test)
                    entry.update(eval_seconds=sw_eval.seconds, lr=lr_at(config, epoch), steps=limit)
                    _end_epoch(run, entry, dist_ctx)
                    _write(out, run)  # the record first: a run killed before its checkpoint redoes this epoch
                    if folder is not None and (dist_ctx is None or dist_ctx.is_writer):
                        checkpoint.save_train_state(folder, run, model, optimizer, scheduler)
                    epoch_bar.update()
                    epoch_bar.set_postfix(loss=f"{entry['train_loss']:.4f}", acc=f"{accuracy:.2f}%")
                    if on_epoch is not None:
                        on_epoch(entry, run.record())
            whole = all(e.get("steps", steps_per_epoch) == steps_per_epoch for e in run.epochs)
            complete = (len(run.epochs) == config.epochs and whole and "diverged" not in run.extra
                        and max_steps is None)
            run.status = "complete" if complete else "incomplete"
            if weights_out is not None:  # the weights the record's last test accuracy was measured with
                run.extra["weights"] = weights.save(model, weights_out)
        finally:
            epoch_bar.close()
            meters.into(run)
            _write(out, run)
    finally:
        if lock is not None:
            lock.release()
        if out_lock is not None:
            out_lock.release()
    record = _record(run)
    if keep_step_losses:
        record["step_losses"] = torch.cat(step_losses).tolist() if step_losses else []
    return record, model


def _train_epoch(step, config: TrainConfig, epoch: int, limit: int, n_train: int, device, show: bool, dist_ctx):
    """The epoch's first `limit` batches in its order (under data parallelism, this rank's shards), timed: its
    steps' losses, and its record entry so far (mean loss, seconds)."""
    order = batch_order(config.seed, epoch, n_train)
    if dist_ctx is not None:
        order = dist_ctx.shard(order, config.batch_size, limit)
    batch_bar = run_record.bar(show, total=limit, leave=False, desc=f"epoch {epoch}", unit="batch")
    with Stopwatch(device) as sw, torch.profiler.record_function(TRAIN_STEPS_LABEL):
        losses, weights = step.run_epoch(order, limit, batch_bar.update)
    batch_bar.close()
    losses = losses.float().cpu()
    return losses, {"epoch": epoch, "train_loss": float((losses * weights).sum() / weights.sum()),
                    "train_seconds": sw.seconds}


def _resume(run: run_record.Run, state: dict, model, optimizer, scheduler, folder) -> int:
    """Put a checkpoint's state back, its epochs into the run; the epoch to start from."""
    checkpoint.restore(state, model, optimizer, scheduler, folder / checkpoint.NAME)
    run.epochs, run.resumed_from_epoch = state["epochs"], state["epoch"]
    run.setup_seconds = {**state["setup_seconds"], **run.setup_seconds}
    return state["epoch"] + 1


def _check_resumable(state: dict, steps_per_epoch: int, folder) -> None:
    """A checkpoint is resumed only from the end of a whole epoch: one written after an epoch cut short (by
    --max-steps) would continue with the next epoch's batches and leave the short one in the record."""
    for entry in state["epochs"]:
        steps = entry.get("steps", steps_per_epoch) if isinstance(entry, dict) else steps_per_epoch
        if steps != steps_per_epoch:
            raise ConfigError(f"checkpoint {folder / checkpoint.NAME} holds epoch {entry.get('epoch')} stopped after "
                              f"{steps} of its {steps_per_epoch} steps (--max-steps); a run resumes only from an "
                              f"epoch's end, so it was not resumed: run without --resume and with "
                              f"--overwrite-checkpoint to start afresh, or choose another --checkpoint-dir")


def _record(run: run_record.Run) -> dict:
    """The run's record; a run stopped by max_steps names that among its deviations from the paper."""
    record = run.record()
    max_steps = run.extra.get("max_steps")
    if max_steps is not None:
        deviations = record["deviations_from_paper"]
        if isinstance(deviations, dict):
            deviations["max_steps"] = max_steps
        elif isinstance(deviations, list):
            deviations.append(f"stopped after {max_steps} optimiser steps (--max-steps)")
    return record


def _write(out, run: run_record.Run) -> None:
    if out is not None:
        write_json_atomic(out, _record(run))


def _check(config: TrainConfig, out, checkpoint_dir, resume: bool, max_steps, dist_ctx,
           overwrite_checkpoint: bool = False):
    """The settings, the device and the output paths, before any work: (device, out, checkpoint folder, max_steps).
    Under data parallelism the batch must split into equal shards, and only rank 0 writes."""
    config.validate()
    settings.check_environment()  # HDR_NATIVE, HDR_PROGRESS, ...: one rule, from the API as from the command line
    max_steps = check("max_steps", max_steps) if max_steps is not None else None
    device = resolve_device(config.device)
    if config.amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp fp16 runs on CUDA only (float16 with a gradient scaler); on the CPU use amp bf16")
    if dist_ctx is not None:
        dist_ctx.check(config.batch_size)
        out = out if dist_ctx.is_writer else None
    out = paths.output_file(out, "out", kind="train") if out is not None else None
    folder = paths.output_folder(checkpoint_dir, "checkpoint_dir") if checkpoint_dir is not None else None
    if resume and folder is None:
        raise ConfigError("resume needs a checkpoint directory (--checkpoint-dir)")
    if resume and overwrite_checkpoint:
        raise ConfigError("--resume continues the checkpoint that --overwrite-checkpoint would replace; give one")
    if folder is not None and not resume and not overwrite_checkpoint and os.path.lexists(folder / checkpoint.NAME):
        raise ConfigError(f"checkpoint folder {folder} holds another run's checkpoint ({checkpoint.NAME}); it was "
                          f"kept, nothing ran: continue it with --resume, replace it with --overwrite-checkpoint, "
                          f"or choose another --checkpoint-dir")
    return device, out, folder, max_steps


def _data(config: TrainConfig, data, data_root, device: torch.device, setup_seconds: dict):
    """(the training set, test images, test labels): for the fast path the training images and labels on the
    device, for the reference path torchvision's dataset; the test set on the device for both."""
    with Stopwatch() as sw:
        if config.path == "fast":
            data = data if data is not None else mnist.load_mnist(data_root)
            images, labels = data.test_images, data.test_labels
        else:
            train_set, test_set = mnist.torchvision_datasets(data_root if data is None else data.root)
            images, labels = test_set.data, test_set.targets.long()
    setup_seconds["data_load"] = sw.seconds
    with Stopwatch(device) as sw:
        if config.path == "fast":
            train_set = (mnist.to_float(data.train_images, device), data.train_labels.to(device))
        test = (mnist.to_float(images, device), labels.to(device))
    setup_seconds["to_device"] = sw.seconds
    return (train_set, *test)


def _end_epoch(run: run_record.Run, entry: dict, dist_ctx) -> None:
    """Add the epoch to the run (with its communication under data parallelism); note a loss that diverged."""
    if dist_ctx is not None:
        entry.update(dist_ctx.take_epoch_stats())
        run.extra["distributed"]["communication_seconds"] = sum(
            e.get("communication_seconds", 0.0) for e in run.epochs + [entry])
    run.epochs.append(entry)
    if not math.isfinite(entry["train_loss"]):
        run.extra["diverged"] = f"train loss became {entry['train_loss']} in epoch {entry['epoch']}; lr too high?"
