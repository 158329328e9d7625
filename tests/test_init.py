"""The public API is what mimirate exports; importing it must not load torch."""

from __future__ import annotations

import subprocess
import sys

import mimirate


def test_exports_resolve() -> None:
    for name in mimirate.__all__:
        assert getattr(mimirate, name) is not None, name


def test_import_is_light() -> None:
    code = "import sys, mimirate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
