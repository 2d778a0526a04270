#!/usr/bin/env python
"""Active-learning simulation; the same as ``edge-al simulate`` (see ``edge-al simulate --help``)."""

from __future__ import annotations

import sys

from edge_al.cli import main

if __name__ == "__main__":
    sys.exit(main(["simulate", *sys.argv[1:]]))
