"""One-off: rewrite every committed hdr-run/1 record under results/ as hdr-run/2, then check that every value
survived. Run once (it was, at the commit that added it); kept so that the change can be read and re-checked.

    python scripts/migrate_records_v2.py [--results results] [--check-only]

What changes, and nothing else:
- `schema` "hdr-run/1" -> "hdr-run/2".
- `config.amp` true/false (bfloat16 on/off, before float16 came) -> "bf16"/"off".
- `config.channels_last` and `config.tf32` (options removed from the code; every record holds false) are dropped.
- `config.framework` is added as "pytorch" to PyTorch train and bench records (Keras records already name theirs).
- `execution.cpu_step` / `execution.cuda_kernels` stored as a sentence (records made before the short keys) ->
  the key (hdr_lib.fast.CPU_STEPS / CUDA_KERNELS), by a phrase of that sentence.
- `environment.session` where missing (records made before sessions were kept) -> "commit <7 hex>, <YYYY-MM-DD>"
  from the record's own git commit and date: what the book showed as their session before.
The check flattens old and new records and demands that every other value is there, unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OLD_CPU_STEPS = (("native:", "native"), ("train_step:", "explicit"), ("torch.compile", "compiled"),
                 (".forward with autograd", "forward"), ("the module's forward with autograd", "module"))
OLD_CUDA_KERNELS = (("Triton kernels", "triton"), ("PyTorch's own CUDA kernels", "aten"))
REMOVED = ("channels_last", "tf32")


def step_key(value, table):
    if not isinstance(value, str) or " " not in value:
        return value
    key = next((key for phrase, key in table if phrase in value), None)
    if key is None:
        raise SystemExit(f"no key for step sentence {value[:80]!r}")
    return key


def migrate(record: dict) -> dict:
    new = json.loads(json.dumps(record))
    if new.get("schema") == "hdr-run/2":
        return new
    assert new["schema"] == "hdr-run/1", new["schema"]
    new["schema"] = "hdr-run/2"
    config, env = new["config"], new["environment"]
    if isinstance(config.get("amp"), bool):
        config["amp"] = "bf16" if config["amp"] else "off"
    for key in REMOVED:
        if key in config:
            assert config[key] is False, f"{key} is {config[key]!r}: not a removed default"
            del config[key]
    if new.get("kind", "train") in ("train", "bench") and "framework" not in config:
        config["framework"] = "pytorch"
    execution = new.get("execution")
    if isinstance(execution, dict):
        for part, table in (("cpu_step", OLD_CPU_STEPS), ("cuda_kernels", OLD_CUDA_KERNELS)):
            if part in execution:
                execution[part] = step_key(execution[part], table)
    if not env.get("session"):
        env["session"] = f"commit {str(env.get('git_commit') or 'unknown')[:7]}, {str(env.get('created_at', '?'))[:10]}"
    return new


def flat(value, prefix=()):
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flat(item, prefix + (key,)))
        return out or {prefix: {}}
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(flat(item, prefix + (i,)))
        return out or {prefix: []}
    return {prefix: value}


def check(old: dict, new: dict) -> list[str]:
    """Every difference between `old` and `new` that the migration does not explain; [] when all values survived."""
    a, b = flat(old), flat(new)
    problems = []
    for key, value in a.items():
        if key == ("schema",):
            ok = b.get(key) == "hdr-run/2"
        elif key == ("config", "amp") and isinstance(value, bool):
            ok = b.get(key) == ("bf16" if value else "off")
        elif key[:1] == ("config",) and key[1:] in (("channels_last",), ("tf32",)):
            ok = value is False and key not in b
        elif key in (("execution", "cpu_step"), ("execution", "cuda_kernels")) and isinstance(value, str) and " " in value:
            ok = b.get(key) == step_key(value, OLD_CPU_STEPS if key[1] == "cpu_step" else OLD_CUDA_KERNELS)
        else:
            ok = key in b and b[key] == value and type(b[key]) is type(value)
        if not ok:
            problems.append(f"{'.'.join(map(str, key))}: {value!r} -> {b.get(key, '<missing>')!r}")
    for key in set(b) - set(a):
        if key not in (("config", "framework"), ("environment", "session")):
            problems.append(f"{'.'.join(map(str, key))}: added {b[key]!r}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(Path(__file__).resolve().parents[1] / "results"))
    parser.add_argument("--check-only", action="store_true", help="migrate in memory and check; write nothing")
    args = parser.parse_args(argv)
    failures = 0
    paths = sorted(Path(args.results).rglob("*.json"))
    for path in paths:
        old = json.loads(path.read_text())
        new = migrate(old)
        problems = check(old, new)
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        failures += bool(problems)
        if not args.check_only and not problems and new != old:
            path.write_text(json.dumps(new, indent=1, allow_nan=False) + "\n")
    print(f"{len(paths)} records, {failures} with a value that did not survive")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
