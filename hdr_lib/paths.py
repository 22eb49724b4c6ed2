"""Paths a user gives: output files and folders checked before any work, every OSError on them as one clear line;
the checkout's own folder (`REPOSITORY`); and the lock that keeps what a run writes (`WriteLock`), a checkpoint
folder among them (`FolderLock`), to one run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no folder lock (the record says nothing of it; Linux is where runs are made)
    fcntl = None

from hdr_lib.validation import ConfigError


RECORD_MAX_BYTES = 64 * 2**20  # a run record is a few kB; anything larger at --out is not one
REPOSITORY = Path(__file__).resolve().parent.parent  # the checkout hdr_lib runs from (installed with pip -e)
LOCK_NAME = ".checkpoint.lock"  # in a checkpoint folder: the run that holds it (FolderLock)


class PathError(ConfigError):
    """A path a user gave that cannot be used; the message names it (and the option or parameter) and what to do."""


def _text(value, label: str) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise PathError(f"{label} must be a path, got {value!r}")
    text = os.fspath(value)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.strip() == "":
        raise PathError(f"{label} is empty; give a file or folder name")
    if "\0" in text:
        raise PathError(f"{label} {text!r} contains a NUL character; give an ordinary path")
    return text


def _limits(path: Path) -> tuple[int, int]:
    """The longest file name and path this system takes where `path` would live (255 and 4096 where unknown)."""
    existing = _nearest_existing(path)
    try:
        return os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def _check_lengths(path: Path, label: str, spare: int = 0) -> None:
    name_max, path_max = _limits(path)
    for part in path.parts:
        if len(os.fsencode(part)) + spare > name_max:
            raise PathError(f"{label}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes long; this file "
                            f"system takes at most {name_max - spare}; choose a shorter name")
    if len(os.fsencode(str(path.absolute()))) + spare > path_max:
        raise PathError(f"{label}: the path is longer than this system's limit of {path_max} bytes; choose a "
                        f"shorter one")


def _check_folder_chain(folder: Path, label: str, shown: Path | None = None) -> None:
    """Every existing part of `folder` must be a folder we can write into (tried, not guessed: root passes
    os.access everywhere, yet cannot write to /proc or a read-only mount)."""
    existing, shown = _nearest_existing(folder), shown or folder
    if not existing.is_dir():
        raise PathError(f"{label} {shown}: {existing} is a file, not a folder; choose a path under a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".hdr-write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PathError(f"{label} {shown}: cannot write in {existing} ({exc.strerror or exc}); choose a "
                        f"folder you can write to") from exc


def output_file(value, label: str, kind: str | None = None) -> Path:
    """A file the run will write (a record): refused now if it is empty, a folder, lies under a file, has a
    name too long, sits where nothing can be written, or is an existing file that is not a run record. An existing
    record is replaced only when it is an unfinished one ("incomplete") of the same `kind` ("train", "bench"; any
    kind when None): a finished record, or another kind's, is kept and the run refused (`kept_record`)."""
    path = Path(_text(value, label))
    _check_lengths(path, label, spare=16)  # the temporary file beside it has a longer name
    if path.is_dir():
        raise PathError(f"{label} {path} is a folder; give a file name, e.g. {path / 'run.json'}")
    _check_folder_chain(path.parent, label, path)
    if os.path.lexists(path):
        from hdr_lib.measure.records import RecordError, read_record

        if not path.is_file():
            raise PathError(f"{label} {path} exists and is not a regular file; choose another name")
        try:
            if path.stat().st_size > RECORD_MAX_BYTES:
                raise RecordError("too large for a record")
            read_record(path)
        except (RecordError, OSError):
            raise PathError(f"{label} {path} exists and is not a run record; it would be overwritten: choose a new "
                            f"name, or delete it first") from None
        kept = kept_record(path, kind)
        if kept:
            raise PathError(f"{label} {path} holds {kept}; it was kept, nothing ran: choose another file name "
                            f"(--out), or delete it first to make it again")
    return path


def kept_record(path: Path, kind: str | None = None) -> str | None:
    """Why the record at `path` must not be replaced by a run of `kind` (a phrase: "a complete train record
    (test accuracy 99.10 %)"), or None where it may be: an incomplete record of the same kind, or no record."""
    from hdr_lib.measure.records import RecordError, read_record

    try:
        record = read_record(path)
    except (RecordError, OSError):
        return None
    status, found = record.get("status"), record.get("kind")
    accuracy = record.get("test_accuracy")
    detail = f" (test accuracy {accuracy:.2f} %)" if isinstance(accuracy, (int, float)) else ""
    if kind is not None and found != kind:
        return f"a {status} {found} record, not a {kind} record{detail}"
    if status != "incomplete":
        return f"a {status} {found} record{detail}"
    return None


def output_folder(value, label: str) -> Path:
    """A folder the run will write into (checkpoints, records): refused now if it is empty, a file, lies under a
    file, has a name too long or sits where nothing can be written. It is not created here."""
    path = Path(_text(value, label))
    _check_lengths(path, label, spare=40)  # the names written inside it
    if os.path.lexists(path) and not path.is_dir():
        raise PathError(f"{label} {path} is a file, not a folder; give a folder name")
    _check_folder_chain(path, label)
    return path


def input_path(value, label: str) -> Path:
    """A path the run only reads (the MNIST folder): refused now if it is empty or not a path; never created."""
    path = Path(_text(value, label)).expanduser()
    _check_lengths(path, label)
    return path


def os_error(exc: OSError, path, action: str, remedy: str) -> str:
    """One line for an OSError on a user's path: what failed, where, why, and what to do."""
    return f"cannot {action} {path}: {exc.strerror or exc}; {remedy}"


_HELD: dict[str, list] = {}  # lock file -> [fd, count]: the locks this process holds


class WriteLock:
    """An exclusive lock on what a run writes (a record, an output folder): fcntl.flock on a hidden lock file
    beside it (`.<name>.lock`, in a folder `.hdr-folder.lock`), taken without waiting. A second writer is refused
    with one line naming the process that holds it; the lock goes with the process, however it ends (a dead
    holder's file does not block), and its file is removed on release. The same process may take it again (a
    replicate's folder, then each record in it). `FolderLock` is the same lock on a checkpoint folder."""

    REENTRANT = True  # the same process may take it again (counted; released with the last)
    KEEP_FILE = False  # the lock file stays after release

    def __init__(self, target: str | os.PathLike, what: str, folder: bool = False):
        target = Path(target)
        self.file = target / ".hdr-folder.lock" if folder else target.parent / f".{target.name}.lock"
        self.target, self.what, self.key, self.held = target, what, None, False

    def cannot_open(self, exc: OSError) -> str:
        """The line for a lock file that cannot be made or opened."""
        return os_error(exc, self.target, f"lock {self.what}", "choose another place")

    def in_use(self, owner: str) -> str:
        """The line for a lock held by another run (`owner`: its pid, or "?")."""
        return (f"{self.what} {self.target} is being written by another run (pid {owner}); wait for it to end, or "
                f"choose another name")

    def acquire(self) -> "WriteLock":
        if self.held or fcntl is None:
            return self
        self.key = os.path.abspath(self.file)
        if self.key in _HELD:
            if not self.REENTRANT:  # as another run in this process would find it: held
                raise PathError(self.in_use(str(os.getpid())))
            _HELD[self.key][1] += 1
            self.held = True
            return self
        while True:
            try:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise PathError(self.cannot_open(exc)) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise PathError(self.in_use(owner)) from None
            try:  # the file may have been removed by its last holder between our open and our lock: take it anew
                same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD[self.key] = [fd, 1]
        self.held = True
        return self

    def release(self) -> None:
        if not self.held or self.key is None:
            return
        self.held = False
        entry = _HELD[self.key]
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[self.key]
            if not self.KEEP_FILE:
                try:
                    os.unlink(self.file)  # while still locked: a waiter that opened it sees another inode and retries
                except OSError:
                    pass
            os.close(entry[0])  # closing the only descriptor drops the flock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class FolderLock(WriteLock):
    """The lock on a checkpoint folder (`.checkpoint.lock` in it, made with the folder), held while a run uses it:
    a second run on the same folder, in another process or this one, is refused instead of mixing its checkpoints
    with the first's. Its file stays after release (it names the last run that held it)."""

    REENTRANT, KEEP_FILE = False, True

    def __init__(self, folder: str | os.PathLike):
        super().__init__(folder, "checkpoint folder", folder=True)
        self.folder, self.file = self.target, self.target / LOCK_NAME

    def cannot_open(self, exc: OSError) -> str:
        return f"cannot use checkpoint folder {self.folder}: {exc.strerror or exc}; choose another one"

    def in_use(self, owner: str) -> str:
        return (f"checkpoint folder {self.folder} is in use by another run (pid {owner}); wait for it to end, or "
                f"choose another checkpoint folder")
