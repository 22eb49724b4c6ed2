"""What the CUDA step's Triton kernels cost, read off their machine code, on a machine without a GPU.

Compiles hdr_lib/fast/triton_kernels.py for an NVIDIA architecture (default sm_90, the H100) with the ptxas and cuobjdump
that ship with Triton, and prints per kernel: registers, spill stack, and the machine instructions by kind. Every
loop of sample_kernel is unrolled (tl.static_range), so its instruction count is what each of its threads executes
per image: a count, not a timing (scripts/cuda_kernel_times.py times the kernels on a GPU).

    PYTHONPATH=. python scripts/triton_sass_counts.py [--arch 90] [--warps 8]
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

POINTERS = ("x_ptr", "w1", "b1", "w2", "b2", "f1w", "f1b", "f2w", "f2b", "f3w", "f3b", "s_ptr")
SAMPLE = {**{name: "*fp32" for name in POINTERS}, "y_ptr": "*i64", "idx_ptr": "*i64", "i_ptr": "*i32",
          "inv_n": "fp32"}
UPDATE = {"s_ptr": "*fp32", "u_ptr": "*i32", "v_ptr": "*i32", "p_ptr": "*fp32", "buf_ptr": "*fp32",
          "lr_ptr": "*fp32", "loss_ptr": "*fp32", "g_ptr": "*fp32", "n_samples": "i32", "n_params": "i32",
          "momentum": "fp32", "STORE_GRAD": "constexpr"}
SHOWN = ("FFMA", "FADD", "FMUL", "LDG", "STG", "LDS", "STS", "LDL", "STL", "SHFL", "BAR")


def compile_kernels(arch: int, sample_warps: int) -> dict[str, bytes]:
    """Each kernel's cubin, as Triton builds it for the GPU (TRITON_INTERPRET must be unset)."""
    from hdr_lib.fast import triton_kernels as k

    target = GPUTarget("cuda", arch, 32)
    out = {}
    for fn, signature, constants, warps in ((k.sample_kernel, SAMPLE, {}, sample_warps),
                                            (k.update_kernel, UPDATE, {"STORE_GRAD": False}, 4)):
        signature = {name: signature[name] for name in fn.arg_names}
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constants), target=target,
                                  options={"num_warps": warps})
        out[f"{fn.__name__} ({warps} warps)"] = compiled.asm["cubin"]
    return out


def counts(cubin: bytes) -> tuple[str, collections.Counter]:
    """The resource line cuobjdump prints (registers, stack) and the instructions by opcode."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        usage = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([str(tool), "--dump-sass", str(path)], capture_output=True, text=True,
                              check=True).stdout
    resources = next((line.strip() for line in usage.splitlines() if "REG:" in line), "?")
    opcodes = collections.Counter(m.group(1).split(".")[0]
                                  for m in re.finditer(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)",
                                                       sass, re.M))
    return resources, opcodes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90, the H100)")
    parser.add_argument("--warps", type=int, default=8, choices=(1, 2, 4, 8, 16, 32),
                        help="sample_kernel's warps per image (default 8, as hdr_lib.fast.triton_step launches it)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("triton_sass_counts: unset TRITON_INTERPRET (the interpreter compiles nothing)", file=sys.stderr)
        return 2
    for name, cubin in compile_kernels(args.arch, args.warps).items():
        resources, opcodes = counts(cubin)
        shown = ", ".join(f"{op} {opcodes[op]:,}" for op in SHOWN)
        print(f"{name} for sm_{args.arch}: {sum(opcodes.values()):,} instructions ({shown}); {resources}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
