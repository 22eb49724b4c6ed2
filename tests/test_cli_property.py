"""A property of the command line, for generated argument vectors and path shapes: every run either works (exit 0,
a strict-JSON record where --out says, nothing written anywhere else) or exits 2 with one line on stderr, no
traceback, and nothing written at all (so it stopped before any training)."""

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from hdr_lib import cli
from hdr_lib.mnist_files import locate  # MNIST by the library's own rule, as CI finds it

from conftest import REPO

# For each option: values that are fine, values that are not. Runs that would train stop after --max-steps steps.
NUMBERS = {
    "--epochs": (["1", "2"], ["0", "-1", "1001", "x", "", "1" + "0" * 30, "nan", "2.5"]),
    "--batch-size": (["64", "500"], ["0", "60001", "-5", "abc", "1e3"]),
    "--lr": (["0.01", "0.5"], ["0", "-1", "nan", "inf", "1e7", "x"]),
    "--seed": (["0", "7", "4294967295"], ["-1", "4294967296", "1.5", "s", "20000000000000"]),
    "--max-steps": (["1", "2"], ["0", "-1", "100000001", "x"]),
}
DEVICES = (["cpu"], ["tpu", ""] + ([] if torch.cuda.is_available() else ["cuda"]))
PATHS = ["fast", "reference"]
OUT = (["out/r.json", "out/a/b/r.json"], ["", "folder", "file.txt/r.json", "file.txt", "x" * 300 + ".json",
                                          "/proc/hdr.json"])
CHECKPOINT = (["ck", "out/ck"], ["", "file.txt", "file.txt/ck", "c" * 300])
DATA = (["<data>"], ["", "nope", "file.txt"])


def pick(pair, allow_absent=True):
    """(value, or None for absent; whether it is fine): a bad value one time in ten, so that about a third of the
    generated runs are fine throughout and train."""
    fine, bad = pair
    good = st.sampled_from([(v, True) for v in fine] + ([(None, True)] if allow_absent else []))
    wrong = st.sampled_from([(v, False) for v in bad])
    return st.integers(0, 9).flatmap(lambda r: wrong if r == 0 else good)


@st.composite
def train_vectors(draw):
    argv, ok = ["train"], True
    for option, pair in NUMBERS.items():
        value, fine = draw(pick(pair, allow_absent=option not in ("--max-steps", "--epochs")))
        if value is not None:
            argv += [option, value]
        ok &= fine
    for option, pair, absent in (("--device", DEVICES, False), ("--out", OUT, False),
                                 ("--checkpoint-dir", CHECKPOINT, True), ("--data-dir", DATA, True)):
        value, fine = draw(pick(pair, allow_absent=absent))
        if value is not None:
            argv += [option, value]
        ok &= fine
    argv += ["--path", draw(st.sampled_from(PATHS))]
    if draw(st.booleans()) and draw(st.booleans()):
        argv.append("--resume")
        ok &= "--checkpoint-dir" in argv
    return argv + ["--quiet"], ok


def sandbox_files(root: Path) -> set:
    return {p.relative_to(root) for p in root.rglob("*")}


def run_in(root: Path, argv: list[str], data_root: str):
    """cli.main in `root` as the working folder, with the sandbox's shapes made: (status, stdout, stderr)."""
    (root / "folder").mkdir()
    (root / "file.txt").write_text("not a record\n")
    argv = [a.replace("<data>", data_root) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as exc:
                code = exc.code
    finally:
        os.chdir(here)
    return code, out.getvalue(), err.getvalue()


def strict(text):
    return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


@pytest.mark.slow  # about 15 s on an idle machine: some generated runs train a step or two
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=train_vectors())
def test_train_works_or_refuses_in_one_line_before_any_work(case):
    argv, ok = case
    data_root = str(locate().root)
    results_before = {p: p.stat().st_mtime_ns for p in (REPO / "results").rglob("*")}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        code, out, err = run_in(root, argv, data_root)
        made = sandbox_files(root) - {Path("folder"), Path("file.txt")}
        assert "Traceback" not in err, (argv, err)
        if ok:
            assert code == 0, (argv, err)
            record_path = Path(argv[argv.index("--out") + 1])
            record = strict((root / record_path).read_text())
            assert record["status"] == "incomplete" and record["max_steps"] >= 1
            allowed = {record_path, *record_path.parents}
            if "--checkpoint-dir" in argv:
                ck = Path(argv[argv.index("--checkpoint-dir") + 1])
                allowed |= {ck, *ck.parents, ck / "checkpoint.pt", ck / ".checkpoint.lock"}
            assert made <= allowed, (argv, made - allowed)
        else:
            assert code == 2, (argv, code, err)
            assert err.count("\n") == 1 and err.startswith("error: "), (argv, err)
            assert made == set(), (argv, made)  # refused before any work: no record, no checkpoint, no folder
    assert {p: p.stat().st_mtime_ns for p in (REPO / "results").rglob("*")} == results_before


@st.composite
def refused_vectors(draw):
    """bench and replicate with at least one bad value (a valid one would time full epochs)."""
    command = draw(st.sampled_from(["bench", "replicate"]))
    options = {"--epochs": NUMBERS["--epochs"], "--batch-size": NUMBERS["--batch-size"], "--lr": NUMBERS["--lr"],
               "--device": DEVICES, "--data-dir": DATA}
    if command == "bench":
        options.update({"--rounds": (["1"], ["0", "1001", "x"]), "--out": OUT, "--seed": NUMBERS["--seed"]})
    else:
        options.update({"--seeds": (["1"], ["0", "1001", "x"]), "--out-dir": (["out"], ["", "file.txt", "y" * 300]),
                        "--first-seed": (["0"], ["-1", "4294967296"])})
    bad = draw(st.sampled_from(sorted(options)))
    argv = [command, bad, draw(st.sampled_from(options[bad][1]))]
    for option in sorted(options):
        if option != bad and draw(st.booleans()):
            argv += [option, draw(st.sampled_from(options[option][0] + options[option][1]))]
    if "--device" not in argv:
        argv += ["--device", "cpu"]
    if "--out" not in argv and "--out-dir" not in argv:
        argv += ["--out" if command == "bench" else "--out-dir", "out/r.json" if command == "bench" else "out"]
    return argv + ["--quiet"]


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(argv=refused_vectors())
def test_bench_and_replicate_refuse_bad_input_in_one_line_before_any_work(argv):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        code, _, err = run_in(root, argv, str(locate().root))
        assert code == 2 and "Traceback" not in err, (argv, code, err)
        assert err.count("\n") == 1 and err.startswith("error: "), (argv, err)
        assert sandbox_files(root) == {Path("folder"), Path("file.txt")}, argv
