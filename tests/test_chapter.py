"""hdr_lib.book.chapter without a kernel: the papermill parameter checks and the shared cached run."""

import math
from pathlib import Path

import pytest

from hdr_lib.book import chapter as nb
from hdr_lib.config import PAPER
from hdr_lib.validation import ConfigError


def test_check_parameters_defaults_are_the_paper():
    assert nb.check_parameters(needs_data=False) == PAPER


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": -1}, "parameter epochs must be an integer from 1 to 1,000"),
    ({"epochs": 2.5}, "parameter epochs must be an integer"),
    ({"batch_size": "64"}, "parameter batch_size must be an integer .* got '64'; pass it unquoted"),
    ({"lr": math.inf}, "parameter lr must be a number greater than 0"),
    ({"seed": True}, "parameter seed must be an integer"),
    ({"device": None}, "device must be 'cpu', 'cuda' or 'auto'"),
    ({"bench_steps": 0}, "parameter bench_steps must be an integer from 1 to 100,000"),
])
def test_check_parameters_rejects_nonsense(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        nb.check_parameters(needs_data=False, **kwargs)


def test_check_parameters_accepts_whole_floats():
    assert nb.check_parameters(epochs=3.0, needs_data=False).epochs == 3


def test_a_quoted_number_is_refused_with_how_to_pass_it():
    with pytest.raises(ConfigError, match="parameter lr must be .*; pass it unquoted, e.g. `-p lr 0.01`"):
        nb.check_parameters(lr="abc", needs_data=False)


def test_results_dir_of_a_chapter_is_checked_as_a_path():
    with pytest.raises(ConfigError, match="results_dir"):
        nb.check_parameters(results_dir="", needs_data=False)


@pytest.mark.slow  # trains on the real MNIST
def test_cached_run_trains_once_and_then_reuses(tmp_path, monkeypatch, data_root):
    import hdr_lib.train

    config = PAPER.replace(device="cpu", epochs=1, batch_size=6000)
    first, _ = nb.cached_run(config, tmp_path, verbose=False)
    monkeypatch.setattr(hdr_lib.train, "train_model", lambda *a, **k: pytest.fail("trained again"))
    again, model = nb.cached_run(config, tmp_path, verbose=False)
    assert again["environment"]["created_at"] == first["environment"]["created_at"]
    assert again["test_accuracy"] == first["test_accuracy"]
    assert Path(again["_path"]).with_suffix(".pt").is_file()
    monkeypatch.undo()
    other, _ = nb.cached_run(config.replace(seed=1), tmp_path, verbose=False)  # another config trains anew
    assert other["config"]["seed"] == 1 and len(list(tmp_path.glob("*.json"))) == 2
