"""The stream job's operator modules load no pybind11 extension: in PyFlink's thread mode one deadlocks its import.

Why (streaming/operators.py): the modules are first imported in an operator thread, where
pybind11's PyGILState_Ensure waits for the GIL the thread already holds. A job then hangs
in INITIALIZING for good; CI saw it with scipy's pypocketfft, pulled in by Feast's dask
offline store.
"""

from __future__ import annotations

import json
import subprocess
import sys

# Everything Flink unpickles into an operator thread comes from these modules.
OPERATOR_MODULES = ["streaming.operators", "streaming.job"]

PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
found = []
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None) or ""
    if path.endswith(".so"):
        with open(path, "rb") as handle:
            if b"pybind11" in handle.read():
                found.append(name)
print(json.dumps({"pybind11": sorted(found), "scipy": "scipy" in sys.modules}))
"""


def loaded_by(modules: list[str]) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *modules], capture_output=True, text=True, timeout=300, check=True
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_operators_load_no_pybind11_extension() -> None:
    assert loaded_by(OPERATOR_MODULES) == {"pybind11": [], "scipy": False}


def test_the_probe_finds_a_pybind11_extension() -> None:
    # The check itself can fail: Feast's dask offline store (what the job imported before) loads one.
    assert loaded_by(["feast.infra.offline_stores.dask"])["pybind11"] != []
