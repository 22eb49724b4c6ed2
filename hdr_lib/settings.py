"""Every HDR_* environment variable the library reads, parsed by one rule: unset or empty means the default; any
other value must be of the variable's kind (a switch, a positive number, a path, a name), else SettingError, one
line naming the variable, what it takes and what it got (the command line exits 2 before any work).

`check_environment()` checks them all at once (the command line and `train` call it first); the readers here return
the parsed value, or None where it is unset, and the module that uses it applies its default (HDR_DIST_TIMEOUT:
300 s, in hdr_lib.distributed). Switches take 1/true/yes/on and 0/false/no/off (any case)."""

from __future__ import annotations

import os
from pathlib import Path

from hdr_lib.validation import ConfigError

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
SWITCHES = {  # name: what it switches
    "HDR_NATIVE": "the fast path's native CPU step (1: use it on any CPU that builds it, 0: never)",
    "HDR_PROGRESS": "progress bars (0: none)",
    "HDR_BOOK_BUILD": "set by the book build",
}
NUMBERS = {"HDR_DIST_TIMEOUT": "seconds a data-parallel rank waits for the others"}
PATHS = {"HDR_DATA_DIR": "MNIST root holding MNIST/raw", "HDR_RESULTS_DIR": "folder of run records",
         "HDR_NATIVE_CACHE": "where the native CPU step is built", "HDR_SCREENSHOT_DIR": "book tests' screenshots",
         "HDR_BOOK_HTML": "a built book", "HDR_CHROMIUM": "a browser", "HDR_CHROMEDRIVER": "a browser driver"}
NAMES = {"HDR_SESSION": "the timing session of a script's several commands",
         "HDR_GIT_COMMIT": "the commit a record names where git cannot say"}
NAME_MAX = 200


class SettingError(ConfigError):
    """An HDR_* environment variable with a value that is not of its kind."""


def _raw(name: str, environ=None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    return None if value is None or value.strip() == "" else value.strip()


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


def switch(name: str, environ=None) -> bool | None:
    """The switch `name`: True, False, or None when unset or empty (the default applies)."""
    value = _raw(name, environ)
    if value is None:
        return None
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise SettingError(f"{name} ({SWITCHES.get(name, 'a switch')}) must be one of {'/'.join(TRUE)} or "
                       f"{'/'.join(FALSE)}, got {_shown(value)}; set it to one of those or unset it")


def number(name: str, environ=None) -> float | None:
    """The positive finite number `name`, or None when unset or empty."""
    value = _raw(name, environ)
    if value is None:
        return None
    try:
        parsed = float(value)
    except ValueError:
        parsed = float("nan")
    if not (parsed > 0 and parsed != float("inf")):
        raise SettingError(f"{name} ({NUMBERS.get(name, 'a number')}) must be a positive number of seconds, got "
                           f"{_shown(value)}; set it to one or unset it")
    return parsed


def path(name: str, environ=None) -> Path | None:
    """The path `name` (a user's ~ expanded), or None when unset or empty."""
    value = _raw(name, environ)
    if value is None:
        return None
    if "\0" in value:
        raise SettingError(f"{name} holds a NUL character; set it to an ordinary path or unset it")
    return Path(value).expanduser()


def name(name_: str, environ=None) -> str | None:
    """The printable name `name_` (no control characters, at most NAME_MAX characters), or None."""
    value = _raw(name_, environ)
    if value is None:
        return None
    if len(value) > NAME_MAX or not value.isprintable():
        raise SettingError(f"{name_} ({NAMES.get(name_, 'a name')}) must be a printable name of at most {NAME_MAX} "
                           f"characters, got {_shown(value)}; set another or unset it")
    return value


def check_environment(environ=None) -> None:
    """Every HDR_* variable this library reads, parsed by its kind: the first bad one raises SettingError."""
    for table, parse in ((SWITCHES, switch), (NUMBERS, number), (PATHS, path), (NAMES, name)):
        for key in table:
            parse(key, environ)


def results_dir(environ=None) -> Path:
    """Where records are written by default and read: $HDR_RESULTS_DIR when set, else results/ of the checkout
    that hdr_lib runs from, wherever the command is started."""
    from hdr_lib.paths import REPOSITORY

    return path("HDR_RESULTS_DIR", environ) or REPOSITORY / "results"
