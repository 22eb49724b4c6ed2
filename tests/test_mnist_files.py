"""Where MNIST is looked for (one rule for the CLI, the API and the chapters) and what is said when it is not
there; the checksums themselves are tested through the loader in test_data.py."""

import pytest

from hdr_lib import mnist_files
from hdr_lib.mnist_files import DataError, raw_folder


def test_one_rule_for_where_mnist_is(tmp_path, monkeypatch, data_root):
    monkeypatch.setenv("HDR_DATA_DIR", "rel/mnist")
    monkeypatch.setenv("PWD", str(tmp_path))  # the folder the command was typed in
    location = mnist_files.locate()
    assert location.root == tmp_path / "rel" / "mnist" and location.source == "$HDR_DATA_DIR"
    assert not location.may_download  # a folder the user named is read, never downloaded into or created
    with pytest.raises(DataError, match=f"{tmp_path / 'rel' / 'mnist'}.*from \\$HDR_DATA_DIR"):
        mnist_files.ensure_mnist()
    assert not (tmp_path / "rel").exists()
    assert mnist_files.locate(tmp_path / "x").source == "argument"  # --data-dir, a notebook's data_dir: first
    monkeypatch.delenv("HDR_DATA_DIR")
    expected = "../shared/data" if raw_folder(mnist_files.SHARED_DIR).is_dir() else "default"
    assert mnist_files.locate().source == expected
    monkeypatch.setattr(mnist_files, "SHARED_DIR", tmp_path / "no-shared")
    default = mnist_files.locate()
    assert default == mnist_files.DataLocation(mnist_files.DOWNLOAD_DIR, "default") and default.may_download


@pytest.mark.slow  # runs a chapter through papermill
def test_relative_hdr_data_dir_is_taken_from_the_folder_it_was_given_in(tmp_path, data_root):
    # The CLI and a chapter run by papermill from another folder, with HDR_DATA_DIR relative to where the
    # command was typed (the kernel itself runs in notebooks/): both find the same MNIST.
    import os
    import subprocess
    import sys

    import papermill as pm

    from conftest import REPO

    relative = os.path.relpath(data_root, tmp_path)
    env = {**os.environ, "HDR_DATA_DIR": relative, "PWD": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "hdr_lib", "data"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / relative) in done.stdout and "from $HDR_DATA_DIR" in done.stdout
    old = dict(os.environ)
    os.environ.update(HDR_DATA_DIR=relative, PWD=str(tmp_path))
    try:
        pm.execute_notebook(str(REPO / "notebooks" / "02_dataset.ipynb"), str(tmp_path / "02.ipynb"),
                            cwd=str(REPO / "notebooks"), kernel_name="python3", progress_bar=False)
    finally:
        os.environ.clear()
        os.environ.update(old)
