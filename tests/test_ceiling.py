"""hdr_lib.measure.ceiling: a large matrix product's rate, the ceiling the benchmark compares each path with."""

import pytest
import torch

from hdr_lib.measure.ceiling import matmul_rate


def test_matmul_rate_times_repeated_products_and_keeps_tf32_as_it_was():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        rate = matmul_rate("cpu", n=96, seconds=0.02, trials=3)
        assert torch.backends.cuda.matmul.allow_tf32 is True  # switched off for the product only
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert rate["op"] == "torch.mm" and rate["n"] == 96 and rate["dtype"] == "float32" and rate["tf32"] is False
    assert len(rate["gflops_per_trial"]) == 3 and rate["gflops"] == max(rate["gflops_per_trial"])
    assert all(r > 0 for r in rate["gflops_per_trial"]) and rate["repeats"] >= 1


def test_matmul_rate_counts_the_work_it_times(monkeypatch):
    # With a clock that advances exactly 1 ms per product, the rate is 2 n^3 FLOP per ms, whatever the machine.
    import hdr_lib.measure.ceiling as ceiling

    clock = {"t": 0.0}
    real_mm = torch.mm

    def mm(a, b, out=None):
        clock["t"] += 1e-3
        return real_mm(a, b, out=out)

    monkeypatch.setattr(ceiling.torch, "mm", mm)
    monkeypatch.setattr("hdr_lib.measure.timing.time.perf_counter", lambda: clock["t"])
    rate = matmul_rate("cpu", n=32, seconds=0.05, trials=2)
    assert rate["repeats"] == 50
    assert rate["gflops_per_trial"] == pytest.approx([2 * 32 ** 3 / 1e-3 / 1e9] * 2)


@pytest.mark.parametrize("kwargs", [{"n": -1}, {"seconds": 0}, {"trials": 0}])
def test_matmul_rate_rejects_nonsense(kwargs):
    with pytest.raises(ValueError, match="matmul_rate needs"):
        matmul_rate("cpu", **kwargs)
