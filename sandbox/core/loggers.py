"""Experiment trackers: mirror the trainer's metric records to TensorBoard, W&B or MLflow.

Job: ``metrics.jsonl`` in the run folder stays the record of a run (always written, read by
the reports). The ``logger=`` config group (``conf/logger/``: ``none`` (the default),
``tensorboard``, ``wandb``, ``mlflow``) picks a tool the community uses that gets the same
records as they are written, so runs can be watched and compared there too.

Design:

* **One interface.** :func:`build_logger` turns the ``logger`` config node into a
  :class:`Logger`; the trainer calls ``log(record)`` with exactly the dicts it writes to
  ``metrics.jsonl`` and ``close()`` at the end (or uses it as a context manager).
* **One mapping** (:func:`scalars`): every numeric field of a record becomes the scalar
  ``<kind>/<field>`` at the record's ``step`` (``train/train_loss``, ``eval/val_bpb``,
  ``compile/first_step_s``); strings, ``None``, booleans and nested values are skipped. A
  ``meta`` record (parameter count, FLOPs per token, ...) is not a series: it goes, with the
  composed config, where each tool keeps hyper-parameters (TensorBoard hparams, the W&B
  config, MLflow params).
* **Optional extras, imported lazily.** ``import sandbox.core.loggers`` needs none of them;
  a logger whose package is missing raises :class:`UserError` with one line naming the
  extra to install (``pip install -e '.[wandb]'``).
* **Local and offline by default; nothing needs the network.** TensorBoard writes event
  files to ``<run_dir>/tensorboard/``; W&B runs in offline mode (unless ``logger.mode`` or
  ``$WANDB_MODE`` says otherwise) under ``<run_dir>/wandb/`` with system metrics, error
  reporting and console capture off; MLflow uses a file store in ``<run_dir>/mlruns``
  unless ``logger.tracking_uri`` names another, with its telemetry off
  (``MLFLOW_DISABLE_TELEMETRY`` and ``WANDB_ERROR_REPORTING`` are only set when unset).
* **Resume.** The trainer builds the logger again with the same ``run_dir`` and the restored
  step (``resume_step``). TensorBoard opens a new event file whose purge marker hides what
  a killed process logged past ``resume_step`` (as ``MetricsLog.rewind`` does); W&B reuses
  the run id kept in ``<run_dir>/wandb_run_id`` with ``resume="allow"``; MLflow reopens the
  run whose id is kept in ``<run_dir>/mlflow_run_id`` (MLflow keeps every logged point, so
  steps logged past the checkpoint by a killed process appear twice there, with equal
  values since training is deterministic).
* **A mirror never stops a run.** Errors while building a logger are configuration errors
  (one line, exit 2); an error while logging prints one warning and turns that logger off,
  since ``metrics.jsonl`` already has the record.
* **Process 0 only.** ``build_logger(..., enabled=False)`` returns :class:`NoLogger`.
"""

from __future__ import annotations

import importlib
import json
import numbers
import os
import secrets
import string
import sys
import time
from pathlib import Path

from sandbox.core.errors import UserError
from sandbox.core.runfiles import atomic_write_text

#: config files of the ``logger`` group
CONF_GROUP = "conf/logger/"


def scalars(record: dict) -> dict[str, float]:
    """``{"<kind>/<field>": value}`` for every numeric field of a non-``meta`` record."""
    kind = record.get("kind") or "metrics"
    if kind == "meta":
        return {}
    return {f"{kind}/{k}": float(v) for k, v in record.items()
            if k not in ("kind", "step") and _is_number(v)}


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def flatten(d: dict, prefix: str = "", sep: str = ".") -> dict:
    """Nested dicts to ``{"a.b.c": value}``; lists and tuples become JSON text."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + sep, sep))
        elif isinstance(v, list | tuple):
            out[key] = json.dumps(v, default=str)
        else:
            out[key] = v
    return out


def _meta_fields(record: dict) -> dict:
    """A meta record without ``kind`` / ``step``, flattened, keys prefixed ``meta.``."""
    return flatten({k: v for k, v in record.items() if k not in ("kind", "step")}, "meta.")


def _require(module: str, logger: str, package: str, extra: str):
    """Import the top-level ``module`` of an optional extra, or one line saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"logger={logger} needs the {package} package: pip install -e '.[{extra}]'") from None


def _read_id(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.splitlines()[0].split())


class Logger:
    """Base class: ``log(record)`` maps records, subclasses send them; ``close()`` ends the run.

    Subclasses take their settings (the ``conf/logger/*.yaml`` keys) as keyword arguments
    next to ``run_dir``, ``config`` (the composed config, resolved, as a plain dict) and
    ``resume_step`` (the step a resumed run restarts from; 0 for a new run), and override
    ``_log_scalars``, ``_log_meta`` and ``_close``.
    """

    name = "none"

    def __init__(self, run_dir: Path | str | None = None, config: dict | None = None,
                 resume_step: int = 0):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.config = dict(config or {})
        self.resume_step = int(resume_step)
        self._closed = False
        self._broken = False

    def log(self, record: dict) -> None:
        """Send one metrics.jsonl record: numeric fields as ``<kind>/<field>`` at ``step``."""
        if self._closed or self._broken:
            return
        try:
            if record.get("kind") == "meta":
                self._log_meta(record)
            else:
                values = scalars(record)
                if values:
                    self._log_scalars(values, int(record.get("step") or 0))
        except Exception as e:  # the record is in metrics.jsonl; never stop training for a mirror
            self._broken = True
            print(f"warning: logger={self.name} failed ({_first_line(e)}); it is off for the rest "
                  "of this run (metrics.jsonl has every record)", file=sys.stderr)

    def close(self, status: str = "finished") -> None:
        """Flush and end the run; ``status``: finished | failed | killed. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._close(status)
        except Exception as e:
            print(f"warning: logger={self.name} did not close cleanly ({_first_line(e)})", file=sys.stderr)

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            status = "finished"
        elif issubclass(exc_type, SystemExit | KeyboardInterrupt):
            status = "killed"  # a signal-stopped (preempted) run exits through sys.exit
        else:
            status = "failed"
        self.close(status)

    # -- for subclasses ---------------------------------------------------------------------
    def _log_scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def _log_meta(self, record: dict) -> None:
        pass

    def _close(self, status: str) -> None:
        pass


class NoLogger(Logger):
    """``logger=none``: does nothing (metrics.jsonl is written by the trainer anyway)."""


class TensorBoardLogger(Logger):
    """Event files in ``<run_dir>/<subdir>/`` (tensorboardX writer; no TensorFlow needed).

    Scalars as ``<kind>/<field>``; the config as a text summary (``config``) at the start;
    config and meta record as hparams (with ``eval/val_bpb`` and ``train/train_loss`` as the
    metrics). A resumed run writes a new event file that starts with a purge marker at
    ``resume_step + 1``, so TensorBoard hides what a killed process logged past the checkpoint.
    """

    name = "tensorboard"
    HPARAM_METRICS = ("eval/val_bpb", "train/train_loss")

    def __init__(self, run_dir, config=None, resume_step=0, subdir: str = "tensorboard",
                 flush_secs: int = 30):
        tbx = _require("tensorboardX", "tensorboard", "tensorboardX", "tensorboard")
        super().__init__(run_dir, config, resume_step)
        self.logdir = self.run_dir / subdir
        earlier = self.logdir.is_dir() and any(self.logdir.glob("events.out.tfevents.*"))
        self.writer = tbx.SummaryWriter(
            logdir=str(self.logdir), flush_secs=int(flush_secs),
            purge_step=self.resume_step + 1 if earlier else None,
            # one file per start: names are per second otherwise, and a second writer in the
            # same second would overwrite the first one's file
            filename_suffix=f".{time.time_ns()}")
        if self.config:
            import yaml

            text = yaml.safe_dump(self.config, sort_keys=False, default_flow_style=False)
            self.writer.add_text("config", "```yaml\n" + text + "```", self.resume_step)

    def _log_scalars(self, values, step):
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def _log_meta(self, record):
        from tensorboardX.summary import hparams

        hp = {k: v for k, v in {**flatten(self.config), **_meta_fields(record)}.items()
              if isinstance(v, str | bool) or _is_number(v)}
        exp, ssi, _ = hparams(hp, dict.fromkeys(self.HPARAM_METRICS))
        fw = self.writer._get_file_writer()
        fw.add_summary(exp, int(record.get("step") or 0))
        fw.add_summary(ssi, int(record.get("step") or 0))
        self.writer.add_text("meta", "```json\n" + json.dumps(record, indent=1, default=str) + "\n```",
                             int(record.get("step") or 0))

    def _close(self, status):
        self.writer.close()


_ID_CHARS = string.ascii_lowercase + string.digits


class WandbLogger(Logger):
    """Weights & Biases, offline by default: the run lands in ``<run_dir>/wandb/offline-run-*``.

    ``mode``: ``offline`` | ``online`` | ``disabled``; ``None`` takes ``$WANDB_MODE`` when set,
    else ``offline``. Upload an offline run later with ``wandb sync <run_dir>/wandb/offline-run-*``.
    The run id is kept in ``<run_dir>/wandb_run_id``; a resumed run reuses it (``resume="allow"``).
    The composed config (plus ``run_dir``) is the W&B config; a meta record is added under ``meta``.
    """

    name = "wandb"

    def __init__(self, run_dir, config=None, resume_step=0, project: str | None = "sandbox",
                 entity: str | None = None, name: str | None = None, group: str | None = None,
                 tags: list | None = None, notes: str | None = None, mode: str | None = None,
                 system_metrics: bool = False):
        wandb = _require("wandb", "wandb", "wandb", "wandb")
        mode = mode or os.environ.get("WANDB_MODE") or "offline"
        if mode in ("offline", "dryrun", "disabled"):
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # read when the service starts
        super().__init__(run_dir, config, resume_step)
        id_file = self.run_dir / "wandb_run_id"
        run_id = _read_id(id_file)
        if run_id is None:
            run_id = "".join(secrets.choice(_ID_CHARS) for _ in range(8))
            atomic_write_text(id_file, run_id + "\n")
        self.run_id = run_id
        settings = wandb.Settings(mode=mode, console="off", reinit="finish_previous",
                                  x_disable_stats=not system_metrics,
                                  x_disable_machine_info=not system_metrics)
        self.run = wandb.init(project=project, entity=entity, name=name or self.run_dir.resolve().name,
                              group=group, tags=list(tags or []), notes=notes,
                              config={**self.config, "run_dir": str(self.run_dir.resolve())},
                              dir=str(self.run_dir), id=run_id, resume="allow", settings=settings)

    def _log_scalars(self, values, step):
        self.run.log(values, step=step)

    def _log_meta(self, record):
        meta = {k: v for k, v in record.items() if k not in ("kind", "step")}
        self.run.config.update({"meta": meta}, allow_val_change=True)

    def _close(self, status):
        if status == "killed":
            try:
                self.run.mark_preempting()
            except Exception:
                pass
        self.run.finish(exit_code=0 if status == "finished" else 1)


class MLflowLogger(Logger):
    """MLflow through ``MlflowClient``; by default a file store in ``<run_dir>/mlruns``.

    Metrics as ``<kind>/<field>`` at ``step``; the flattened config and meta record as params
    (``model.d_model``, ``meta.params_non_embedding``, ...). The run id is kept in
    ``<run_dir>/mlflow_run_id``; a resumed run reopens that run (a new one when the store no
    longer has it). Params already logged are not logged again (MLflow refuses a changed value;
    the run folder's config.yaml is the record). MLflow 3 refuses a file store unless
    ``MLFLOW_ALLOW_FILE_STORE`` is true, which this sets (when unset) for ``file:`` URIs.
    """

    name = "mlflow"
    _STATUS = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}

    def __init__(self, run_dir, config=None, resume_step=0, tracking_uri: str | None = None,
                 experiment: str = "sandbox", run_name: str | None = None, tags: dict | None = None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is imported
        _require("mlflow", "mlflow", "mlflow-skinny", "mlflow")
        super().__init__(run_dir, config, resume_step)
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._Param = Param
        uri = tracking_uri or (self.run_dir.resolve() / "mlruns").as_uri()
        scheme = uri.split(":", 1)[0] if ":" in uri else ""
        if scheme in ("", "file") or len(scheme) == 1:  # a local path (or a Windows drive)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.tracking_uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        id_file = self.run_dir / "mlflow_run_id"
        run = None
        run_id = _read_id(id_file)
        if run_id is not None:
            try:
                run = self.client.get_run(run_id)
            except MlflowException:
                run = None  # another store than before: start a new run there
        if run is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
            run = self.client.create_run(exp_id, run_name=run_name or self.run_dir.resolve().name,
                                         tags={"sandbox.run_dir": str(self.run_dir.resolve()),
                                               **{str(k): str(v) for k, v in (tags or {}).items()}})
            atomic_write_text(id_file, run.info.run_id + "\n")
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
            if tags:
                self.client.log_batch(run.info.run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()])
        self.run_id = run.info.run_id
        self._params = dict(run.data.params)
        self._log_params(flatten(self.config))

    def _log_params(self, params: dict) -> None:
        new = [self._Param(str(k)[:250], str(v)[:6000]) for k, v in params.items()
               if str(k)[:250] not in self._params]
        for i in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=new[i:i + 100])
        self._params.update({p.key: p.value for p in new})

    def _log_scalars(self, values, step):
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ms, step) for k, v in values.items()])

    def _log_meta(self, record):
        self._log_params(_meta_fields(record))

    def _close(self, status):
        self.client.set_terminated(self.run_id, status=self._STATUS.get(status, "FINISHED"))


def build_logger(node, run_dir: Path | str, config: dict | None = None, enabled: bool = True,
                 resume_step: int = 0) -> Logger:
    """The :class:`Logger` that ``node`` (the ``logger`` config group) selects.

    ``node``: a DictConfig or dict with ``_target_`` and the logger's settings, or ``None``;
    ``config``: the composed config (DictConfig or dict; resolved here); ``enabled``: false on
    every process but 0; ``resume_step``: the restored step (0 for a new run). Returns
    :class:`NoLogger` when ``node`` is ``None`` or not ``enabled``. A bad ``_target_`` or key,
    a missing package or a tracker that cannot start raises :class:`UserError` (one line).
    """
    if node is None or not enabled:
        return NoLogger(run_dir, None, resume_step)
    import hydra
    from omegaconf import OmegaConf

    if OmegaConf.is_config(config):
        config = OmegaConf.to_container(config, resolve=True)
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=True)
    target = node.get("_target_") if isinstance(node, dict) else None
    if not target:
        raise UserError(f"logger: no _target_ in the config (pick one of the files in {CONF_GROUP})")
    short = node.get("_target_", "").rsplit(".", 1)[-1]
    try:
        # _partial_: hydra builds only the logger's own settings; run_dir and config are passed
        # as they are (config holds other groups' _target_ keys, which hydra would instantiate)
        factory = hydra.utils.instantiate(node, _partial_=True, _convert_="all")
    except Exception as e:
        cause = e
        while cause.__cause__ is not None:  # Hydra wraps the real error
            cause = cause.__cause__
        raise UserError(f"logger: cannot find {target} ({_first_line(cause)}); "
                        f"pick one of the files in {CONF_GROUP}") from None
    try:
        logger = factory(run_dir=Path(run_dir), config=dict(config or {}), resume_step=int(resume_step))
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"logger: {short} could not start ({type(e).__name__}: {_first_line(e)}); "
                        f"check the logger.* keys (conf/logger/)") from None
    if not isinstance(logger, Logger):
        raise UserError(f"logger: {target} is not a sandbox.core.loggers.Logger; "
                        f"pick one of the files in {CONF_GROUP}")
    return logger
