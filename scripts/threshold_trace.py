"""Why a confidence-threshold sampler collapses: replay ``mdm_threshold`` step by step on a
trained masked-diffusion run and print what each step sees and reveals.

    python scripts/threshold_trace.py runs/demo/mdlm [--tau 0.9] [--length 128] [--batch 16]

For each ``order`` (confidence: Fast-dLLM's pick of the most confident draw; random: the
uniform pick that ``order=auto`` uses for drawn tokens) it prints, for the first steps, how
many positions are still masked, how many the step reveals, the share of the reveals that
are the step's most frequent token (and which), the mean and largest model probability of
the most likely token over the masked positions, and how many masked positions share one
argmax token; then the unigram entropy of the finished samples next to held-out text's.
A diagnostic, not a hot path: one jitted forward per step, driven from Python, through the
sampler's own ``predict`` and ``reveal`` (the compiled loop's step), with the same keys.
"""

from __future__ import annotations

import argparse
import collections

import jax
import jax.numpy as jnp
import numpy as np

from sandbox.core.runs import load_run
from sandbox.eval.metrics import unigram_entropy
from sandbox.eval.quality import reference_windows
from sandbox.samplers.mdm import Threshold


def trace(run, sampler, *, batch: int, length: int, seed: int, show: int):
    tok = run.tokenizer
    predict = jax.jit(lambda z: sampler.predict(run.model, z))
    reveal = jax.jit(sampler.reveal)
    z = jnp.full((batch, length), sampler.mask_id, jnp.int32)
    eligible = jnp.ones((batch, length), bool)
    key = jax.random.PRNGKey(seed)
    print(f"{'step':>4} {'masked':>6} {'reveal':>6} {'top share':>9} {'token':>6} "
          f"{'mean pmax':>9} {'max pmax':>8} {'same argmax':>11}")
    step = 0
    while bool(jnp.any(z == sampler.mask_id)):
        logits = predict(z)
        take, x, _ = reveal(jax.random.fold_in(key, step), logits, z, eligible)
        masked = np.asarray(z == sampler.mask_id)
        if step < show or step % 20 == 0:
            p = np.asarray(jax.nn.softmax(logits, axis=-1))
            pmax, arg = p.max(-1)[masked], p.argmax(-1)[masked]
            got = np.asarray(x)[np.asarray(take)]
            (top, n_top), = collections.Counter(got.tolist()).most_common(1)
            same = collections.Counter(arg.tolist()).most_common(1)[0][1] / len(arg)
            print(f"{step:>4} {masked.sum():>6} {len(got):>6} {n_top / len(got):>9.2f} "
                  f"{tok.decode([top])!r:>6} {pmax.mean():>9.2f} {pmax.max():>8.2f} {same:>11.2f}")
        z = jnp.where(take, x, z)
        step += 1
    return np.asarray(z), step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--tau", type=float, default=0.9)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=8, help="print every step below this, then every 20th")
    a = p.parse_args()
    run = load_run(a.run_dir)
    ref = reference_windows(run, "val", 64, a.length)
    print(f"held-out text: unigram entropy {unigram_entropy(list(ref)):.3f} bits")
    for order in ("confidence", "random"):
        s = Threshold(tau=a.tau, order=order).bind(run.tokenizer)
        print(f"\norder={order}, tau={a.tau}")
        out, steps = trace(run, s, batch=a.batch, length=a.length, seed=a.seed, show=a.show)
        print(f"-> {steps} forwards, unigram entropy {unigram_entropy(list(out)):.3f} bits; sample 0: "
              f"{run.tokenizer.decode([int(t) for t in out[0]])[:80]!r}")


if __name__ == "__main__":
    main()
