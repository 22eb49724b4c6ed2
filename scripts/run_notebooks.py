"""Run every chapter notebook through papermill with the parameters you pass; stop at the first that fails.

    python scripts/run_notebooks.py -p epochs 1 --output-dir _build/papermill
    python scripts/run_notebooks.py -p device cpu -p epochs 2 --only 05 06

Values are read as papermill's own `-p` reads them (1 -> int, 0.01 -> float, abc -> str), so a typo reaches
the notebook's parameter check and is reported there. Exit status: 0 all ran, 1 a notebook failed (named),
2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def parse_value(text: str):
    """The same reading papermill's command line gives `-p NAME VALUE`."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(text, text)


def chapters(only: list[str] | None) -> list[Path]:
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.name.startswith(prefix) for prefix in only)]
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a notebook parameter, e.g. -p epochs 1 (repeatable)")
    parser.add_argument("--output-dir", default=str(ROOT / "_build" / "papermill"),
                        help="where the executed notebooks go (default: %(default)s)")
    parser.add_argument("--only", nargs="+", metavar="PREFIX", help="run only these chapters, e.g. --only 02 05")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell (default %(default)s)")
    args = parser.parse_args(argv)

    import papermill as pm

    parameters = {name: parse_value(value) for name, value in args.parameter}
    paths = chapters(args.only)
    if not paths:
        parser.error(f"no notebook in {NOTEBOOKS} matches {args.only}")
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"running {len(paths)} notebook(s) with {parameters or 'their default (paper) parameters'} -> {out_dir}")
    for path in paths:
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(path), str(out_dir / path.name), parameters=parameters, cwd=str(NOTEBOOKS),
                                kernel_name="python3", progress_bar=False, execution_timeout=args.timeout)
        except pm.PapermillExecutionError as exc:
            print(f"FAILED {path.name} (cell {exc.exec_count}): {exc.ename}: {exc.evalue}\n"
                  f"  the executed notebook, with the traceback, is {out_dir / path.name}", file=sys.stderr)
            return 1
        print(f"ok     {path.name} in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
