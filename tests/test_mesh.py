"""Meshes on 8 fake CPU devices, and two processes on loopback.

The device count is fixed when JAX's backend starts, so everything that needs several
devices runs in a child process (this file run as a script: ``python tests/test_mesh.py
<case> <out.json>``) that sets ``jax_num_cpu_devices`` before touching a device and
writes its measurements as JSON; the tests here assert on them. The pytest process
itself keeps its single device.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY, compose

HERE = Path(__file__).resolve()
TOL = 1e-5


def run_child(case: str, out: Path, *args: str, devices: int = 8, env: dict | None = None,
              timeout: int = 300) -> dict:
    e = {**os.environ, "JAX_PLATFORMS": "cpu", "CHILD_DEVICES": str(devices), **(env or {})}
    e.pop("XLA_FLAGS", None)
    p = subprocess.run([sys.executable, str(HERE), case, str(out), *args], cwd=REPO, env=e,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(out.read_text())


# ============================================================================ child side


def _tiny(*extra: str):
    """The tests' tiny run with a global batch of 8 (one row per device)."""
    cache = os.environ["SANDBOX_CACHE"]
    return compose([*TINY, "train.batch_size=8", f"cache_dir={cache}", *extra])


_BASE: dict = {}


def _build(cfg):
    """(layout, graphdef, objective, tx, state, batch[B, L]) as the trainer builds them; the
    model is built once per objective (the mesh does not change it), placed per layout."""
    from sandbox.core.build import build_data, build_model, build_objective, init_sharded_state, split_model
    from sandbox.core.mesh import build_layout
    from sandbox.core.optim import make_optimizer
    from sandbox.data import get_batch

    layout = build_layout(cfg.mesh)
    key = str(cfg.objective.name)
    if key not in _BASE:
        data, tok = build_data(cfg)
        model = build_model(cfg, tok, 0)
        objective = build_objective(cfg, model, tok)
        tx, _ = make_optimizer(cfg.optim, int(cfg.train.steps))
        graphdef, params = split_model(model)
        batch = get_batch(data.splits["train"], seed=0, step=1, batch_size=int(cfg.train.batch_size),
                          seq_len=int(cfg.train.seq_len))
        _BASE[key] = (graphdef, objective, tx, params, batch)
    graphdef, objective, tx, params, batch = _BASE[key]
    return layout, graphdef, objective, tx, init_sharded_state(params, tx, layout), batch


def _host(tree) -> list[np.ndarray]:
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _one_step(cfg):
    import jax

    from sandbox.core.step import make_train_step

    layout, graphdef, objective, tx, state, batch = _build(cfg)
    step = make_train_step(graphdef, objective, tx, float(cfg.train.ema_decay), layout, state)
    key = layout.replicate(jax.random.fold_in(jax.random.PRNGKey(0), 1))
    new, m = step(state, layout.batch(batch, batch.shape), key)
    return layout, new, {k: float(v) for k, v in m.items()}


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) if x.size else 0.0 for x, y in zip(a, b, strict=True))


def child_meshes(out: Path) -> None:
    import jax

    from sandbox.core.checkpoint import Checkpointer
    from sandbox.core.errors import UserError

    res = {"devices": jax.device_count(), "steps": {}, "specs": {}, "placed": {}}
    for obj in ("ar",):  # (mdlm on a mesh: test_whole_runs_..., slow)
        _, ref, m_ref = _one_step(_tiny(f"objective={obj}", "mesh=single"))
        ref_host = _host(ref)
        # (8, 1) is mesh=dp (fsdp of size 1 shards nothing); the others mesh=fsdp's rules
        points = {"1x8": ["mesh=fsdp", "mesh.data=1", "mesh.fsdp=8"],
                  "2x4": ["mesh=fsdp", "mesh.data=2", "mesh.fsdp=4"], "8x1": ["mesh=dp"]}
        for name, extra in points.items():
            layout, new, m = _one_step(_tiny(f"objective={obj}", *extra))
            res["steps"][f"{obj}-{name}"] = {
                "loss": [m_ref["loss"], m["loss"]], "grad_norm": [m_ref["grad_norm"], m["grad_norm"]],
                "state_max_diff": _max_diff(ref_host, _host(new)), "shape": dict(layout.mesh.shape)}
            if name == "8x1" and obj == "ar":
                saved_8x1 = new

    # expected PartitionSpecs per parameter kind, and the placed arrays carry them
    for name, extra in (("fsdp-2x4", ["mesh=fsdp", "mesh.data=2", "mesh.fsdp=4"]), ("dp", ["mesh=dp"]),
                        ("single", ["mesh=single"])):
        layout, _, _, _, state, _ = _build(_tiny("objective=ar", *extra))
        is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
        specs = jax.tree_util.tree_flatten_with_path(layout.specs(state), is_leaf=is_spec)[0]
        res["specs"][name] = {jax.tree_util.keystr(p): str(s) for p, s in specs}
        arrays = jax.tree_util.tree_flatten_with_path(state)[0]
        res["placed"][name] = {jax.tree_util.keystr(p): str(x.sharding.spec) for p, x in arrays}
        res.setdefault("describe", {})[name] = layout.describe(state["params"])

    # a checkpoint saved on (8, 1) restores onto (2, 4), values and target layout
    ckdir = out.parent / "ckpt"
    saved = saved_8x1
    ck = Checkpointer(ckdir)
    ck.save(1, saved)
    ck.close()
    layout, _, _, _, target, _ = _build(_tiny("objective=ar", "mesh=fsdp", "mesh.data=2", "mesh.fsdp=4"))
    ck = Checkpointer(ckdir)
    restored, step = ck.restore(target)
    ck.close()
    is_sharding = lambda x: isinstance(x, jax.sharding.NamedSharding)  # noqa: E731
    want = jax.tree.leaves(layout.shardings(target), is_leaf=is_sharding)
    res["restore"] = {
        "step": step, "max_diff": _max_diff(_host(saved), _host(restored)),
        "shardings_match": all(x.sharding.is_equivalent_to(s, x.ndim)
                               for x, s in zip(jax.tree.leaves(restored), want, strict=True)),
        "mesh": dict(restored["params"]["embed"].get_value().sharding.mesh.shape)}

    # a global batch that does not divide over the devices: one line naming train.batch_size
    from sandbox.train import run

    errors = {}
    for extra in (["mesh=dp", "train.batch_size=12"], ["mesh=fsdp", "mesh.data=3"]):
        try:
            run(_tiny("objective=ar", *extra), out.parent / ("bad-" + "-".join(extra)))
            errors[" ".join(extra)] = None
        except UserError as e:
            errors[" ".join(extra)] = str(e)
    res["errors"] = errors
    res["bad_dirs_left"] = sorted(p.name for p in out.parent.iterdir() if p.name.startswith("bad-mesh=dp"))
    out.write_text(json.dumps(res, indent=1))


def child_runs(out: Path) -> None:
    """Whole runs on the 8 devices: fsdp (2, 4) vs single, and a resume onto another mesh."""
    import shutil

    from sandbox.train import run

    root = out.parent
    run(_tiny("objective=mdlm", "mesh=single"), root / "single")
    run(_tiny("objective=mdlm", "mesh=fsdp", "mesh.data=2", "mesh.fsdp=4"), root / "fsdp")
    # the fsdp run's step-3 checkpoint resumed on (8, 1): drop step 6 and train on
    shutil.copytree(root / "fsdp", root / "moved")
    shutil.rmtree(root / "moved" / "checkpoints" / "6")
    run(_tiny("objective=mdlm", "mesh=dp"), root / "moved")
    res = {}
    for name in ("single", "fsdp", "moved"):
        recs = [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines()]
        res[name] = [(r["kind"], r["step"], r.get("train_loss", r.get("val_bpb")))
                     for r in recs if r["kind"] in ("train", "eval")]
    out.write_text(json.dumps(res))


def child_dist(out: Path, process_id: str, port: str, run_dir: str) -> None:
    """One of two processes (1 CPU device each) joined on loopback: assemble the global
    batch of step 1 from this process's rows, then train with mesh=fsdp."""
    import jax
    from jax.experimental import multihost_utils

    from sandbox.core.build import build_data
    from sandbox.core.mesh import build_layout, init_distributed
    from sandbox.data import get_batch
    from sandbox.train import run

    dist = [f"dist.coordinator_address=localhost:{port}", "dist.num_processes=2",
            f"dist.process_id={process_id}", "dist.timeout_s=60"]
    cfg = _tiny("objective=ar", "mesh=fsdp", "train.batch_size=4", *dist)
    init_distributed(cfg.dist)
    layout = build_layout(cfg.mesh)
    data, _ = build_data(cfg)
    bs, sl = int(cfg.train.batch_size), int(cfg.train.seq_len)
    slot, slots = layout.process_rows(bs)
    local = get_batch(data.splits["train"], seed=0, step=1, batch_size=bs, seq_len=sl,
                      process_index=slot, process_count=slots)
    glob = layout.batch(local, (bs, sl))
    gathered = multihost_utils.process_allgather(glob, tiled=True)
    result = run(cfg, Path(run_dir))
    out.write_text(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                               "devices": jax.device_count(), "slot": [slot, slots],
                               "local_rows": int(local.shape[0]), "batch": np.asarray(gathered).tolist(),
                               "val_bpb": result["val_bpb"]}))


if __name__ == "__main__":
    import jax

    jax.config.update("jax_num_cpu_devices", int(os.environ.get("CHILD_DEVICES", "8")))
    case, out = sys.argv[1], Path(sys.argv[2])
    {"meshes": child_meshes, "runs": child_runs, "dist": child_dist}[case](out, *sys.argv[3:])
    sys.exit(0)


# ============================================================================ tests


@pytest.fixture(scope="module")
def meshes(tmp_path_factory, sandbox_cache) -> dict:
    return run_child("meshes", tmp_path_factory.mktemp("meshes") / "out.json")


def test_children_see_eight_devices_and_pytest_one(meshes):
    import jax

    assert meshes["devices"] == 8
    assert jax.device_count() == 1  # the pytest process is left alone


@pytest.mark.parametrize("point", ["ar-1x8", "ar-2x4", "ar-8x1"])
def test_one_step_on_a_mesh_equals_the_single_device_step(meshes, point):
    r = meshes["steps"][point]
    assert r["loss"][1] == pytest.approx(r["loss"][0], rel=TOL, abs=TOL)
    assert r["grad_norm"][1] == pytest.approx(r["grad_norm"][0], rel=1e-4, abs=1e-5)
    assert r["state_max_diff"] < 1e-4, r  # params, EMA, Adam moments and step after the update
    d, f = map(int, point.split("-")[1].split("x"))
    assert r["shape"] == {"data": d, "fsdp": f}


def test_partition_specs_per_parameter_kind(meshes):
    fsdp = meshes["specs"]["fsdp-2x4"]
    expect = {  # logical axes -> spec under mesh=fsdp's rules (embed -> fsdp)
        "['params']['embed']": "P(None, 'fsdp')",                      # (vocab, embed)
        "['params']['head']": "P('fsdp',)",                           # (embed, vocab)
        "['params']['norm']['scale']": "P('fsdp',)",                  # (embed,)
        "['params']['blocks'][0]['attn']['wq']": "P('fsdp',)",        # (embed, heads, head_dim)
        "['params']['blocks'][0]['attn']['wk']": "P('fsdp',)",        # (embed, kv_heads, head_dim)
        "['params']['blocks'][0]['attn']['wo']": "P(None, None, 'fsdp')",  # (heads, head_dim, embed)
        "['params']['blocks'][0]['mlp']['w_gate']": "P('fsdp',)",     # (embed, mlp)
        "['params']['blocks'][0]['mlp']['w_down']": "P(None, 'fsdp')",  # (mlp, embed)
        "['params']['blocks'][0]['norm1']['scale']": "P('fsdp',)",
        "['step']": "P()",
    }
    for path, spec in expect.items():
        assert fsdp[path] == spec, (path, fsdp[path])
    # EMA and both Adam moments follow their parameter; counters are replicated
    for path, spec in fsdp.items():
        if path.startswith("['params']"):
            rest = path[len("['params']"):]
            assert fsdp["['ema']" + rest] == spec
            assert fsdp["['opt'][1][0].mu" + rest] == spec and fsdp["['opt'][1][0].nu" + rest] == spec
    assert fsdp["['opt'][1][0].count"] == "P()"
    # dp and single shard nothing
    assert set(meshes["specs"]["dp"].values()) == {"P()"} == set(meshes["specs"]["single"].values())
    # the placed arrays carry exactly these specs (Variable paths end in .value)
    for path, spec in meshes["placed"]["fsdp-2x4"].items():
        assert spec == fsdp[path.removesuffix(".value")], path
    assert "12/12 parameters sharded, 25% of the parameters per device" in meshes["describe"]["fsdp-2x4"]


def test_checkpoint_saved_on_8x1_restores_on_2x4(meshes):
    r = meshes["restore"]
    assert r["step"] == 1 and r["max_diff"] == 0.0
    assert r["shardings_match"] and r["mesh"] == {"data": 2, "fsdp": 4}


def test_batch_that_does_not_divide_is_one_line_naming_train_batch_size(meshes):
    e = meshes["errors"]
    assert e["mesh=dp train.batch_size=12"].startswith("train.batch_size=12 does not divide over the 8")
    assert "mesh.data=3" in e["mesh=fsdp mesh.data=3"]
    assert meshes["bad_dirs_left"] == []  # a run refused at setup leaves no folder


@pytest.mark.slow
def test_whole_runs_on_a_mesh_match_single_and_resume_on_another_mesh(tmp_path, sandbox_cache):
    r = run_child("runs", tmp_path / "out.json")
    single, fsdp, moved = r["single"], r["fsdp"], r["moved"]
    assert [x[:2] for x in single] == [x[:2] for x in fsdp] == [x[:2] for x in moved]
    for a, b, c in zip(single, fsdp, moved, strict=True):
        assert b[2] == pytest.approx(a[2], rel=1e-4), (a, b)
        assert c[2] == pytest.approx(a[2], rel=1e-4), (a, c)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_assemble_the_global_batch_and_match_one_process(tmp_path, sandbox_cache):
    """Two processes with one CPU device each, CPU collectives (gloo) on loopback, mesh=fsdp
    (parameters sharded across the processes): the global batch is the one-process batch
    row for row, the losses match a one-process run, and the checkpoint they wrote together
    restores in a single process."""
    from sandbox.core.build import build_data
    from sandbox.core.runs import load_run
    from sandbox.data import get_batch
    from sandbox.train import run

    port = str(_free_port())
    run_dir = tmp_path / "two"
    env = {"CHILD_DEVICES": "1", "SANDBOX_CACHE": str(sandbox_cache)}
    procs = []
    for i in range(2):
        e = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
        args = [sys.executable, str(HERE), "dist", str(tmp_path / f"p{i}.json"), str(i), port, str(run_dir)]
        procs.append(subprocess.Popen(args, cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(x[-3000:] for x in logs)
    outs = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
    assert [o["process"] for o in outs] == [0, 1] and {o["processes"] for o in outs} == {2}
    assert {o["devices"] for o in outs} == {2} and [o["slot"] for o in outs] == [[0, 2], [1, 2]]
    assert {o["local_rows"] for o in outs} == {2}  # train.batch_size=4 over two processes

    cfg = compose([*TINY, "objective=ar", f"cache_dir={sandbox_cache}"])
    data, _ = build_data(cfg)
    full = get_batch(data.splits["train"], seed=0, step=1, batch_size=4, seq_len=32)
    for o in outs:
        np.testing.assert_array_equal(np.asarray(o["batch"]), full)

    one = tmp_path / "one"
    run(cfg, one)

    def losses(d):
        recs = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r.get("train_loss", r.get("val_bpb")))
                for r in recs if r["kind"] in ("train", "eval")]

    a, b = losses(one), losses(run_dir)
    assert [x[0] for x in a] == [x[0] for x in b]
    for x, y in zip(a, b, strict=True):
        assert y[1] == pytest.approx(x[1], rel=1e-4), (x, y)
    assert outs[0]["val_bpb"] == pytest.approx(outs[1]["val_bpb"])
    assert not list(run_dir.glob("metrics.jsonl.*"))
    loaded = load_run(run_dir)  # saved by two processes with sharded parameters, read by one
    assert loaded.step == 6
