"""What a run folder records besides metrics: config, code version and environment.

Layout of a run folder (``hydra.run.dir``)::

    config.yaml        composed config, resolved (what the run actually used)
    overrides.yaml     the command-line overrides
    git.json           commit, branch, dirty flag; git.diff holds uncommitted changes
    env.json           python / package versions, devices, hostname, host-memory mode
    shapes.json        parameter paths and shapes (checked on resume)
    metrics.jsonl      one JSON object per line: train and eval records
    checkpoints/       Orbax checkpoints (atomic; newest two kept; every process writes its shards)
    checkpoints-unreadable/  a newest step that could not be read, set aside on resume

Only process 0 of a multi-process run writes these files (``MetricsLog(enabled=...)``,
``write_run_files``); checkpoints are written by every process.

``MetricsLog`` appends JSON lines and, on resume, drops lines past the restored step so a
resumed run's log reads exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "hydra-core", "numpy",
            "tokenizers")


def append_jsonl(path: Path, records) -> None:
    """Append JSON lines by rewriting the file atomically (never a torn line), all at once."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, old + "".join(json.dumps(r) + "\n" for r in records))


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and one rename, so readers never see a
    half-written file; ordinary permissions (a bare ``mkstemp`` file would stay 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def git_info(repo: Path | None = None) -> tuple[dict, str]:
    repo = Path(repo or Path(__file__).resolve().parents[2])

    def git(*args):
        r = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    diff = git("diff", "HEAD") if commit else ""
    return {"commit": commit or None, "branch": git("rev-parse", "--abbrev-ref", "HEAD") or None,
            "dirty": bool(diff)}, diff


def env_info() -> dict:
    from sandbox.core import host_memory
    from sandbox.core.mesh import backend, device_list, process_count

    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "hostname": socket.gethostname(), "packages": versions,
            "backend": backend(), "devices": device_list(), "process_count": process_count(),
            "malloc": host_memory.status()}  # whether freed host memory is kept (core/host_memory.py)


def write_run_files(run_dir: Path, config_yaml: str, overrides: list[str], shapes: dict) -> None:
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "config.yaml", config_yaml)
    atomic_write_text(run_dir / "overrides.yaml", "".join(f"- {o}\n" for o in overrides))
    info, diff = git_info()
    atomic_write_text(run_dir / "git.json", json.dumps(info, indent=2) + "\n")
    if diff:
        atomic_write_text(run_dir / "git.diff", diff + "\n")
    atomic_write_text(run_dir / "env.json", json.dumps(env_info(), indent=2) + "\n")
    atomic_write_text(run_dir / "shapes.json", json.dumps(shapes, indent=1) + "\n")


class MetricsLog:
    """Append-only JSON-lines log that can be rewound to a step on resume. ``mirror``: a
    tracking logger (``sandbox.core.loggers``) that gets every record too; the file stays the
    record of the run."""

    def __init__(self, path: Path, enabled: bool = True, mirror=None):
        self.path = Path(path)
        self.enabled = enabled
        self.mirror = mirror

    def rewind(self, step: int) -> None:
        """Keep only records with ``step <= step`` (atomically)."""
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a killed run
            if rec.get("step", 0) <= step:
                keep.append(line + "\n")
        atomic_write_text(self.path, "".join(keep))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.mirror is not None:
            self.mirror.log(record)


def read_metrics(path: Path) -> list[dict]:
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out
