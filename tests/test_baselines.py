"""The loops held out from the library that the benchmark times beside its paths, and its contended rounds."""

import pytest

from hdr_lib import PAPER
from hdr_lib.measure import baselines
from hdr_lib.measure.bench import bench
from hdr_lib.measure.records import read_record
from hdr_lib.validation import ConfigError


@pytest.mark.parametrize("loop", baselines.LOOPS)
def test_each_held_out_loop_trains_the_papers_network(mnist, loop):
    record = baselines.run_loop(loop, PAPER.replace(device="cpu"), mnist, max_steps=30)
    epoch = record["epochs"][0]
    assert epoch["train_seconds"] > 0 and 0 < epoch["train_loss"] < 2.31  # below chance's log(10) after 30 steps
    assert 0 <= epoch["test_accuracy"] <= 100 and record["execution"]["loop"] == loop


def test_an_unknown_loop_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="unknown loop 'dataloader'"):
        bench(PAPER.replace(device="cpu"), loops=("dataloader",), out=tmp_path / "b.json")
    assert not (tmp_path / "b.json").exists()


def test_the_busy_core_is_gone_when_the_block_ends():
    with baselines.busy_core(limit=30) as pid:
        import os
        os.kill(pid, 0)  # running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.slow  # trains
def test_a_contended_bench_times_every_way_twice_and_compares_under_load(mnist, tmp_path):
    record = bench(PAPER.replace(device="cpu"), rounds=1, max_steps=3, loops=("canonical",), contention=True,
                   out=tmp_path / "b.json", data_root=mnist.root, progress=False, profile=True)
    assert set(record["runs"]) == {"reference", "fast", "canonical", "reference busy", "fast busy", "canonical busy"}
    assert set(record["contention"]["slowdown_busy_over_quiet"]) == {"reference", "fast", "canonical"}
    assert record["contention"]["fast_over_canonical_busy"] > 0
    assert record["runs"]["fast"][0]["execution"]["threads_per_epoch"]  # the fast path says its threads
    # --profile: where the native step's time goes, part by part, kept in the record (None where it does not run).
    if record["runs"]["fast"][0]["execution"]["cpu_step"] == "native":
        assert record["profile"]["parts"]["conv2 backward"] > 0
        assert read_record(tmp_path / "b.json")["profile"] == record["profile"]
    else:
        assert record["profile"] is None
