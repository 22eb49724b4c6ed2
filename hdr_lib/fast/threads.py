"""How many threads the CPU fast path's steps use, chosen from the CPU time actually available and revised during
the run.

A step of the fast path is a few milliseconds of work split into parallel regions (the native operator's loops,
ATen's and MKL's kernels, the fused SGD update). Each region ends at a barrier where every thread waits for the
slowest. On a quiet machine that costs little; when another process holds one of the cores, the thread that
shares a core with it is descheduled for a whole time slice, and every region waits for it: measured on a 2-core
Xeon with one core busy, an epoch of the native step took 4-40 s instead of 0.7 s with two threads, 1.2 s with
one. Neither count is right for every moment, so the governor measures: it runs most steps with the count that
is fastest now, and every so often tries the other counts for a few steps (`probe`); a count that loses is
retried less and less often, and a sudden slowdown of the current count makes it look again at once.

The counts it chooses from are 1 and the threads the process may use (its CPU affinity, at most
torch.get_num_threads() at the start). The record keeps, per epoch, the count that ran most of its steps
(`execution.threads_per_epoch`) and how the choice is made (`execution.thread_reason`). The native operator's
sums do not depend on the count (`csrc/lenet5_cpu.cpp` splits a batch into a fixed number of chunks), so a run
computes the same numbers whatever the governor chooses.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import Counter

import torch

BLOCK = 8           # steps timed together: a decision compares blocks' median step times...
PROBE = 4           # ...against a probe's median over this many steps (a probe of a losing count costs its steps)
FIRST_PROBE = 8     # steps before the other counts are first tried, and after a count wins
GROWTH = 4          # a count that loses is tried this many times less often...
MAX_INTERVAL = 256  # ...but at least every this many steps
SLOWDOWN = 1.5      # the current count's block this much slower than its best: look at the others again
ABORT = 3.0         # a probe's step this much slower than the current count's median ends the probe at once
REASON = (f"threads revised during the run: it starts with 1 thread; most steps run with whichever of 1 and the "
          f"process's CPUs (affinity) gave the shortest median step time over its last {BLOCK} steps; the other is "
          f"tried for up to {PROBE} steps (ended after one step {ABORT:g}x slower) every {FIRST_PROBE} to "
          f"{MAX_INTERVAL} steps ({GROWTH}x less often each time it loses), and when the current count slows by "
          f"{SLOWDOWN}x (at most every {FIRST_PROBE} steps); an epoch is listed with the count that ran most of "
          f"its steps")


def available_threads() -> int:
    """The threads this process may run at once: its CPU affinity, at most torch's thread count."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, torch.get_num_threads()))


class Governor:
    """Chooses the thread count for each step (`before_step`), learning from each step's time (`after_step`)."""

    def __init__(self, max_threads: int | None = None):
        top = available_threads() if max_threads is None else max(1, max_threads)
        self.counts = sorted({top, 1}, reverse=True)
        # One thread first: if a core is taken, all threads would wait at every barrier from the first step; if
        # the machine is quiet, the probe of all of them comes after FIRST_PROBE steps.
        self.current = 1
        self.times: dict[int, list[float]] = {c: [] for c in self.counts}  # the last block's step times per count
        self.best: dict[int, float] = {}  # each count's best block median so far
        self.interval = {c: FIRST_PROBE for c in self.counts}
        self.next_probe = {c: FIRST_PROBE for c in self.counts}
        self.probing: int | None = None
        self.last_probe = 0
        self.steps, self.epoch_counts, self._start = 0, Counter(), 0.0
        self.per_epoch: list[int] = []        # threads_per_epoch: filled as epochs end
        self.steps_per_epoch: list[dict] = []  # {threads: steps} per epoch

    @property
    def active(self) -> bool:
        return len(self.counts) > 1

    def before_step(self) -> None:
        """Sets the thread count for the next step."""
        threads = self.probing or self.current
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        self._start = time.perf_counter()

    def next_block(self, most: int) -> tuple[int, float]:
        """Sets the thread count for the next steps, run together without a decision between them (the native
        operator's train_steps); returns how many (at most `most`: up to the next decision) and the seconds after
        which a step ends them early (a probe's step ABORT times slower than the current count's median; each step's
        time then goes to `after_step`)."""
        self.before_step()
        if not self.active:
            return min(most, BLOCK), float("inf")
        threads = self.probing or self.current
        left = (BLOCK if self.probing is None else PROBE) - len(self.times[threads])
        stop = ABORT * getattr(self, "_current_median", float("inf")) if self.probing is not None else float("inf")
        return max(1, min(most, left)), stop

    def after_step(self, seconds: float | None = None) -> None:
        """The step just run took `seconds` (by default, the time since `before_step`)."""
        if seconds is None:
            seconds = time.perf_counter() - self._start
        threads = self.probing or self.current
        self.epoch_counts[threads] += 1
        self.steps += 1
        if not self.active:
            return
        block = self.times[threads]
        block.append(seconds)
        if self.probing is not None and seconds > ABORT * getattr(self, "_current_median", float("inf")):
            block.clear()
            self._decide(self.probing, float("inf"))
            return
        if len(block) < (BLOCK if self.probing is None else PROBE):
            return
        median = statistics.median(block)
        block.clear()
        self.best[threads] = min(self.best.get(threads, median), median)
        if self.probing is not None:
            self._decide(self.probing, median)
            return
        self._current_median = median
        # A slowdown looks again, but not more often than every FIRST_PROBE steps: on a machine whose load comes and
        # goes, each probe of a losing count costs a block of slow steps.
        slowed = median > SLOWDOWN * self.best[threads] and self.steps >= self.last_probe + FIRST_PROBE
        for other in self.counts:
            if other != self.current and (slowed or self.steps >= self.next_probe[other]):
                self.probing = other
                return

    def _decide(self, probed: int, median: float) -> None:
        """After a probe of `probed`: switch to it where it was faster than the current count's last block."""
        current_median = getattr(self, "_current_median", float("inf"))
        self.probing = None
        self.last_probe = self.steps
        if median < current_median:
            loser, self.current = self.current, probed
        else:
            loser = probed
        self.interval[loser] = min(MAX_INTERVAL, GROWTH * self.interval[loser])
        self.interval[self.current] = FIRST_PROBE
        self.next_probe[loser] = self.steps + self.interval[loser]
        # Forget the loser's best: the machine it was measured on may be gone.
        self.best.pop(loser, None)

    def end_epoch(self) -> None:
        counts = self.epoch_counts or Counter({self.current: 0})
        self.per_epoch.append(max(counts, key=lambda c: (counts[c], c)))
        self.steps_per_epoch.append({str(c): n for c, n in sorted(counts.items())})
        self.epoch_counts = Counter()
