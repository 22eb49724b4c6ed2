"""Chapter 11's helpers: the precision, data-parallel and network tables from records, "not yet measured" where
there are none, and the options' validation (amp as a string, old boolean records)."""

import copy
import json

import pytest

from hdr_lib.book import futurework as fw
from hdr_lib.config import PAPER, TrainConfig
from hdr_lib.validation import ConfigError
from hdr_lib.measure.replicate import record_name

from conftest import REPO


def _record(seed, accuracy, seconds, **config):
    """A record shaped as hdr_lib.train writes it (keys the helpers read), from a real committed one."""
    base = json.loads((REPO / "results" / "cpu-fast-e20-b64-seed0.json").read_text())
    record = copy.deepcopy(base)
    record["config"].update(seed=seed, **config)
    record["deviations_from_paper"] = {k: v for k, v in config.items() if k in ("amp", "model")}
    for e in record["epochs"]:
        e["train_seconds"] = seconds
    record["epochs"][-1]["test_accuracy"] = record["test_accuracy"] = accuracy
    record["total_train_seconds"] = seconds * len(record["epochs"])
    return record


def _write(folder, records):
    folder.mkdir(exist_ok=True)
    for i, r in enumerate(records):
        (folder / f"r{i}.json").write_text(json.dumps(r))


def test_empty_results_say_not_yet_measured(tmp_path):
    for text in (fw.precision_markdown(tmp_path), fw.ddp_markdown(tmp_path), fw.network_markdown(tmp_path),
                 fw.ddp_verdict(tmp_path), fw.network_prediction(tmp_path), fw.amp_ab_markdown(tmp_path)):
        assert "not yet measured" in text
    assert "177.7 kB" in fw.ddp_markdown(tmp_path) and "44,426" in fw.ddp_markdown(tmp_path)


def test_precision_table_compares_bfloat16_with_float32_seed_for_seed(tmp_path):
    f32 = [_record(s, a, 1.0, amp=False) for s, a in enumerate([99.0, 99.1, 99.2])]  # an old record's boolean
    for r, first in zip(f32, [97.0, 97.2, 97.4]):
        r["epochs"][0]["test_accuracy"] = first
    b16 = []
    for s, a in enumerate([97.1, 97.2, 97.6]):  # one-epoch runs: compared with float32 after epoch 1
        r = _record(s, a, 4.0, amp="bf16", epochs=1)
        r["epochs"] = r["epochs"][:1]
        r["epochs"][0]["test_accuracy"] = a
        b16.append(r)
    _write(tmp_path, f32 + b16)
    rows = {(r["device"], r["amp"]): r for r in fw.precision_rows(tmp_path)}
    assert rows[("cpu", "off")]["epoch"] == 1 and rows[("cpu", "off")]["accuracy"]["mean"] == pytest.approx(97.2)
    assert rows[("cpu", "bf16")]["accuracy"]["n"] == 3 and rows[("cuda", "fp16")]["accuracy"]["n"] == 0
    text = fw.precision_markdown(tmp_path)
    assert "+0.100 percentage points" in text and "over 3 seeds" in text  # differences 0.1, 0.0, 0.2
    assert "standard deviation of 0.200" in text and "inside the seed-to-seed spread" in text
    assert "4.0x as long" in text
    assert "cuda | float16 autocast + gradient scaler | 0 | 20 | not yet measured" in text


def test_ddp_rows_take_the_share_of_communication_from_the_records(tmp_path):
    runs = []
    for world, threads, comm in ((1, 2, 2.0), (2, 1, 5.0)):
        r = _record(0, 99.0, 1.5)
        r["distributed"] = {"world_size": world, "threads_per_rank": threads, "communication_seconds": comm}
        runs.append(r)
    _write(tmp_path, runs + [_record(0, 98.9, 1.0)])
    rows = {row["world_size"]: row for row in fw.ddp_rows(tmp_path)}
    steps = sum(e["steps"] for e in runs[1]["epochs"])
    assert rows[2]["comm_share"]["mean"] == pytest.approx(5.0 / 30.0)
    assert rows[2]["allreduce_ms"]["mean"] == pytest.approx(5000.0 / steps)
    assert rows[2]["plain_accuracy"] == {0: 98.9}
    assert "1.00x the time per epoch" in fw.ddp_verdict(tmp_path)


def test_amp_is_a_string_and_old_booleans_keep_their_meaning():
    assert TrainConfig(amp=True).amp == "bf16" and TrainConfig(amp=False).amp == "off"
    assert PAPER.replace(amp="fp16").validate().deviations() == {"amp": "fp16"}
    with pytest.raises(ConfigError, match="amp must be one of off, bf16, fp16"):
        PAPER.replace(amp="fp8").validate()
    with pytest.raises(ConfigError, match="model must be one of"):
        PAPER.replace(model="vgg").validate()
    assert record_name(PAPER.replace(amp="bf16", seed=3), "cpu") == "cpu-fast-e20-b64-bf16-seed3.json"
    assert record_name(PAPER.replace(model="resnet", epochs=2), "cpu", world_size=2) == "cpu-fast-e2-b64-resnet-ddp2-seed0.json"
