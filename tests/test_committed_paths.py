"""Committed docs and reports name paths relative to the repository (or placeholders), never the
folders of the machine a run happened on: a reader's checkout has no /tmp/... of ours."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"""["'\s(=:](/tmp/|/work/|/root/|/home/)[\w.-]""")


def test_docs_and_reports_carry_no_machine_paths() -> None:
    try:
        out = subprocess.run(["git", "ls-files", "docs", "README.md"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    bad = []
    for name in out.split():
        path = ROOT / name
        if path.suffix not in (".md", ".json", ".csv", ".txt"):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                bad.append(f"{name}:{n}: {line.strip()[:120]}")
    assert not bad, "machine paths in committed docs:\n" + "\n".join(bad)
