"""The chapter notebooks through papermill: bad parameters stop them at the parameter check with a clear
message; one chapter runs end to end; the book runner names a notebook that fails."""

import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def execute(name, tmp_path, **parameters):
    out = tmp_path / name
    pm.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=parameters, cwd=str(NOTEBOOKS),
                        kernel_name="python3", progress_bar=False)
    return nbformat.read(out, as_version=4)


def test_every_chapter_has_a_parameters_cell_followed_by_the_check():
    names = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    assert len(names) == 11
    for name in names:
        cells = nbformat.read(NOTEBOOKS / name, as_version=4).cells
        index = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
        assert "nb.check_parameters(" in cells[index + 1].source, name
        for cell in cells:
            checked = cell.source.startswith("# NBVAL_CHECK_OUTPUT")
            if cell.cell_type == "code" and not checked:
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: committed output"


BAD = [
    ({"epochs": -1}, "parameter epochs must be an integer from 1 to 1,000"),
    ({"batch_size": 0}, "parameter batch_size must be an integer from 1 to 60,000"),
    ({"lr": "abc"}, "got 'abc'; pass it unquoted"),
    ({"lr": float("nan")}, "parameter lr must be a number greater than 0"),
    ({"lr": -0.1}, "parameter lr must be a number greater than 0 and at most 1e+06"),
    ({"epochs": "20"}, "got '20'; pass it unquoted"),
    ({"device": "gpu"}, "device must be one of cpu, cuda, auto; got 'gpu'"),
]
if not torch.cuda.is_available():
    BAD.append(({"device": "cuda"}, "CUDA is not available on this machine"))


@pytest.mark.slow  # starts a kernel
@pytest.mark.parametrize("parameters, message", BAD, ids=[str(p) for p, _ in BAD])
def test_bad_parameters_stop_the_notebook_at_the_check(parameters, message, tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as caught:
        execute("05_training_time.ipynb", tmp_path, cache_dir=str(tmp_path / "cache"), **parameters)
    assert caught.value.ename == "ConfigError"
    assert message in caught.value.evalue
    # It failed in the cell right after the (injected) parameters, before any data or training.
    cells = nbformat.read(tmp_path / "05_training_time.ipynb", as_version=4).cells
    failed = [c for c in cells if any(o.output_type == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and failed[0].source.startswith("config = nb.check_parameters(")
    code = [c for c in cells if c.cell_type == "code"]
    assert "injected-parameters" in code[code.index(failed[0]) - 1].metadata.tags
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow  # starts a kernel
def test_training_time_chapter_runs_end_to_end_with_one_epoch(tmp_path, data_root):
    results = tmp_path / "results"  # empty: the chapter must say the GPU is not yet measured
    results.mkdir()  # a folder that does not exist stops the chapter at its check (test_hostile)
    nb = execute("05_training_time.ipynb", tmp_path, epochs=1, device="cpu", results_dir=str(results),
                 cache_dir=str(tmp_path / "cache"), data_dir=str(data_root))
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "epoch  1/1" in text and "No GPU run is recorded yet" in text
    missing = next(line for line in text.splitlines() if "not yet measured** on either path" in line)
    assert "Speedup" in missing and missing.count("not yet measured") == 1  # the GPU claims, said once
    assert "Verdict, from the records" in text  # the chapter ends with its verdict, rendered from (no) records
    assert len(list((tmp_path / "cache").glob("cpu-fast-e1-b64-seed0-*.json"))) == 1


@pytest.mark.slow  # starts a kernel
def test_runner_names_the_failing_notebook_and_exits_1(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebooks.py"), "--only", "01",
                             "-p", "batch_size", "0", "--output-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 1
    assert "FAILED 01_introduction.ipynb" in result.stderr
    assert "batch_size must be an integer from 1 to 60,000" in result.stderr


@pytest.mark.slow  # starts a kernel
@pytest.mark.parametrize("where", ["missing", "file", "bad-record"])
@pytest.mark.parametrize("notebook", ["notebooks/08_discussion.ipynb", "book/scorecard.ipynb"])
def test_a_bad_results_dir_stops_the_page_at_its_check_cell(notebook, where, tmp_path):
    folder = {"missing": tmp_path / "nope", "file": ROOT / "README.md", "bad-record": tmp_path / "bad"}[where]
    if where == "bad-record":
        folder.mkdir()
        (folder / "x.json").write_text('{"schema": "hdr-run/2", "kind": "train", "config": "cpu"}')
    message = {"missing": "does not exist", "file": "is not a folder", "bad-record": "x.json: field"}[where]
    out = tmp_path / "out.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as caught:
        pm.execute_notebook(str(ROOT / notebook), str(out), parameters={"results_dir": str(folder)},
                            cwd=str(ROOT / Path(notebook).parent), kernel_name="python3", progress_bar=False)
    assert caught.value.ename == "ConfigError" and message in caught.value.evalue
    assert "\n" not in caught.value.evalue
    failed = [c for c in nbformat.read(out, as_version=4).cells
              if any(o.output_type == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and "check_parameters(" in failed[0].source
