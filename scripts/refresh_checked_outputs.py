"""Execute notebooks and keep only the outputs nbval checks (cells whose first line is `# NBVAL_CHECK_OUTPUT`).

Run it after editing chapters 02-04, so the committed reference outputs match the code:
    HDR_DATA_DIR=/path/to/data python scripts/refresh_checked_outputs.py notebooks/02_dataset.ipynb ...
Every other output and execution count is removed, so the notebooks stay free of build noise. A checked cell
gets the fixed execution count 1: nbval refuses a reference output whose cell looks never run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

MARK = "# NBVAL_CHECK_OUTPUT"


def refresh(path: Path, timeout: int = 300) -> int:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent.resolve())}}).execute()
    kept = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        if cell.source.startswith(MARK):
            kept += 1
            cell.execution_count = 1
            for output in cell.outputs:
                if "execution_count" in output:
                    output.execution_count = 1
        else:
            cell.execution_count = None
            cell.outputs = []
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args()
    for path in args.notebooks:
        print(f"{path}: kept the outputs of {refresh(path)} checked cell(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
