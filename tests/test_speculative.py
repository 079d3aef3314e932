"""Self-speculative decoding of a causal shifted denoiser (``sampler=mdm_speculative``).

Its output must be strict left-to-right greedy decoding of the same weights, whatever the
drafts: on a random tiny model (drafts mostly wrong) for every window and draft threshold, with
known canvas tokens (infill) and early stop; on a scripted model whose drafts are right (or
wrong where told) the forwards it makes follow the drafts exactly.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_prompt_cache import TOK, P, T, _model, _seq, _split

from sandbox.core.errors import UserError
from sandbox.objectives import MDLM
from sandbox.samplers import Ancestral, SelfSpeculative, Threshold

CAUSAL = MDLM(mask_kind="causal")
SHIFTED = _model(logit_shift=True)


def _l2r(model_fn, params, z, eos=False):
    """The reference: semi-AR blocks of one token (strict left to right), greedy."""
    ref = Ancestral(steps=T, block_size=1, precision="greedy").bind(TOK).for_checkpoint(CAUSAL)
    tokens, _ = jax.jit(lambda p, z: ref.infill(model_fn(p), jax.random.PRNGKey(0), z, P))(params, z)
    return np.asarray(ref.pad_after_eos(tokens, P) if eos else tokens)


def _spec(model_fn, params, z, **kw):
    s = SelfSpeculative(**kw).bind(TOK).for_checkpoint(CAUSAL)
    s.check(family="mdm", length=P + T, prompt_len=P)
    fn = jax.jit(lambda p, z: s.infill_cost(model_fn(p), jax.random.PRNGKey(0), z, P))
    tokens, nfe, computed = fn(params, z)
    return np.asarray(tokens), int(nfe), int(computed)


SLOW = pytest.mark.slow  # the default suite keeps one case per window (CI's 10-minute budget)


@pytest.mark.parametrize("window,tau,masked", [
    pytest.param(1, 0.0, 1.0, id="generate-1-0.0"),
    pytest.param(1, 0.0, 0.6, id="infill-1-0.0", marks=SLOW),
    pytest.param(3, 0.0, 1.0, id="generate-3-0.0", marks=SLOW),
    pytest.param(3, 0.0, 0.6, id="infill-3-0.0", marks=SLOW),
    pytest.param(3, 0.5, 1.0, id="generate-3-0.5"),
    pytest.param(3, 0.5, 0.6, id="infill-3-0.5"),
    pytest.param(16, 0.0, 1.0, id="generate-16-0.0", marks=SLOW),
    pytest.param(16, 0.0, 0.6, id="infill-16-0.0"),
])
def test_output_is_strict_left_to_right_decoding(window, tau, masked):
    graphdef, params = _split(SHIFTED)
    fn = lambda p: nnx.merge(graphdef, p)  # noqa: E731
    _, z, _ = _seq(b=3, seed=5, masked=masked)
    z = z.at[:, P].set(TOK.mask_id)
    want = _l2r(fn, params, z)
    got, nfe, computed = _spec(fn, params, z, window=window, tau=tau, stop_at_eos=False)
    np.testing.assert_array_equal(got, want)
    known = np.asarray(z) != TOK.mask_id
    np.testing.assert_array_equal(got[known], np.asarray(z)[known])
    assert 1 < nfe <= T + 1 and computed == (P - 1) + (nfe - 1) * window
    if window == 1:                                  # one token per forward: AR with a KV cache
        assert nfe == 1 + T
    # nothing masked: no model call at all
    full = np.asarray(_seq(b=3, seed=5, masked=0.0)[1])
    got, nfe, computed = _spec(fn, params, jnp.asarray(full), window=window, tau=tau)
    np.testing.assert_array_equal(got, full)
    assert nfe == 0 and computed == 0


class Scripted:
    """A causal shifted 'denoiser' with a known answer: the canvas token at position m is
    ``m % 256`` (the prompt ends with ``P - 1``) until an EOS at ``eos_at``. A real input
    token x predicts x + 1 (exact: the verifier); a mask at position m drafts m + 1, or m + 2
    (wrong) where m + 1 is in ``wrong``."""

    logit_shift = True
    vocab_size = TOK.vocab_size

    def __init__(self, wrong=(), eos_at=None):
        self.wrong, self.eos_at = jnp.asarray(tuple(wrong) or (-1,)), eos_at

    def init_cache(self, b, n):
        return [jnp.zeros((b, n))]

    def decode(self, tokens, cache, pos):
        m = pos + jnp.arange(tokens.shape[1])[None, :]
        drafted = jnp.where(jnp.isin(m + 1, self.wrong), m + 2, m + 1)
        target = jnp.where(tokens == TOK.mask_id, drafted, tokens + 1) % 256
        if self.eos_at is not None:
            target = jnp.where(m + 1 == self.eos_at, TOK.eos_id, target)
        return 10.0 * jax.nn.one_hot(target, self.vocab_size), cache


def _scripted_canvas():
    z = np.full((1, P + T), TOK.mask_id, np.int32)
    z[0, :P] = np.arange(P) % 256
    return jnp.asarray(z)


def test_right_drafts_are_accepted_and_wrong_ones_cost_a_forward():
    z, truth = _scripted_canvas(), np.arange(P + T)[None] % 256
    model = Scripted()
    got, nfe, _ = _spec(lambda p: model, None, z, window=4)
    np.testing.assert_array_equal(got, truth)
    # prompt pass; then 1 token + 3 drafts, 4 tokens (3 accepted + the fix), 1 + 3 drafts, 4
    assert nfe == 1 + 4
    np.testing.assert_array_equal(_l2r(lambda p: model, None, z), truth)
    slow = Scripted(wrong=(P + 2,))                  # the draft of the third token is wrong
    got, nfe_w, _ = _spec(lambda p: slow, None, z, window=4)
    np.testing.assert_array_equal(got, truth)        # the verifier fixes it: same output
    assert nfe_w > nfe
    got, nfe_1, _ = _spec(lambda p: model, None, z, window=1)
    np.testing.assert_array_equal(got, truth)
    assert nfe_1 == 1 + T


def test_a_row_stops_at_its_first_final_eos():
    z = _scripted_canvas()
    model = Scripted(eos_at=P + 5)
    got, nfe, _ = _spec(lambda p: model, None, z, window=4, stop_at_eos=True)
    want = np.arange(P + T) % 256
    want[P + 5:] = TOK.eos_id
    np.testing.assert_array_equal(got[0], want)
    np.testing.assert_array_equal(_l2r(lambda p: model, None, z, eos=True)[0], want)
    assert nfe == 1 + 3                              # 1 token, 4, then the EOS: stopped


def test_bad_settings_and_models_are_refused_in_one_line():
    errors = []
    ok = SelfSpeculative().bind(TOK)
    for bad in (ok.replace(precision="exact"), ok.for_checkpoint(MDLM()), ok.replace(window=0),
                ok.replace(tau=1.5), ok.replace(block_size=4)):
        with pytest.raises(UserError) as e:
            bad.check(family="mdm", length=P + T, prompt_len=P)
        errors.append(str(e.value))
    graphdef, params = _split(_model())              # no logit shift: a draft cannot be verified
    z = _seq(b=1)[1]
    with pytest.raises(UserError) as e:
        ok.for_checkpoint(CAUSAL).infill(nnx.merge(graphdef, params), jax.random.PRNGKey(0), z, P)
    errors.append(str(e.value))
    assert all("\n" not in m and ("mdm_speculative" in m or "sampler." in m) for m in errors), errors
    assert "window" in errors[2] and "precision" in errors[0] and "causal" in errors[1]
    # the other masked-diffusion samplers are unchanged by it
    assert Threshold().bind(TOK).for_checkpoint(CAUSAL).mask_kind == "causal"


def test_the_roofline_plan_is_the_prompt_pass_then_windows():
    s = SelfSpeculative(window=4).bind(TOK)
    assert s.forward_plan(1, 100, 40, 11) == [(1.0, 1, 39.0, 39.0), (10.0, 1, 4.0, 100.0)]
    assert s.forward_plan(1, 100, 40, 0) == []


def test_an_edit_run_decodes_through_eval_edits_as_left_to_right(tmp_path, sandbox_cache):
    """eval=edits with the run's edit_sampler (objective.edit_sampler=mdm_speculative) on a causal
    shifted conditional run writes the same predictions as strict left-to-right decoding."""
    from conftest import compose
    from test_edits_task import EDIT_RUN

    from sandbox.tasks.edits.evaluate import edits
    from sandbox.train import run

    d = tmp_path / "causal"
    run(compose([*EDIT_RUN, "objective=mdlm", "objective.mask_kind=causal", "+model.logit_shift=true",
                 "objective.edit_sampler=mdm_speculative", f"cache_dir={sandbox_cache}"]), d)

    def cfg(*extra):
        return compose([f"run_dir={d}", "eval=edits", "max_per_kind=1", "kinds=[swap_op,rename]",
                        "progress=false", "variants=[canvas]", *extra], config_name="evaluate")

    spec = edits(cfg())[0]
    l2r = edits(cfg("sampler=mdm_ancestral", "sampler.block_size=1", "sampler.steps=320"))[0]
    assert spec["sampler"] == "mdm_speculative" and spec["n"] == l2r["n"] == 2
    outs = [[json.loads(x)["output"] for x in open(r["predictions"])] for r in (spec, l2r)]
    assert outs[0] == outs[1]
    assert 1 < spec["nfe_per_edit"] <= l2r["nfe_per_edit"]
