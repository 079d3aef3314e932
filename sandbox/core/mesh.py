"""Devices, meshes and processes: the one module that knows where arrays live.

``mesh=single|dp|fsdp`` (``conf/mesh/``) builds a :class:`jax.sharding.Mesh` with the axes
``(data, fsdp)`` and a :class:`Layout` that the trainer uses for every placement:

- **Parameters, EMA weights and optimizer state** are placed by *logical-axis rules*. Every
  backbone parameter is an ``nnx.Param`` with ``logical_axes`` metadata (``vocab``,
  ``embed``, ``heads``, ...); ``mesh.rules`` maps each logical name to a mesh axis (or
  ``null``: replicated). Optimizer moments keep the ``Param`` wrappers of the parameters
  they track, so they are placed like them; scalars (step, counts) are replicated.
  A dimension stays replicated when its mesh axis is already used by an earlier dimension
  of the same parameter or does not divide it (``Layout.describe`` counts what was sharded).
- **Batches** are split along their first axis over every device (``data`` x ``fsdp``):
  FSDP is data parallel over both axes with the parameters and optimizer state sharded
  over ``fsdp``. Each process builds only its own rows and
  ``jax.make_array_from_process_local_data`` assembles the global batch;
  ``train.batch_size`` is the *global* batch and must divide over the devices.
- The train step gathers the parameters once (``with_sharding_constraint`` to replicated)
  and constrains the gradients back to the parameter layout, so XLA emits the FSDP
  pattern (all-gather weights, compute on the batch shard, reduce-scatter gradients,
  sharded update) rather than guessing a layout for every matmul.

``mesh=single`` is a 1 x 1 mesh on the first local device: the same code path, the same
compiled step as the trainer had before meshes existed.

Multiple hosts: :func:`init_distributed` calls ``jax.distributed.initialize()`` when the
``dist`` config or the environment asks for it (an ``srun`` step of more than one task,
a multi-host TPU, an Open MPI launch), before anything touches a device.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from omegaconf import OmegaConf

from sandbox.core.errors import UserError

AXES = ("data", "fsdp")
BATCH_AXES = AXES  # the batch dimension is split over both


# --- multiple processes -----------------------------------------------------------------------
def _int_env(name: str) -> int:
    try:
        return int(os.environ.get(name, "") or 0)
    except ValueError:
        return 0


def cluster_env() -> str | None:
    """Which launcher started several processes of this program, if any.

    ``slurm``: inside an ``srun`` step of more than one task (submitit launches that way);
    a plain ``salloc`` shell or a one-task step is a single process. ``tpu``: a multi-host
    TPU slice (``TPU_WORKER_HOSTNAMES`` lists more than one worker). ``mpi``: ``mpirun``
    with more than one rank."""
    if "SLURM_JOB_ID" in os.environ and _int_env("SLURM_STEP_NUM_TASKS") > 1:
        return "slurm"
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        return "tpu"
    if _int_env("OMPI_COMM_WORLD_SIZE") > 1:
        return "mpi"
    return None


def _get(node, key, default=None):
    if node is None:
        return default
    v = OmegaConf.select(node, key) if OmegaConf.is_config(node) else node.get(key)
    return default if v is None else v


def _wait_for_coordinator(address: str, timeout_s: int) -> None:
    """Process > 0: wait until process 0's coordinator accepts connections. JAX itself ends
    the process with a fatal error (a stack dump, no Python exception) when it never does."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"dist.coordinator_address={address!r}: expected host:port (e.g. node001:12355)")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise UserError(f"dist.coordinator_address={address}: no coordinator answered within "
                                f"{timeout_s} s ({type(e).__name__}); start process 0 (dist.process_id=0) "
                                "there, or raise dist.timeout_s") from None
            time.sleep(0.5)


def init_distributed(dist=None) -> bool:
    """``jax.distributed.initialize()`` when asked to; True when this is a multi-process run.

    ``dist.initialize``: ``auto`` (default) initializes when ``dist.coordinator_address`` is
    set or :func:`cluster_env` finds a multi-process launch; ``true`` always (JAX then
    detects the cluster itself: SLURM, Cloud TPU, Open MPI, Kubernetes); ``false`` never.
    Must run before any JAX device is used; calling it again is a no-op."""
    if jax.distributed.is_initialized():
        return True
    mode = str(_get(dist, "initialize", "auto")).lower()
    if mode not in ("auto", "true", "false"):
        raise UserError(f"dist.initialize={mode!r}: choose auto, true or false")
    address = _get(dist, "coordinator_address")
    if mode == "false" or (mode == "auto" and address is None and cluster_env() is None):
        return False
    kwargs = {}
    if address is not None:
        for key in ("num_processes", "process_id"):
            if _get(dist, key) is None:
                raise UserError(f"dist.{key} is required with dist.coordinator_address={address} "
                                "(set dist.num_processes and dist.process_id on every process)")
        kwargs = dict(coordinator_address=str(address), num_processes=int(_get(dist, "num_processes")),
                      process_id=int(_get(dist, "process_id")))
    timeout = _get(dist, "timeout_s")
    if address is not None and kwargs["process_id"] != 0:
        _wait_for_coordinator(str(address), 300 if timeout is None else int(timeout))
    ids = _get(dist, "local_device_ids")
    if ids is not None:
        try:
            ids = [int(i) for i in (str(ids).split(",") if isinstance(ids, int | str) else ids)]
        except ValueError:
            raise UserError(f"dist.local_device_ids={ids!r}: give device numbers, e.g. [0,1]") from None
        kwargs["local_device_ids"] = ids
    if timeout is not None:
        kwargs["initialization_timeout"] = int(timeout)
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # a bad address, a peer that never came: one line, not a gRPC dump
        first = " ".join((str(e).strip() or type(e).__name__).splitlines()[0].split())[:300]
        raise UserError(f"dist: jax.distributed.initialize failed ({type(e).__name__}: {first}); check "
                        "dist.coordinator_address / dist.num_processes / dist.process_id or the "
                        "cluster's environment") from None
    return True


def is_main_process() -> bool:
    """Process 0 writes metrics, samples, plots and run files; every process checkpoints."""
    return jax.process_index() == 0


# --- processes and devices: every other module asks here --------------------------------------
def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def barrier(name: str) -> None:
    """Wait until every process reaches ``name`` (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def any_process(flag: int) -> int:
    """The largest ``flag`` over all processes (a stop signal seen by any of them); the value
    itself with one process."""
    if jax.process_count() == 1:
        return int(flag)
    from jax.experimental import multihost_utils

    return int(multihost_utils.process_allgather(np.int32(flag)).max())


def backend() -> str:
    """``cpu``, ``gpu`` or ``tpu``."""
    return jax.default_backend()


def local_device():
    """The first device of this process (single-device work: sampling, restores)."""
    return jax.local_devices()[0]


def device_info() -> dict:
    """What a result row records about the hardware it was measured on."""
    dev = jax.devices()[0]
    return {"backend": jax.default_backend(), "device": dev.device_kind, "devices": jax.device_count(),
            "process_count": jax.process_count(), "cpu_count": os.cpu_count()}


def describe_devices() -> str:
    """One line, e.g. ``cpu cpu x1, cpus 2``."""
    d = device_info()
    return f"{d['backend']} {d['device']} x{d['devices']}, cpus {d['cpu_count']}"


def device_list() -> list[str]:
    return [str(d) for d in jax.devices()]


def fake_cpu_devices(n: int) -> None:
    """Split the CPU into ``n`` devices (they share its cores: tests and sharding benchmarks).
    Must run before anything touches a device."""
    if n < 1:
        raise UserError(f"cpu devices={n} must be at least 1")
    jax.config.update("jax_num_cpu_devices", int(n))


def resolve_attention(impl: str, dtype, fused_ok=lambda: False) -> str:
    """The attention kernel ``model.attention=auto`` means on this backend: cuDNN's fused
    kernel on a GPU in 16-bit floats; the sandbox's fused CPU kernel
    (``sandbox.models.cpu_kernels``) in float32 on a process with one CPU device, when
    ``fused_ok()`` says it built (its custom call is not partitioned over a mesh); else the
    portable chunked kernel. The backbone gets the resolved name (it never asks the backend
    itself). An explicit ``fused`` off the CPU is refused here, in one line."""
    _cpu_only("model.attention", impl, "fused")
    if impl != "auto":
        return impl
    import jax.numpy as jnp

    dt = jnp.dtype(dtype)
    if backend() == "gpu" and dt in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return "fused" if _one_cpu_device(dt) and fused_ok() else "chunked"


def resolve_matmul(how: str, dtype, mkl_ok=lambda: False) -> str:
    """The dense matmul ``model.matmul=auto`` means here: the CPU kernel's sgemm (``blas``) in
    float32 on a process with one CPU device when ``mkl_ok()`` says the kernels run on MKL
    (with OpenBLAS they are no faster than XLA's dot inside the train step); else XLA's dot.
    An explicit ``blas`` off the CPU is refused here, in one line."""
    _cpu_only("model.matmul", how, "blas")
    if how != "auto":
        return how
    return "blas" if _one_cpu_device(dtype) and mkl_ok() else "xla"


def _cpu_only(field: str, value: str, kernel: str) -> None:
    """Refuse ``field=kernel`` (a C++ CPU kernel, ``sandbox.models.cpu_kernels``) off the CPU."""
    if value == kernel and backend() != "cpu":
        raise UserError(f"{field}={kernel} is a CPU kernel; on {backend()} use {field}=auto")


def _one_cpu_device(dtype) -> bool:
    """Where ``auto`` may pick a CPU kernel: float32 on a process with one CPU device (their
    custom calls are not partitioned over a mesh)."""
    import jax.numpy as jnp

    return backend() == "cpu" and jax.device_count() == 1 and jnp.dtype(dtype) == jnp.float32


# --- the mesh ---------------------------------------------------------------------------------
def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def _shape(x) -> tuple:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def _rules(node) -> dict[str, tuple[str, ...]]:
    """``{logical: mesh axis | [mesh axes] | null}`` -> ``{logical: (mesh axes...)}``."""
    raw = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    out = {}
    for logical, target in (raw or {}).items():
        axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
        for a in axes:
            if a not in AXES:
                raise UserError(f"mesh.rules.{logical}={target!r}: unknown mesh axis '{a}' "
                                f"(choose from {', '.join(AXES)} or null)")
        out[str(logical)] = axes
    return out


@dataclass(frozen=True)
class Layout:
    """A mesh plus the rules that place train state and batches on it (see module doc)."""

    mesh: Mesh
    rules: dict
    name: str = "single"

    # -- shardings ---------------------------------------------------------------------------
    @property
    def n_batch_shards(self) -> int:
        return int(np.prod([self.mesh.shape[a] for a in BATCH_AXES]))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def batch_sharding(self, ndim: int = 2) -> NamedSharding:
        return NamedSharding(self.mesh, P(BATCH_AXES, *([None] * (ndim - 1))))

    def spec(self, logical_axes, shape) -> P:
        """PartitionSpec of one parameter from its logical axes and shape."""
        if not logical_axes:
            return P()
        used, out = set(), []
        for name, size in zip(logical_axes, shape, strict=True):
            axes = tuple(a for a in self.rules.get(name, ()) if a not in used)
            n = int(np.prod([self.mesh.shape[a] for a in axes])) if axes else 1
            if not axes or n == 1 or size % n:
                out.append(None)
                continue
            used.update(axes)
            out.append(axes[0] if len(axes) == 1 else axes)
        while out and out[-1] is None:
            out.pop()
        return P(*out)

    def specs(self, tree):
        """Same structure as ``tree`` with a PartitionSpec at every ``nnx.Variable`` / array."""
        def one(x):
            if _is_var(x):
                return self.spec(x.get_metadata().get("logical_axes"), _shape(x.get_value()))
            return P()

        return jax.tree.map(one, tree, is_leaf=_is_var)

    def shardings(self, tree):
        """A pytree prefix of ``tree`` (one NamedSharding per Variable or array), for
        ``jax.jit`` in/out shardings and ``with_sharding_constraint``."""
        return jax.tree.map(lambda s: NamedSharding(self.mesh, s), self.specs(tree),
                            is_leaf=lambda x: isinstance(x, P))

    # -- placement ---------------------------------------------------------------------------
    @staticmethod
    def put(x, sharding):
        """A global array with ``sharding`` from a value every process holds in full. Goes
        through host memory: slicing a device array into shards would compile a program per
        shape, and with several processes only host values can be cut into global arrays."""
        host = np.asarray(x)
        if sharding.is_fully_addressable:
            return jax.device_put(host, sharding)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    def place(self, tree):
        """``tree`` (train state, params...) moved onto the mesh per the rules."""
        shardings = jax.tree.leaves(self.shardings(tree), is_leaf=lambda x: isinstance(x, NamedSharding))
        it = iter(shardings)

        def one(x):
            s = next(it)
            return x.replace(value=self.put(x.get_value(), s)) if _is_var(x) else self.put(x, s)

        return jax.tree.map(one, tree, is_leaf=_is_var)

    def replicate(self, x):
        return self.put(x, self.replicated)

    # -- batches -----------------------------------------------------------------------------
    def check_batch(self, batch_size: int, field: str = "train.batch_size") -> None:
        n = self.n_batch_shards
        if batch_size % n:
            raise UserError(f"{field}={batch_size} does not divide over the {n} data-parallel devices of "
                            f"mesh={self.name} ({self.describe_mesh()}); use a multiple of {n}")

    def process_rows(self, batch_size: int) -> tuple[int, int] | None:
        """(slot, slots): this process holds rows ``[slot * b, (slot + 1) * b)`` of the global
        batch, ``b = batch_size // slots`` (``sandbox.data.get_batch``'s process slice). None
        when its devices' rows are not one aligned block (a device order that interleaves
        processes): the process then reads the whole batch (:meth:`full_batch`)."""
        self.check_batch(batch_size)
        idx = self.batch_sharding().addressable_devices_indices_map((batch_size, 1))
        rows = sorted({(s[0].start or 0, s[0].stop if s[0].stop is not None else batch_size)
                       for s in idx.values()})
        lo, hi = rows[0][0], rows[-1][1]
        covered = sum(b - a for a, b in rows)
        if covered != hi - lo or batch_size % (hi - lo) or lo % (hi - lo):
            return None
        return lo // (hi - lo), batch_size // (hi - lo)

    def batch(self, local, global_shape):
        """This process's rows -> the global batch, split over the data-parallel devices."""
        return jax.make_array_from_process_local_data(self.batch_sharding(np.ndim(local)), np.asarray(local),
                                                      tuple(global_shape))

    def full_batch(self, batch):
        """A batch every process holds in full (evaluation) -> a global array: split over the
        devices when its size divides over them, else replicated (same numbers either way)."""
        batch = np.asarray(batch)
        s = self.batch_sharding(batch.ndim) if batch.shape[0] % self.n_batch_shards == 0 else self.replicated
        return self.put(batch, s)

    # -- reporting ---------------------------------------------------------------------------
    def describe_mesh(self) -> str:
        return " x ".join(f"{a}={self.mesh.shape[a]}" for a in AXES)

    def shards(self, spec: P) -> int:
        """How many pieces a PartitionSpec cuts an array into."""
        axes = [a for e in spec if e for a in ((e,) if isinstance(e, str) else e)]
        return int(np.prod([self.mesh.shape[a] for a in axes])) if axes else 1

    def describe(self, params) -> str:
        """One line: mesh, devices and processes, and how much of ``params`` is sharded."""
        specs = jax.tree.leaves(self.specs(params), is_leaf=lambda x: isinstance(x, P))
        sizes = [int(np.prod(_shape(v.get_value() if _is_var(v) else v)))
                 for v in jax.tree.leaves(params, is_leaf=_is_var)]
        per_device = sum(n // self.shards(s) for n, s in zip(sizes, specs, strict=True))
        n_sharded = sum(1 for s in specs if self.shards(s) > 1)
        return (f"mesh={self.name} ({self.describe_mesh()}) on {self.mesh.size} {jax.default_backend()} "
                f"device(s), {jax.process_count()} process(es); {n_sharded}/{len(specs)} parameters "
                f"sharded, {per_device / max(sum(sizes), 1):.0%} of the parameters per device")


def build_layout(node=None) -> Layout:
    """The Layout for a ``mesh`` config node (``conf/mesh/*.yaml``); None is ``mesh=single``."""
    name = str(_get(node, "name", "single"))
    rules = _rules(_get(node, "rules", {}))
    if name == "single":
        if jax.process_count() > 1:
            raise UserError(f"mesh=single runs on one device, but {jax.process_count()} processes were "
                            "started; use mesh=dp or mesh=fsdp")
        devices = np.array(jax.local_devices()[:1]).reshape(1, 1)
        return Layout(Mesh(devices, AXES, axis_types=(AxisType.Auto,) * 2), rules, name)
    n = jax.device_count()
    sizes = {}
    for a in AXES:
        v = _get(node, a, 1)
        try:
            sizes[a] = int(v)
        except (TypeError, ValueError):
            raise UserError(f"mesh.{a}={v!r} must be an integer (-1: every device left)") from None
        if sizes[a] == 0 or sizes[a] < -1:
            raise UserError(f"mesh.{a}={v} must be positive or -1 (every device left)")
    free = [a for a in AXES if sizes[a] == -1]
    if len(free) > 1:
        raise UserError("mesh.data and mesh.fsdp are both -1; give one of them a size")
    fixed = int(np.prod([s for s in sizes.values() if s != -1]))
    if free:
        if n % fixed:
            other = next(a for a in AXES if a not in free)
            raise UserError(f"mesh.{other}={fixed} does not divide the {n} devices; choose a divisor of {n}")
        sizes[free[0]] = n // fixed
    if sizes["data"] * sizes["fsdp"] != n:
        raise UserError(f"mesh.data={sizes['data']} x mesh.fsdp={sizes['fsdp']} = "
                        f"{sizes['data'] * sizes['fsdp']} but there are {n} devices; the mesh must use "
                        "every device (set one axis to -1)")
    mesh = jax.make_mesh((sizes["data"], sizes["fsdp"]), AXES, axis_types=(AxisType.Auto,) * 2)
    return Layout(mesh, rules, name)
