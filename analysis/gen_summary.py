"""The generation benchmark's summary: figures (a), (b), (c) from its timed rows, and their text.

``python -m sandbox.bench gen`` prints this summary after timing and the report shows the same
text for the benchmark folder it reads, so both compute it here, in plain Python: the report
needs no JAX. The figures:

- (a) each diffusion sampler's time per model call over one bare forward of the same shape
  (and AR without its cache), against a jitted call and against a forward inside a compiled
  loop; target :data:`STEP_TARGET`;
- (b) AR time per generated token at batch 1 from the shortest to the longest output, with
  and without the KV cache; the cached growth target is :data:`GROWTH_TARGET`;
- (c) ``mdm_threshold`` against AR with the KV cache at each batch of the tau sweep.

Rows are the ``kind: gen`` lines of the benchmark's ``results.jsonl``; ``refs`` maps
``(family, length, prompt_len)`` to the quality statistics of held-out text.
"""

from __future__ import annotations

import statistics

STEP_TARGET = 1.15        # figure (a): time per diffusion step <= 1.15 x one bare forward
GROWTH_TARGET = 2.0       # figure (b): cached AR time per token grows < 2x from shortest to longest
RUN_FLAG = {"ar": "--ar-run", "mdm": "--mdm-run", "bd3lm": "--bd3lm-run"}  # the bench's trained-run flags


def quality_figure(q: dict | None, ref: dict | None = None) -> str:
    """One quality figure of a point: judge bits per byte under the pretrained judge, else
    gen-perplexity under the in-sandbox judge, else unigram entropy (next to held-out text's,
    a description, never a ranking); ``-`` without quality."""
    if not q:
        return "-"
    if q.get("judge_bpb") is not None:
        s = f"judge {q['judge_bpb']:.2f} bpb"
        return s + (f" (real {ref['judge_bpb']:.2f})" if ref and ref.get("judge_bpb") is not None else "")
    if q.get("gen_ppl") is not None:
        return f"gen-ppl {q['gen_ppl']:.2f}"
    s = f"entropy {q['unigram_entropy']:.2f}"
    if ref:
        s += f" (real {ref['unigram_entropy']:.2f})"
    return s


def summarize(rows: list[dict], refs: dict | None = None) -> dict:
    """Figures (a), (b), (c) from the gen rows."""
    refs = refs or {}
    out: dict = {"a": {}, "b": {}, "c": {}}
    # (a) time per model call of each diffusion sampler (and AR without cache) vs one bare
    # forward of the same shape: a jitted call, and a forward inside a compiled loop
    def ratios(key, rs):
        v = [r[key] for r in rs if r.get(key)]
        return {"median": statistics.median(v), "max": max(v), "min": min(v), "points": len(v),
                "within": sum(x <= STEP_TARGET for x in v), "target": STEP_TARGET} if v else None

    names = sorted({r["sampler"] for r in rows if r["family"] == "mdm"}) + ["ar_nocache"]
    for name in names:
        rs = [r for r in rows if (r["label"] if name == "ar_nocache" else r["sampler"]) == name]
        if rs and ratios("step_over_forward", rs):
            out["a"][name] = {**ratios("step_over_forward", rs), "loop": ratios("step_over_forward_loop", rs)}
    # (b) AR time per generated token at batch 1, shortest vs longest output, cache vs none
    for label in ("ar", "ar_nocache"):
        rs = sorted((r for r in rows if r["label"] == label and r["batch"] == 1 and "length" in r["sweeps"]),
                    key=lambda r: r["length"])
        if len(rs) >= 2:
            lo, hi = rs[0], rs[-1]
            out["b"][label] = {"length_lo": lo["length"], "length_hi": hi["length"],
                               "per_token_lo_s": lo["latency_per_token_s"],
                               "per_token_hi_s": hi["latency_per_token_s"],
                               "growth": hi["latency_per_token_s"] / lo["latency_per_token_s"],
                               "length_ratio": hi["length"] / lo["length"],
                               "per_token_s": {r["length"]: r["latency_per_token_s"] for r in rs}}
    if "ar" in out["b"]:
        out["b"]["ar"]["target"] = GROWTH_TARGET
    # (c) mdm_threshold against AR (cache) at each batch of the tau sweep
    for b in sorted({r["batch"] for r in rows if r["sampler"] == "mdm_threshold" and "tau" in r["sweeps"]}):
        th = [r for r in rows if r["sampler"] == "mdm_threshold" and "tau" in r["sweeps"] and r["batch"] == b]
        ar = [r for r in rows if r["label"] == "ar" and r["batch"] == b and r["length"] == th[0]["length"]
              and r["prompt_len"] == th[0]["prompt_len"]]
        a = ar[0] if ar else None
        entry = {"length": th[0]["length"], "ar": None, "threshold": []}
        if a:
            entry["ar"] = {"latency_per_seq_s": a["latency_per_seq_s"], "tokens_per_s": a["tokens_per_s"],
                           "nfe": a["nfe"], "quality": a.get("quality")}
        for r in sorted(th, key=lambda r: r["settings"]["tau"]):
            entry["threshold"].append({
                "tau": r["settings"]["tau"], "nfe": r["nfe"], "tokens_per_forward": r["tokens_per_forward"],
                "latency_per_seq_s": r["latency_per_seq_s"], "tokens_per_s": r["tokens_per_s"],
                "speedup_vs_ar": a["latency_s"] / r["latency_s"] if a else None, "quality": r.get("quality")})
        out["c"][str(b)] = entry
    return out


def format_summary(s: dict, rows: list[dict], skipped: list[dict], refs: dict, random_fams: list[str]) -> str:
    lines = ["", "Summary"]
    lines.append(f"(a) time per model call / one bare forward of the same shape (target <= {STEP_TARGET}):")
    if not s["a"]:
        lines.append("    no diffusion points measured")
    def verdict(a):
        missed = a["points"] - a["within"]
        return "met" if not missed else f"NOT met at {missed} of {a['points']}"

    for name, a in s["a"].items():
        lines.append(f"    {name:<20} vs a jitted call: median {a['median']:.3f}, min {a['min']:.3f}, max "
                     f"{a['max']:.3f} over {a['points']} points: {verdict(a)}")
        if a.get("loop"):
            lp = a["loop"]
            lines.append(f"    {'':<20} vs a forward in a compiled loop: median {lp['median']:.3f}, "
                         f"min {lp['min']:.3f}, max {lp['max']:.3f}: {verdict(lp)}")
    ar_ratio = [r["step_over_forward"] for r in rows if r["label"] == "ar"]
    if ar_ratio:
        lines.append(f"    {'ar (KV cache)':<20} a cached step costs {min(ar_ratio):.3f} .. "
                     f"{max(ar_ratio):.3f} of a full causal forward of the buffer")
    lines.append(f"(b) AR time per generated token at batch 1 (cache target: grows < {GROWTH_TARGET:g}x):")
    if not s["b"]:
        lines.append("    needs ar / ar_nocache at two or more --lengths")
    for label, b in s["b"].items():
        name = "KV cache" if label == "ar" else "no cache"
        per = ", ".join(f"{k}: {1e3 * v:.3f}" for k, v in b["per_token_s"].items())
        verdict = ""
        if label == "ar":
            verdict = "; target met" if b["growth"] < GROWTH_TARGET else "; target NOT met"
        lines.append(f"    {name:<9} ms/token {per} -> x{b['growth']:.2f} from {b['length_lo']} to "
                     f"{b['length_hi']} (lengths x{b['length_ratio']:g}){verdict}")
    lines.append("(c) mdm_threshold against AR with the KV cache:")
    if not s["c"]:
        lines.append("    needs mdm_threshold points of the tau sweep")
    for b, c in s["c"].items():
        a = c["ar"]
        head = f"    batch {b}, length {c['length']}: AR "
        if a:
            ref = refs.get(("ar", c["length"], 0))
            head += (f"{1e3 * a['latency_per_seq_s']:.1f} ms/seq, {a['tokens_per_s']:,.0f} tokens/s"
                     + (f", {quality_figure(a['quality'], ref)}" if a.get("quality") else ""))
        else:
            head += "not measured"
        lines.append(head)
        ref = refs.get(("mdm", c["length"], 0))
        for t in c["threshold"]:
            sp = f", x{t['speedup_vs_ar']:.2f} AR's speed" if t["speedup_vs_ar"] else ""
            q = f", {quality_figure(t['quality'], ref)}" if t.get("quality") else ""
            lines.append(f"      tau {t['tau']:<5g} NFE {t['nfe']:.1f} ({t['tokens_per_forward']:.2f} "
                         f"tokens/forward), {1e3 * t['latency_per_seq_s']:.1f} ms/seq, "
                         f"{t['tokens_per_s']:,.0f} tokens/s{sp}{q}")
    for sk in skipped:
        lines.append(f"    skipped: {sk['label']} {sk['settings_text']} batch {sk['batch']} "
                     f"length {sk['length']}: {sk['reason']}")
    if random_fams:
        flags = "/".join(RUN_FLAG.values())
        lines.append(f"note: {', '.join(random_fams)} weights are random (no {flags}): speed "
                     "does not depend on the weights, except mdm_threshold's NFE (no token reaches tau, so "
                     "one token per call) and ancestral's skipped calls; quality figures of random weights "
                     "mean nothing")
    return "\n".join(lines)
