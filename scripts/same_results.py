"""Whether two commits give the same numbers: one epoch per training way, seed 0, on the CPU, through the CLI.

    python scripts/same_results.py run [COMMIT]      # -> results/same-results/<commit>.json (default: HEAD)
    python scripts/same_results.py compare OLD NEW   # exit 0 when every way's losses and accuracy are identical

`run` checks the commit out in a temporary worktree and trains there with `python -m hdr_lib train`, whose commands
and options every commit keeps: the fast path (the step this CPU uses), the fast path with the native step forced
(HDR_NATIVE=1) and the reference path. The record holds each way's per-epoch train loss, test accuracy and step
kind, written as float.hex so that "identical" means bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WAYS = {"fast": (["--path", "fast"], {}), "fast-native": (["--path", "fast"], {"HDR_NATIVE": "1"}),
        "reference": (["--path", "reference"], {})}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def run(commit: str) -> Path:
    full = _git("rev-parse", commit)
    out = REPO / "results" / "same-results" / f"{full[:7]}.json"
    result = {"schema": "hdr-run/2", "kind": "same-results", "config": {"epochs": 1, "seed": 0, "device": "cpu"},
              "environment": {"git_commit": full, "session": f"same-results {full[:7]}"}, "epochs": [], "status": "complete", "commit": full, "ways": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        _git("worktree", "add", "--detach", str(tree), full)
        try:
            for way, (args, env) in WAYS.items():
                record_path = Path(tmp) / f"{way}.json"
                subprocess.run([sys.executable, "-m", "hdr_lib", "train", "--device", "cpu", "--epochs", "1",
                                "--seed", "0", "--quiet", "--out", str(record_path), *args], cwd=tree, check=True,
                               env={**os.environ, "PYTHONPATH": str(tree), **env})
                record = json.loads(record_path.read_text())
                result["ways"][way] = {
                    "train_loss": [float(e["train_loss"]).hex() for e in record["epochs"]],
                    "test_accuracy": [float(e["test_accuracy"]).hex() for e in record["epochs"]],
                    "cpu_step": record["execution"].get("cpu_step"),
                    "torch": record["environment"]["torch"], "threads": record["environment"]["threads"]}
                result["environment"] = {**record["environment"], "git_commit": full}
        finally:
            _git("worktree", "remove", "--force", str(tree))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{full[:7]}: {out}")
    return out


def compare(old: str, new: str) -> int:
    folder = REPO / "results" / "same-results"
    a, b = (json.loads((folder / f"{_git('rev-parse', c)[:7]}.json").read_text()) for c in (old, new))
    same = True
    for way in WAYS:
        x, y = a["ways"][way], b["ways"][way]
        equal = x["train_loss"] == y["train_loss"] and x["test_accuracy"] == y["test_accuracy"]
        same &= equal
        print(f"{way:>12}: {'identical' if equal else 'DIFFERENT'} (loss {float.fromhex(x['train_loss'][0]):.10f} "
              f"vs {float.fromhex(y['train_loss'][0]):.10f}, accuracy {float.fromhex(x['test_accuracy'][0])} vs "
              f"{float.fromhex(y['test_accuracy'][0])})")
    return 0 if same else 1


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "run":
        run(sys.argv[2] if len(sys.argv) > 2 else "HEAD")
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        sys.exit(2)
