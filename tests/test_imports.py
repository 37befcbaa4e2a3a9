"""The core library stays usable without Prefect: importing all of it loads no prefect module."""

import pkgutil
import subprocess
import sys

import selffeed


def test_selffeed_imports_no_prefect():
    modules = [m.name for m in pkgutil.walk_packages(selffeed.__path__, "selffeed.")]
    assert "selffeed.stages" in modules and "selffeed.filters" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
