"""What the NVML sampler keeps of its samples: "consistently above" needs a low percentile, "averaged" a mean."""

from __future__ import annotations

import pytest
import torch

from hdr_lib.measure.machine import NvmlSampler
from hdr_lib.measure.machine import percentile


def test_percentile_matches_linear_interpolation():
    values = [0, 100, 100, 100, 100, 100, 100, 100, 100, 100]
    assert percentile(values, 10) == pytest.approx(90.0)  # numpy.percentile(values, 10)
    assert percentile([5], 10) == 5
    assert percentile([3, 1, 2], 50) == 2


def test_summary_keeps_the_10th_percentile_and_the_mean_memory():
    sampler = NvmlSampler(torch.device("cpu"))  # no GPU here: the samples are set by hand
    sampler.samples_util = [100] * 8 + [20, 40]  # a mean of 86 %, but two samples in ten far below 90 %
    sampler.samples_mem = [1_000, 3_000] * 5
    result = sampler.result()
    assert result["utilisation_mean_percent"] == pytest.approx(86.0)
    assert result["utilisation_p10_percent"] == pytest.approx(38.0)
    assert result["memory_used_mean_bytes"] == pytest.approx(2_000)
    assert result["memory_used_max_bytes"] == 3_000 and result["sample_count"] == 10


def test_no_samples_leave_every_field_empty_with_a_reason():
    sampler = NvmlSampler(torch.device("cpu"))
    result = sampler.result()
    assert result["utilisation_p10_percent"] is None and result["memory_used_mean_bytes"] is None
    assert result["reason"]
