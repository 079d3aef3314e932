"""sandbox.core.host_memory: memory a step frees is reused, not faulted back in every step."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.core import host_memory

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                           reason="the setting is glibc's (mallopt)")

# A fresh process (the settings must come before any thread allocates): a 64 MiB block is
# malloc'd, written and freed, then twice more; the second pass's minor page faults are counted. Under
# glibc's defaults a block that size is mmap'd and unmapped, so every pass faults its
# 16,384 pages back in; with the settings the freed heap is reused.
_PROBE = """
import ctypes, json, resource
from sandbox.core import host_memory
host_memory.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def touch(n=64 * 2**20):
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
touch()
f0 = faults()
touch(); touch()
print(json.dumps({"faults": (faults() - f0) / 2, **host_memory.status()}))
"""


def _probe(**env) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, **env, "PYTHONPATH": str(Path(host_memory.__file__).parents[2])})
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_a_freed_block_is_reused_without_page_faults():
    kept = _probe()
    system = _probe(SANDBOX_MALLOC="system")
    assert kept["mode"] == "kept" and system["mode"] == "system", (kept, system)
    assert system["faults"] > 10_000, system   # the control: glibc's defaults fault it back in
    assert kept["faults"] < 1_000, kept        # reused: (almost) no faults


@glibc
def test_the_trainer_keeps_it_and_a_late_call_changes_nothing(monkeypatch):
    """``sandbox.train`` sets it as its first statement (before NumPy and JAX start threads);
    in a process that loaded NumPy first (this one) the call is refused and says why."""
    code = ("import json, sandbox.train\n"
            "from sandbox.core import host_memory as h\nprint(json.dumps(h.status()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(host_memory.__file__).parents[2])})
    assert json.loads(out.stdout.strip().splitlines()[-1])["mode"] == "kept"
    monkeypatch.setattr(host_memory, "_state", {"mode": "system", "reason": "not applied yet"})
    monkeypatch.delenv("SANDBOX_MALLOC", raising=False)
    import numpy  # noqa: F401  (loaded in any test process; explicit so the test runs alone too)

    late = host_memory.keep_freed_memory()
    assert late["mode"] == "system" and "too late" in late["reason"] and "numpy" in late["reason"]


def test_opting_out_changes_nothing(monkeypatch):
    monkeypatch.setattr(host_memory, "_state", {"mode": "system", "reason": "not applied yet"})
    monkeypatch.setenv("SANDBOX_MALLOC", "system")
    assert host_memory.keep_freed_memory() == {"mode": "system", "reason": "SANDBOX_MALLOC=system"}
