"""Entry point for `python -m hdr_lib`."""

import sys

from hdr_lib.cli import main

if __name__ == "__main__":
    sys.exit(main())
