"""Short, human labels of what a run is, read from its files: objective, bound, size, setting.

**Objective identity comes from the run, not from a table of names.** The trainer writes
``objective_label`` (``ar``, ``mdlm``, ``bd3lm(16)``) and ``bound`` (``exact`` or ``upper``)
into the ``kind: meta`` line of ``metrics.jsonl``; eval lines carry ``bound`` too. Runs
written before those fields existed get the generic fallback: the config's ``objective.name``,
with ``(<block_size>)`` appended when the objective config has a ``block_size`` key, and the
bound of their eval lines. An objective is *known* when its bound is recorded; a run without one
is flagged and left out of the fits, whatever its name.

**Order and colour.** Objectives with an exact likelihood come first (they are the reference
that upper bounds are compared with), then the rest in natural order (``bd3lm(4)`` before
``bd3lm(16)``): :func:`objective_order`. The report computes the order once from the tidy table
and gives colours by it (:func:`analysis.plotting.objective_colors`).

**Settings.** Held-out figures compare only within one setting: data, tokenizer, sequence length
and training split. Its label is short: the data config's ``name`` (else the name of the config
group file in ``conf/data/`` with the same ``_target_``, else the class name in snake case), the
scalar options that differ from that group file's defaults, the tokenizer (``bytes``,
``bpe 2048``), ``seq <L>`` and ``trained on <split>`` when not ``train``. Nested configs and
``_target_`` paths never appear. Because the label leaves options out, the tidy table also keeps a
full key of the setting (:func:`setting_key`) and lengthens labels that would otherwise name two
different settings alike (:func:`disambiguate`).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import yaml

from analysis.formatting import join_labels, natural_key, num, snake_case

BOUNDS = ("exact", "upper")

# The config groups of the training code, read for their defaults only (option names and values).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def section(cfg: dict, key: str) -> dict:
    """``cfg[key]`` when it is a mapping, else ``{}``."""
    v = cfg.get(key) if isinstance(cfg, dict) else None
    return v if isinstance(v, dict) else {}


# --- objectives ---------------------------------------------------------------------------------
def objective_label(cfg: dict, meta: dict | None = None) -> str:
    """The run's objective label: ``meta.objective_label``; else ``objective.name`` of the config
    (``name(<block_size>)`` when the objective has a ``block_size``), else the meta line's
    ``objective``; ``?`` when nothing names it."""
    meta = meta or {}
    if meta.get("objective_label"):
        return str(meta["objective_label"])
    obj = section(cfg, "objective")
    name = obj.get("name") or meta.get("objective")
    if not name:
        return "?"
    if obj.get("block_size") is not None:
        return f"{name}({obj['block_size']})"
    return str(name)


def run_bound(meta: dict | None, evals: list[dict]) -> str | None:
    """``exact`` / ``upper`` from the meta line, else from the last eval line that records it."""
    b = (meta or {}).get("bound") or next((e.get("bound") for e in reversed(evals) if e.get("bound")), None)
    return b if b in BOUNDS else None


def order_key(label, bound) -> tuple:
    return (bound != "exact", natural_key(label))


def objective_order(bounds: dict) -> list[str]:
    """Labels of ``{label: bound}``: exact-likelihood objectives first, then natural order."""
    return sorted(bounds, key=lambda label: order_key(label, bounds[label]))


def bounds_of(frame) -> dict[str, str | None]:
    """{objective label: bound} of a frame with ``objective`` and ``bound`` columns (the first
    recorded bound of each label)."""
    out: dict[str, str | None] = {}
    if frame is None or frame.empty or "objective" not in frame:
        return out
    bound = frame["bound"] if "bound" in frame else [None] * len(frame)
    for label, b in zip(frame["objective"], bound):
        label = str(label)
        if out.get(label) is None:
            out[label] = b if b in BOUNDS else None
    return out


def reference_objective(bounds: dict) -> str | None:
    """The objective upper bounds are compared with: the first exact one in the report order."""
    return next((o for o in objective_order(bounds) if bounds[o] == "exact"), None)


def bound_suffix(bound) -> str:
    return {"exact": " (exact)", "upper": " (upper bound)"}.get(bound, " (bound unknown)")


def _by_bound(bounds: dict) -> tuple[list[str], list[str]]:
    """(exact, upper) objective labels, in report order."""
    order = objective_order(bounds)
    return [o for o in order if bounds[o] == "exact"], [o for o in order if bounds[o] == "upper"]


def bound_note(bounds: dict) -> str:
    """What the bound column says about these objectives, for the prose above figures."""
    exact, upper = _by_bound(bounds)
    parts = []
    if exact:
        parts.append(f"{join_labels(exact)} figures are exact")
    if upper:
        parts.append(f"**{join_labels(upper)} figures are upper bounds** (negative ELBO), so every such "
                     "number below and every ratio of one to an exact figure overstates that model's "
                     "true loss")
    return "; ".join(parts) + "." if parts else ""


def bound_sentence(bounds: dict) -> str:
    """Which held-out figures are exact and which upper bounds, from the bound column."""
    exact, upper = _by_bound(bounds)
    parts = []
    if exact:
        parts.append(f"{join_labels(exact)} figures are exact negative log-likelihoods")
    if upper:
        parts.append(f"**{join_labels(upper)} figures are upper bounds** (negative ELBO), reported "
                     "with the Monte-Carlo standard error of the bound estimate")
    if not parts:
        return "No run records whether its figure is exact or an upper bound."
    return "; ".join(parts) + "."


# --- sizes and sampler settings -----------------------------------------------------------------
def size_label(name, params) -> str:
    """``d64 (0.08M)``: the model's name and its non-embedding parameters."""
    p = num(params)
    if math.isnan(p):
        return str(name or "?")
    return f"{name or '?'} ({p / 1e6:.3g}M)"


def _scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def settings_text(settings, keys: tuple[str, ...] | None = None) -> str:
    """``k=v`` pairs of a sampler's settings: the scalar ones only (nested settings such as an
    inner sampler's are left out), in ``keys`` order when given, else sorted."""
    if not isinstance(settings, dict):
        return str(settings or "")
    names = [k for k in keys if k in settings] if keys is not None else sorted(settings)
    return " ".join(f"{k}={settings[k]}" for k in names
                    if _scalar(settings[k]) and not str(k).endswith("_target_"))


# --- settings -----------------------------------------------------------------------------------
@functools.cache
def group_defaults(group: str) -> dict[str, tuple[str, dict]]:
    """``_target_`` -> (option name, its options) of the files in ``conf/<group>/``; {} when the
    config folder is not there (the labels then show every scalar option)."""
    out: dict[str, tuple[str, dict]] = {}
    seen: dict[str, int] = {}
    for p in sorted((CONF_DIR / group).glob("*.yaml")) if (CONF_DIR / group).is_dir() else []:
        try:
            d = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError):
            continue
        target = d.get("_target_") if isinstance(d, dict) else None
        if isinstance(target, str):
            seen[target] = seen.get(target, 0) + 1
            out[target] = (p.stem, d)
    return {t: v for t, v in out.items() if seen[t] == 1}  # two files, one class: no default known


def _class_name(target) -> str:
    return str(target or "?").rsplit(".", 1)[-1]


def _options(cfg: dict, defaults: dict, skip: tuple[str, ...] = ()) -> list[str]:
    return [f"{k}={v}" for k, v in cfg.items()
            if k not in skip and k != "name" and not str(k).endswith("_target_") and _scalar(v)
            and not (k in defaults and defaults[k] == v) and not (k not in defaults and v is None)]


def data_label(data: dict) -> str:
    stem, defaults = group_defaults("data").get(str(data.get("_target_")), (None, {}))
    name = data.get("name") or stem or snake_case(_class_name(data.get("_target_")))
    return " ".join([str(name), *_options(data, defaults)])


def tokenizer_label(tok: dict) -> str:
    stem, defaults = group_defaults("tokenizer").get(str(tok.get("_target_")), (None, {}))
    name = tok.get("name") or stem or snake_case(_class_name(tok.get("_target_"))).removesuffix("_tokenizer")
    vocab = [str(tok["vocab_size"])] if tok.get("vocab_size") is not None else []
    return " ".join([str(name), *vocab, *_options(tok, defaults, skip=("vocab_size",))])


def setting_label(cfg: dict) -> str:
    """``stdlib_code, bytes, seq 128``; ``stdlib_code max_files=12, bpe 2048, seq 256, trained on
    test``: what makes held-out figures comparable (module doc)."""
    train = section(cfg, "train")
    out = f"{data_label(section(cfg, 'data'))}, {tokenizer_label(section(cfg, 'tokenizer'))}"
    out += f", seq {train.get('seq_len', '?')}"
    split = train.get("train_split") or "train"
    return out + ("" if split == "train" else f", trained on {split}")


def setting_key(cfg: dict) -> str:
    """Every option of the setting (nested ones included), as one canonical string."""
    train = section(cfg, "train")
    return json.dumps([section(cfg, "data"), section(cfg, "tokenizer"), train.get("seq_len"),
                       train.get("train_split") or "train"], sort_keys=True, default=str)


def _flat(d, prefix=""):
    out = {}
    for k, v in (d.items() if isinstance(d, dict) else []):
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif not str(k).endswith("_target_"):
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


def disambiguate(labels: dict[str, str]) -> dict[str, str]:
    """{setting key: label} -> the same labels, lengthened by the options that tell apart the
    settings that share one (so different settings never end up in one group)."""
    by_label: dict[str, list[str]] = {}
    for key, label in labels.items():
        by_label.setdefault(label, []).append(key)
    out = dict(labels)
    for label, keys in by_label.items():
        if len(keys) < 2:
            continue
        flats = {}
        for key in keys:
            data, tok, *_ = json.loads(key)
            flats[key] = {**_flat(data, "data."), **_flat(tok, "tokenizer.")}
        names = sorted({n for f in flats.values() for n in f})
        differ = [n for n in names if len({json.dumps(f.get(n), default=str) for f in flats.values()}) > 1]
        for key in keys:
            extra = " ".join(f"{n}={flats[key].get(n)}" for n in differ)
            out[key] = f"{label} ({extra})" if extra else label
    return out
