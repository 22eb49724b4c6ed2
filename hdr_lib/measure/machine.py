"""The machine a run uses: device choice, provenance (hardware, versions, commit), and resource instruments."""

from __future__ import annotations

import datetime as _dt
import os
import secrets
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from hdr_lib import settings
from hdr_lib.validation import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU is a ConfigError that says what exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "device 'cuda' was requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}, {'built without CUDA' if torch.version.cuda is None else 'no GPU visible'}); "
                "only 'cpu' exists here. Choose device 'cpu' (or 'auto', which picks the GPU where there is one)."
            )
        return torch.device("cuda")
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"device must be one of cpu, cuda, auto; got {name!r}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The /proc/cpuinfo flags that decide how fast reduced precision can run on the CPU: the vector width (AVX2,
# AVX-512), the instructions that compute in bfloat16 (AVX512_BF16, AMX-BF16), float16 (AVX512_FP16, AMX-FP16),
# and int8 dot products (VNNI); F16C converts float16 only.
PRECISION_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                   "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16", "amx_int8")


def cpu_flags(names: tuple[str, ...] = PRECISION_FLAGS) -> dict | None:
    """Which of `names` the CPU has, from /proc/cpuinfo's flags (None where there is no /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return {name: name in have for name in names}
    except OSError:
        pass
    return None


def git_commit(root: Path | None = None) -> str | None:
    """The commit of the checkout hdr_lib runs from (or of `root`), '+dirty' when it has uncommitted changes;
    None outside git.

    Changes under results/ do not count: they are the records themselves, so the second of several runs made
    one after another (`replicate`, say) would otherwise be marked dirty by the first one's record."""
    root = Path(__file__).resolve().parents[2] if root is None else Path(root)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return settings.name("HDR_GIT_COMMIT")


def gpu_info(device: torch.device | None = None) -> dict | None:
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(device)
    info = {
        "name": props.name,
        "memory_total_bytes": props.total_memory,
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "driver": None,
    }
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        info["driver"] = driver.decode() if isinstance(driver, bytes) else driver
    except Exception as exc:  # nvidia-ml-py missing or NVML unusable: say so
        info["driver_unavailable"] = f"{type(exc).__name__}: {exc}"
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                info["driver"] = out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def environment(device: torch.device | None = None) -> dict:
    """Everything a record needs to say where and with what it was made."""
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cpu_flags": cpu_flags(),  # the instruction sets reduced precision depends on (PRECISION_FLAGS)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the widest vector code ATen dispatches to
        "gpu": gpu_info(device),
        "cuda_available": torch.cuda.is_available(),
        "git_commit": git_commit(),
        "hostname_hash": _host_hash(),
        # The timing session: $HDR_SESSION (a script's several commands), else this process's start (one
        # `replicate` or `bench` invocation). The book shows sessions apart or says that it pools them.
        "session": settings.name("HDR_SESSION") or SESSION,
        # How busy the machine was when the record was made (1, 5 and 15 minute averages of runnable processes):
        # a timing made beside other work is slower, and the record says so rather than being dropped.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# When this process started, its pid and a random part: two invocations started in the same second are two sessions.
SESSION = (f"{_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}-pid{os.getpid()}-"
           f"{secrets.token_hex(3)}")


def _host_hash() -> str:
    import hashlib

    return hashlib.sha256(platform.node().encode()).hexdigest()[:12]


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports kilobytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class CpuMeter:
    """CPU utilisation of this process over a span: CPU seconds / (wall seconds x cores)."""

    def __init__(self):
        self.cpu0 = time.process_time()
        self.wall0 = time.perf_counter()

    def read(self) -> dict:
        cpu = time.process_time() - self.cpu0
        wall = time.perf_counter() - self.wall0
        cores = os.cpu_count() or 1
        return {
            "process_cpu_seconds": cpu,
            "wall_seconds": wall,
            "cores": cores,
            "utilisation_percent": 100.0 * cpu / (wall * cores) if wall > 0 else None,
        }


class NvmlSampler:
    """Samples GPU utilisation and used memory through NVML in a background thread.

    `result()` gives the samples' summary, or null fields with the reason NVML could not be read.
    """

    def __init__(self, device: torch.device, period_s: float = 0.05):
        self.period_s = period_s
        self.samples_util: list[int] = []
        self.samples_mem: list[int] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = None
        self._handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._pynvml = pynvml
        except Exception as exc:
            self.error = f"NVML unavailable: {type(exc).__name__}: {exc}"

    def __enter__(self):
        if self._handle is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        nv = self._pynvml
        while not self._stop.is_set():
            try:
                self.samples_util.append(nv.nvmlDeviceGetUtilizationRates(self._handle).gpu)
                self.samples_mem.append(nv.nvmlDeviceGetMemoryInfo(self._handle).used)
            except Exception as exc:
                self.error = f"NVML read failed: {type(exc).__name__}: {exc}"
                return
            self._stop.wait(self.period_s)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def result(self) -> dict:
        n = len(self.samples_util)
        if n == 0:
            reason = self.error or "no NVML sample was taken (the span was shorter than one period)"
            return {"utilisation_mean_percent": None, "utilisation_max_percent": None,
                    "utilisation_p10_percent": None, "memory_used_max_bytes": None, "memory_used_mean_bytes": None, "sample_period_s": self.period_s, "sample_count": 0,
                    "reason": reason}
        return {
            "utilisation_mean_percent": sum(self.samples_util) / n,
            "utilisation_max_percent": max(self.samples_util),
            # "consistently above" (§4.3) is a low percentile of the samples, not their mean
            "utilisation_p10_percent": percentile(self.samples_util, 10),
            "memory_used_max_bytes": max(self.samples_mem),
            # "averaged around" (§4.3): the mean of the memory samples, beside the peak
            "memory_used_mean_bytes": sum(self.samples_mem) / len(self.samples_mem),
            "sample_period_s": self.period_s,
            "sample_count": n,
            "reason": self.error,
        }


def percentile(values: list, q: float) -> float:
    """The q-th percentile (0..100) of `values`, linear between the two nearest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


UNRECORDED = "instructions not recorded"


def vector_isa(flags: dict | None) -> str:
    """The widest vector instructions of `environment.cpu_flags`: "AVX-512", "AVX2", "no AVX2", or UNRECORDED for
    a record that kept no flags (never guessed: two virtual machines that both say "AMD EPYC" ran 6x apart)."""
    if not flags:
        return UNRECORDED
    return "AVX-512" if flags.get("avx512f") else "AVX2" if flags.get("avx2") else "no AVX2"


def machine_label(record: dict) -> str:
    """The one label of the machine a record ran on, the same on every page: the CPU model, its vector
    instructions and the threads it ran with; on CUDA the GPU's name and its host CPU; in a browser the framework
    and the browser's hardware concurrency. A CPU run limited below its CPU's widest instructions
    (ATEN_CPU_CAPABILITY) is a machine of its own. Records without flags are their own machine ("instructions not
    recorded"), never merged with one that has them."""
    env, config = record["environment"], record["config"]
    cpu = env.get("cpu") or "unknown CPU"
    if str(config.get("framework", "")).startswith("tfjs"):
        return f"browser, {config['framework']} ({env.get('hardware_concurrency', '?')} threads)"
    if config.get("device") == "cuda":
        return f"{(env.get('gpu') or {}).get('name', 'unknown GPU')} (host {cpu})"
    isa = vector_isa(env.get("cpu_flags"))
    limit = env.get("cpu_capability")  # PyTorch's own choice, narrower under ATEN_CPU_CAPABILITY=avx2 (imitation)
    if isa == "AVX-512" and limit and limit.upper() != "AVX512":
        isa = f"AVX-512 limited to {limit}"  # an AVX2 machine imitated on an AVX-512 one: a machine of its own
    return f"{cpu}, {isa} ({env.get('threads', '?')} threads)"
