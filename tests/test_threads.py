"""hdr_lib.fast.threads: the CPU fast path's thread count follows the CPU time actually available (step times fed
in here, as a loaded or a quiet machine would give them), and the record says per epoch what ran."""

import pytest
import torch

from hdr_lib.fast import threads


def _run(governor, seconds_for, steps, epochs=1):
    """Feed `steps` steps per epoch whose time is seconds_for(step number, thread count)."""
    done = 0
    for _ in range(epochs):
        for _ in range(steps):
            governor.before_step()
            governor.after_step(seconds_for(done, torch.get_num_threads()))
            done += 1
        governor.end_epoch()


def _run_in_blocks(governor, seconds_for, steps, epochs=1):
    """The same, as the native fast path runs its steps: in blocks of `next_block`'s size, each ended early by a step
    slower than its limit; the steps' times are given to the governor after the block."""
    done = 0
    for _ in range(epochs):
        left = steps
        while left:
            count, stop_after = governor.next_block(left)
            times = []
            while len(times) < count and (not times or times[-1] <= stop_after):
                times.append(seconds_for(done, torch.get_num_threads()))
                done += 1
            for seconds in times:
                governor.after_step(seconds)
            left -= len(times)
        governor.end_epoch()


@pytest.fixture(autouse=True)
def _threads_back():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_on_a_quiet_machine_it_keeps_every_thread():
    governor = threads.Governor(max_threads=2)
    _run(governor, lambda i, t: 0.6 if t == 2 else 1.0, steps=938)
    assert governor.per_epoch == [2]
    assert governor.steps_per_epoch[0]["2"] > 0.95 * 938  # the probes of one thread stay few


def test_with_a_core_taken_it_runs_on_one_thread():
    # Two threads wait at every barrier for the one that shares its core: 30x slower, as measured here.
    governor = threads.Governor(max_threads=2)
    _run(governor, lambda i, t: 30.0 if t == 2 else 1.2, steps=938)
    assert governor.per_epoch == [1]
    assert governor.steps_per_epoch[0]["2"] < 0.1 * 938


def test_it_follows_the_load_as_it_comes_and_goes():
    # Quiet in epoch 1, a core taken in epoch 2, quiet again in epoch 3.
    busy = range(938, 2 * 938)
    governor = threads.Governor(max_threads=2)
    _run(governor, lambda i, t: (30.0 if t == 2 else 1.2) if i in busy else (0.6 if t == 2 else 1.0), steps=938,
         epochs=3)
    assert governor.per_epoch == [2, 1, 2]


def test_one_cpu_means_one_thread_and_no_probes():
    governor = threads.Governor(max_threads=1)
    _run(governor, lambda i, t: 1.0, steps=50)
    assert not governor.active and governor.per_epoch == [1] and governor.steps_per_epoch == [{"1": 50}]


@pytest.mark.parametrize("seconds_for", [
    lambda i, t: 0.6 if t == 2 else 1.0,
    lambda i, t: 30.0 if t == 2 else 1.2,
    lambda i, t: (30.0 if t == 2 else 1.2) if 938 <= i < 2 * 938 or i % 300 < 40 else (0.6 if t == 2 else 1.0),
], ids=["quiet", "core taken", "load coming and going"])
def test_steps_run_in_blocks_get_the_same_thread_counts_as_one_at_a_time(seconds_for):
    # A block ends where the governor decides (and a probe's block after a step too slow), so running the steps in
    # blocks must run every step with the count that choosing before each gives.
    ran = {"one": [], "blocks": []}

    def recorded(name):
        def seconds(i, t):
            ran[name].append(t)
            return seconds_for(i, t)
        return seconds

    one, blocks = threads.Governor(max_threads=2), threads.Governor(max_threads=2)
    _run(one, recorded("one"), steps=938, epochs=3)
    _run_in_blocks(blocks, recorded("blocks"), steps=938, epochs=3)
    assert ran["blocks"] == ran["one"] and len(ran["one"]) == 3 * 938 and set(ran["one"]) == {1, 2}
    assert blocks.steps_per_epoch == one.steps_per_epoch and blocks.per_epoch == one.per_epoch
