"""Experiment trackers (``logger=``): records written through each logger are read back from
what the tool stored in the run folder (TensorBoard event files, the W&B offline run file,
the MLflow file store). W&B and MLflow tests are skipped when their extras are not installed."""

from __future__ import annotations

import json
import socket
import struct
import sys
from pathlib import Path

import pytest
from conftest import CONF
from omegaconf import OmegaConf

from sandbox.core import loggers
from sandbox.core.loggers import Logger, NoLogger, build_logger, scalars

# The composed config a trainer would pass: nested groups, a list, a null and another group's
# _target_ (build_logger must pass it through, not instantiate it).
CONFIG = {"seed": 0, "model": {"name": "tiny", "d_model": 32, "n_layers": 1},
          "objective": {"_target_": "sandbox.no_such_module.Objective", "name": "ar"},
          "train": {"steps": 6, "flop_budget": None}, "data": {"splits": ["train", "test"]}}
META = {"kind": "meta", "step": 0, "objective": "ar", "params_non_embedding": 1234,
        "train_flops_per_token": 5.0e4, "true_bpb": None, "conditional": {"format": "edits"}}


def train(step: int, offset: float = 0.0) -> dict:
    return {"kind": "train", "step": step, "train_loss": 3.0 - 0.1 * step + offset,
            "tokens_per_s": None if step == 1 else 5000.0 + step, "lr": 1e-3 * step,
            "grad_norm": 0.5, "tokens": 128 * step, "flops": 1.5e9 * step}


def evaluate(step: int, offset: float = 0.0) -> dict:
    return {"kind": "eval", "step": step, "val_bpb": 2.5 - 0.05 * step + offset,
            "val_bpb_stderr": 0.01, "bound": "upper", "exact": False, "weights": "ema"}


def records(steps, offset: float = 0.0, first: int | None = None) -> list[dict]:
    """What the trainer writes for ``steps``: a compile record at the first, eval every 3."""
    steps = list(steps)
    out = [{"kind": "compile", "step": steps[0], "first_step_s": 3.25}]
    for s in steps:
        out.append(train(s, offset))
        if s % 3 == 0:
            out.append(evaluate(s, offset))
    return out


def expected(recs: list[dict]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in recs:
        for k, v in scalars(r).items():
            out.setdefault(k, {})[r["step"]] = v
    return out


def node(name: str):
    return OmegaConf.load(CONF / "logger" / f"{name}.yaml")


@pytest.fixture
def no_network(monkeypatch):
    """Refuse (and record) any connection or name lookup from this process that is not local."""
    attempts: list = []
    local = {None, "localhost", "127.0.0.1", "::1", ""}
    real_connect, real_gai = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        unix = self.family == getattr(socket, "AF_UNIX", None)
        if unix or (isinstance(address, tuple) and address[0] in local):
            return real_connect(self, address)
        attempts.append(address)
        raise OSError(f"a test tried to reach {address}")

    def getaddrinfo(host, *args, **kwargs):
        if host in local:
            return real_gai(host, *args, **kwargs)
        attempts.append(host)
        raise socket.gaierror(f"a test tried to look up {host}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert attempts == [], f"network used: {attempts}"


# --- the mapping and the trivial logger ------------------------------------------------------
def test_scalars_maps_numeric_fields_to_kind_slash_field():
    assert scalars(train(2)) == {"train/train_loss": pytest.approx(2.8), "train/tokens_per_s": 5002.0,
                                 "train/lr": 2e-3, "train/grad_norm": 0.5, "train/tokens": 256.0,
                                 "train/flops": 3e9}
    assert "train/tokens_per_s" not in scalars(train(1))  # None skipped
    # strings and booleans skipped
    assert scalars(evaluate(3)) == {"eval/val_bpb": pytest.approx(2.35), "eval/val_bpb_stderr": 0.01}
    assert scalars({"kind": "compile", "step": 1, "first_step_s": 3.2}) == {"compile/first_step_s": 3.2}
    assert scalars(META) == {}  # hyper-parameters, not a series


def test_none_logger_does_nothing(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for lg in (build_logger(None, run_dir, CONFIG), build_logger(node("none"), run_dir, CONFIG),
               build_logger(node("tensorboard"), run_dir, CONFIG, enabled=False),  # not process 0
               build_logger(node("wandb"), run_dir, CONFIG, enabled=False),
               build_logger(node("mlflow"), run_dir, CONFIG, enabled=False)):
        assert type(lg) is NoLogger
        with lg:
            for r in [META, *records(range(1, 7))]:
                lg.log(r)
        lg.close()
    assert list(run_dir.iterdir()) == []


@pytest.mark.parametrize("name, module, package", [("tensorboard", "tensorboardX", "tensorboardX"),
                                                   ("wandb", "wandb", "wandb"),
                                                   ("mlflow", "mlflow", "mlflow-skinny")])
def test_missing_package_is_one_line(tmp_path, monkeypatch, name, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)  # restored after the test
    with pytest.raises(loggers.UserError) as e:
        build_logger(node(name), tmp_path, CONFIG)
    assert str(e.value) == f"logger={name} needs the {package} package: pip install -e '.[{name}]'"
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_bad_target_or_key_is_one_line(tmp_path):
    with pytest.raises(loggers.UserError, match=r"^logger: cannot find sandbox.core.loggers.Nope .*conf/"):
        build_logger({"_target_": "sandbox.core.loggers.Nope"}, tmp_path, CONFIG)
    with pytest.raises(loggers.UserError, match="^logger: no _target_"):
        build_logger({"subdir": "tb"}, tmp_path, CONFIG)
    with pytest.raises(loggers.UserError, match=r"^logger: NoLogger could not start \(TypeError: .*colour"):
        build_logger({"_target_": "sandbox.core.loggers.NoLogger", "colour": "red"}, tmp_path, CONFIG)


def test_a_failing_tracker_warns_once_and_never_stops_the_run(capsys):
    class Broken(Logger):
        name = "broken"
        closed = None

        def _log_scalars(self, values, step):
            raise ConnectionError("server went away\nsecond line")

        def _close(self, status):
            Broken.closed = status

    with Broken() as lg:
        lg.log(train(1))
        lg.log(train(2))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "logger=broken failed (server went away)" in err[0]
    assert Broken.closed == "finished"
    with pytest.raises(SystemExit), Broken():
        sys.exit(143)  # a preempted run
    assert Broken.closed == "killed"


# --- TensorBoard --------------------------------------------------------------------------------
def tfrecords(path: Path):
    """The records of a TFRecord file (u64 length, u32 crc, data, u32 crc; crcs not checked)."""
    data, pos = path.read_bytes(), 0
    while pos + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        yield data[pos + 12:pos + 12 + n]
        pos += 12 + n + 4


def read_tensorboard(logdir: Path):
    """Scalars {tag: {step: value}}, text tags and hparams, read as TensorBoard does: files in
    name order, and a SessionLog START at step s drops what earlier files logged at >= s."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    series: dict[str, dict[int, float]] = {}
    texts, hparams = {}, {}
    files = sorted(logdir.glob("events.out.tfevents.*"))
    for f in files:
        for raw in tfrecords(f):
            ev = Event.FromString(raw)
            if ev.HasField("session_log") and ev.session_log.status == SessionLog.START:
                series = {t: {s: v for s, v in pts.items() if s < ev.step} for t, pts in series.items()}
            for v in ev.summary.value:
                plugin = v.metadata.plugin_data.plugin_name
                if v.HasField("simple_value"):
                    series.setdefault(v.tag, {})[ev.step] = v.simple_value
                elif plugin == "text":
                    texts[v.tag] = v.tensor.string_val[0].decode()
                elif plugin == "hparams":
                    content = HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    if content.HasField("session_start_info"):
                        hparams = dict(content.session_start_info.hparams)
    return files, series, texts, hparams


def assert_series(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for tag, pts in want.items():
        assert sorted(got[tag]) == sorted(pts), tag
        for s, v in pts.items():
            assert got[tag][s] == pytest.approx(v, rel=1e-6), (tag, s)  # stored as float32


def test_tensorboard_scalars_hparams_and_resume(tmp_path):
    pytest.importorskip("tensorboardX")
    run_dir = tmp_path / "run"
    first = records(range(1, 7))  # a process that checkpointed at 3, logged up to 6, was killed
    lg = build_logger(node("tensorboard"), run_dir, OmegaConf.create(CONFIG))
    assert isinstance(lg, loggers.TensorBoardLogger)
    for r in [META, *first]:
        lg.log(r)
    lg.close()
    files, series, texts, hp = read_tensorboard(run_dir / "tensorboard")
    assert len(files) == 1
    assert_series(series, expected(first))
    assert series["train/train_loss"][6] == pytest.approx(2.4)
    assert series["eval/val_bpb"] == {3: pytest.approx(2.35), 6: pytest.approx(2.2)}
    assert series["compile/first_step_s"] == {1: pytest.approx(3.25)}
    assert not any(t.startswith("meta/") for t in series)
    # the config and meta record as hparams (numbers, strings), and the config as text
    assert hp["model.d_model"].number_value == 32 and hp["objective.name"].string_value == "ar"
    assert hp["objective._target_"].string_value == "sandbox.no_such_module.Objective"
    assert hp["meta.params_non_embedding"].number_value == 1234
    assert hp["meta.conditional.format"].string_value == "edits"
    assert "d_model: 32" in texts["config/text_summary"]

    # resumed from the step-3 checkpoint: steps 4..6 again (offset values to tell them apart)
    second = records(range(4, 7), offset=100.0)
    with build_logger(node("tensorboard"), run_dir, CONFIG, resume_step=3) as lg:
        for r in second:
            lg.log(r)
    files, series, _, _ = read_tensorboard(run_dir / "tensorboard")
    assert len(files) == 2
    kept = [r for r in first if r["step"] <= 3]
    assert_series(series, expected(kept + second))
    assert series["train/train_loss"][6] == pytest.approx(102.4)
    assert series["compile/first_step_s"] == {1: pytest.approx(3.25), 4: pytest.approx(3.25)}


# --- Weights & Biases (offline) -----------------------------------------------------------------
def wandb_history(run_file: Path) -> dict[str, dict[int, float]]:
    """History rows of an offline ``run-<id>.wandb`` file: a 7-byte header, then LevelDB-log
    records (crc32 u32, length u16, type u8; 32 KiB blocks) of ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, buf, out = 32768, 7, b"", {}
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0:  # block padding
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL, LAST
            rec = pb.Record.FromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                step = row.pop("_step")
                for k, v in row.items():
                    if not k.startswith("_"):
                        out.setdefault(k, {})[step] = v
    return out


def offline_runs(run_dir: Path, run_id: str) -> list[Path]:
    """``<run_dir>/wandb/offline-run-<time>-<id>[-<n>]`` folders of a run, oldest first."""
    return sorted(p for p in (run_dir / "wandb").glob("offline-run-*") if f"-{run_id}" in p.name)


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for k, v in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
                 "WANDB_DISABLE_CODE": "true", "WANDB_CONFIG_DIR": str(tmp_path / "wandb_home" / "config"),
                 "WANDB_CACHE_DIR": str(tmp_path / "wandb_home" / "cache"),
                 "WANDB_DATA_DIR": str(tmp_path / "wandb_home" / "data")}.items():
        monkeypatch.setenv(k, v)
    for k in ("WANDB_API_KEY", "WANDB_ERROR_REPORTING", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_ENTITY",
              "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(k, raising=False)
    yield wandb
    wandb.teardown()


def test_wandb_offline_run_in_the_run_folder(tmp_path, wandb_env, no_network):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = records(range(1, 7))
    lg = build_logger(node("wandb"), run_dir, CONFIG)
    assert isinstance(lg, loggers.WandbLogger)
    assert lg.run.settings.mode == "offline" and lg.run.offline
    for r in [META, *first]:
        lg.log(r)
    lg.close()
    wandb_env.teardown()  # wait for wandb-core to write out the offline run file
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    (run,) = offline_runs(run_dir, run_id)
    hist = wandb_history(run / f"run-{run_id}.wandb")
    want = expected(first)
    assert sorted(hist) == sorted(want)
    for tag, pts in want.items():
        assert hist[tag] == pytest.approx(pts), tag

    # resumed: the same W&B run id, a second offline folder for it
    with build_logger(node("wandb"), run_dir, CONFIG, resume_step=3) as lg:
        assert lg.run.id == run_id
        for r in records(range(4, 7), offset=100.0):
            lg.log(r)
    wandb_env.teardown()
    runs = offline_runs(run_dir, run_id)
    assert len(runs) == 2
    assert wandb_history(runs[1] / f"run-{run_id}.wandb")["train/train_loss"][6] == pytest.approx(102.4)


# --- MLflow (local file store) ------------------------------------------------------------------
@pytest.fixture
def mlflow_env(monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE", "MLFLOW_DISABLE_TELEMETRY",
              "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(k, raising=False)  # whatever the logger sets is undone afterwards
    return mlflow


def test_mlflow_file_store_metrics_params_and_resume(tmp_path, mlflow_env, no_network):
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    first = records(range(1, 7))
    lg = build_logger(node("mlflow"), run_dir, CONFIG)
    assert isinstance(lg, loggers.MLflowLogger)
    for r in [META, *first]:
        lg.log(r)
    lg.close()
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert (run_dir / "mlruns").is_dir()
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    want = expected(first)
    assert sorted(run.data.metrics) == sorted(want)
    for tag, pts in want.items():
        hist = client.get_metric_history(run_id, tag)
        assert {m.step: m.value for m in hist} == pytest.approx(pts), tag
    p = run.data.params
    assert p["model.d_model"] == "32" and p["train.flop_budget"] == "None"
    assert p["data.splits"] == '["train", "test"]' and p["meta.params_non_embedding"] == "1234"
    assert p["meta.conditional.format"] == "edits"
    assert run.data.tags["sandbox.run_dir"] == str(run_dir.resolve())

    # resumed: the same MLflow run, reopened and finished again
    with build_logger(node("mlflow"), run_dir, CONFIG, resume_step=3) as lg:
        assert lg.run_id == run_id
        assert client.get_run(run_id).info.status == "RUNNING"
        for r in records(range(4, 7), offset=100.0):
            lg.log(r)
    assert client.get_run(run_id).info.status == "FINISHED"
    exp = client.get_experiment_by_name("sandbox")
    assert len(client.search_runs([exp.experiment_id])) == 1
    steps = [(m.step, m.value) for m in client.get_metric_history(run_id, "train/train_loss")]
    assert (6, pytest.approx(102.4)) in steps and (3, pytest.approx(2.7)) in steps
