"""Entry point for `python -m hdr_lib`."""

import sys

try:
    from hdr_lib.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python imports: nothing has been read or written yet
    print("interrupted before anything was read or written", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
