"""MNIST's four raw files: where they are (one rule: an argument, $HDR_DATA_DIR, ../shared/data beside the
checkout, or data/ of the repository, the only folder torchvision may download into), and whether they are
the original ones (SHA-256). Every problem is a DataError of one line naming the file and the fix."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from hdr_lib.paths import REPOSITORY

ENV_VAR = "HDR_DATA_DIR"
SHARED_DIR = REPOSITORY.parent / "shared" / "data"  # ../shared/data beside the checkout, where it holds MNIST
DOWNLOAD_DIR = REPOSITORY / "data"  # the only folder torchvision may download into (ignored by git)

# SHA-256 of the four original MNIST files, uncompressed, under torchvision's names.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


class DataError(RuntimeError):
    """MNIST is missing, corrupt or truncated; the message names the file and says how to fix it."""


@dataclass(frozen=True)
class DataLocation:
    """Where MNIST is looked for, and why there: `source` is "argument", "$HDR_DATA_DIR", "../shared/data" or
    "default"; only the default folder (data/ of the repository) may be downloaded into."""

    root: Path
    source: str

    @property
    def may_download(self) -> bool:
        return self.source == "default"

    @property
    def why(self) -> str:
        """Why MNIST is looked for here, in words."""
        return {"argument": "given as the data folder", "$" + ENV_VAR: "from $" + ENV_VAR,
                "../shared/data": "../shared/data beside the checkout",
                "default": "the default, data/ of the repository"}[self.source]


def absolute(value: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
    """A path as the user meant it: `~` expanded and, when relative, taken against `base`, else against the folder
    the command was typed in (the shell's $PWD, which a program started from there inherits even after it changes
    its own working folder, as a notebook kernel does), else the working folder."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    if base is None:
        shell = os.environ.get("PWD")
        base = shell if shell and os.path.isabs(shell) and os.path.isdir(shell) else os.getcwd()
    return Path(base) / path


def locate(root: str | os.PathLike | None = None) -> DataLocation:
    """The one rule for where MNIST is: the argument (the CLI's --data-dir, a notebook's data_dir), else
    $HDR_DATA_DIR, else ../shared/data beside the checkout when it holds MNIST/raw, else data/ of the repository
    (where torchvision downloads MNIST if a network allows). Relative paths are made absolute (`absolute`)."""
    if root is not None:
        if not isinstance(root, (str, os.PathLike)) or not os.fspath(root) or "\0" in os.fspath(root):
            raise DataError(f"the MNIST data folder must be a non-empty path, got {root!r}")
        return DataLocation(absolute(root), "argument")
    if os.environ.get(ENV_VAR):
        return DataLocation(absolute(os.environ[ENV_VAR]), "$" + ENV_VAR)
    if raw_folder(SHARED_DIR).is_dir():
        return DataLocation(SHARED_DIR, "../shared/data")
    return DataLocation(DOWNLOAD_DIR, "default")


def data_dir(root: str | os.PathLike | None = None) -> Path:
    """The torchvision root that holds MNIST/raw, by the rule of `locate`."""
    return locate(root).root


def raw_folder(root: Path) -> Path:
    return root / "MNIST" / "raw"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_verified: dict[tuple, bool] = {}


def verify_raw(root: Path, checksums: dict[str, str] = MNIST_SHA256, location: DataLocation | None = None) -> None:
    """Check that every raw file exists and matches its SHA-256; raise DataError naming the first that does not."""
    folder = raw_folder(root)
    for name, expected in checksums.items():
        path = folder / name
        try:
            if not path.is_file():
                raise DataError(_missing_message(location or DataLocation(Path(root), "argument"), path))
            stat = path.stat()
            key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, expected)
            if _verified.get(key):
                continue
            actual = _sha256(path)
        except OSError as exc:  # no permission, an I/O error: one line naming the file
            raise DataError(f"cannot read MNIST file {path}: {exc.strerror or exc}; make it readable "
                            f"(chmod a+r) or point to another copy") from exc
        if actual != expected:
            raise DataError(
                f"MNIST file {path} is corrupt or truncated: its SHA-256 is {actual[:16]}..., "
                f"expected {expected[:16]}... ({stat.st_size:,} bytes on disk). Delete it and download "
                f"MNIST again, or point {ENV_VAR} at a good copy."
            )
        _verified[key] = True


def _missing_message(location: DataLocation, path: Path) -> str:
    tried = "; torchvision could not download it (no network?)" if location.may_download else ""
    return (f"MNIST not found: looked for {path} (data folder {location.root}, {location.why}){tried}. "
            f"Point {ENV_VAR} (or --data-dir, or a notebook's data_dir) at a folder that holds MNIST/raw/ with the "
            f"four IDX files, e.g. ../shared/data.")


def ensure_mnist(root: str | os.PathLike | None = None, *, download: bool = True,
                 checksums: dict[str, str] = MNIST_SHA256) -> Path:
    """Return the verified data root. Only the default folder (data/ of the repository) is downloaded into, through
    torchvision, where files are missing; a folder the user named is only read, never created."""
    location = locate(root)
    folder = raw_folder(location.root)
    if download and location.may_download and not all((folder / name).is_file() for name in checksums):
        try:
            from torchvision.datasets import MNIST

            MNIST(root=str(location.root), train=True, download=True)
            MNIST(root=str(location.root), train=False, download=True)
        except Exception:  # no network, no permission: report below as "not found"
            pass
    verify_raw(location.root, checksums, location)
    return location.root
