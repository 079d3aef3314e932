"""Tests of the objectives (AR, MDLM) and masking schedules, mostly against stub models.

The stubs are plain callables ``(tokens, mask_kind=..., positions=None, t=None) -> logits``
with logits that are known functions of the input, so every loss can be recomputed by hand.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from omegaconf import OmegaConf

from sandbox.core.build import compose, init_sharded_state, split_model
from sandbox.core.errors import UserError
from sandbox.core.mesh import build_layout
from sandbox.core.optim import make_optimizer
from sandbox.core.step import make_train_step
from sandbox.data import ByteTokenizer
from sandbox.models.logits import suppress
from sandbox.models.transformer import Transformer
from sandbox.objectives import AR, MDLM


def log_softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


# ----------------------------------------------------------------------------- AR


def test_ar_loss_is_the_hand_computed_shifted_cross_entropy():
    vocab, bos, b, length = 7, 6, 3, 5
    rng = np.random.default_rng(0)
    table = rng.normal(size=(length, vocab, vocab)).astype(np.float32) * 2.0  # [pos, input, out]
    seen = {}

    def stub(tokens, mask_kind="causal", positions=None, t=None):
        seen["tokens"], seen["mask_kind"] = np.asarray(tokens), mask_kind
        return jnp.asarray(table)[jnp.arange(tokens.shape[1])[None, :], tokens]  # [B, L, V]

    x = rng.integers(0, 6, size=(b, length)).astype(np.int32)
    obj = AR().bind(SimpleNamespace(bos_id=bos, vocab_size=vocab))
    loss, metrics = obj.loss(stub, jnp.asarray(x), jax.random.PRNGKey(0))

    # the model reads [BOS, x_0 .. x_{L-2}] under a causal mask and predicts x_0 .. x_{L-1}
    inputs = np.concatenate([np.full((b, 1), bos), x[:, :-1]], axis=1)
    np.testing.assert_array_equal(seen["tokens"], inputs)
    assert seen["mask_kind"] == "causal"
    ce = np.zeros((b, length))
    for i in range(b):
        for pos in range(length):
            ce[i, pos] = -log_softmax(table[pos, inputs[i, pos]])[x[i, pos]]
    assert float(loss) == pytest.approx(ce.mean(), rel=1e-5)
    assert float(metrics["nll"]) == pytest.approx(ce.mean(), rel=1e-5)
    # nll is exact: one draw, one value per sequence
    nll = obj.nll(stub, jnp.asarray(x), jax.random.PRNGKey(1))
    assert nll.shape == (1, b)
    np.testing.assert_allclose(np.asarray(nll[0]), ce.mean(axis=1), rtol=1e-5)


def test_ar_needs_bind():
    with pytest.raises(AssertionError, match="bind"):
        AR().loss(lambda t, **k: jnp.zeros((*t.shape, 4)), jnp.zeros((1, 3), jnp.int32), None)


# ----------------------------------------------------------------------------- MDLM stubs

# Vocabulary {0, 1, 2} plus the mask token 3; sequences of length 4.
MV, MASK, ML = 3, 3, 4
MTOK = SimpleNamespace(mask_id=MASK, bos_id=MASK + 1, vocab_size=MV + 1)
X = np.array([0, 2, 1, 2], np.int32)
_TABLE = np.random.default_rng(1).normal(size=((MV + 1) ** ML, ML, MV + 1)).astype(np.float32) * 1.5


def table_model(tokens, mask_kind="bidirectional", positions=None, t=None):
    """Logits [B, L, 4] depend on the whole input z: a fixed random table row per z."""
    assert mask_kind == "bidirectional"
    code = jnp.sum(tokens * (MV + 1) ** jnp.arange(tokens.shape[1]), axis=-1)  # unique per z
    return jnp.asarray(_TABLE)[code]


def exact_mdlm_nelbo(x: np.ndarray) -> float:
    """E_t E_{z_t}[ w(t) sum_{l masked} CE_l(z_t) ] / L, exactly, for the linear schedule.

    Each position is masked independently with probability 1 - alpha(t) = t, so a
    pattern m with |m| = k has probability t^k (1 - t)^(L - k), and the weight is 1/t:

        E = sum_m  [ int_0^1 (1/t) t^k (1-t)^(L-k) dt ]  sum_{l in m} CE_l(z_m)
          = sum_{m != {}} B(k, L - k + 1) sum_{l in m} CE_l(z_m),

    since int_0^1 t^(k-1) (1-t)^(L-k) dt = B(k, L-k+1) (the empty pattern contributes 0).
    The ELBO does not depend on the schedule (substitute s = 1 - alpha(t)), so the same
    value holds for cosine and polynomial. SUBS: the mask logit is -inf, so CE uses a
    softmax over the 3 real tokens only.
    """
    length = len(x)
    total = 0.0
    for m in itertools.product([0, 1], repeat=length):
        k = sum(m)
        if k == 0:
            continue
        z = np.where(np.array(m, bool), MASK, x)
        code = int(np.sum(z * (MV + 1) ** np.arange(length)))
        logp = log_softmax(_TABLE[code][:, :MV])  # mask token suppressed
        ce = sum(-logp[pos, x[pos]] for pos in range(length) if m[pos])
        beta = math.gamma(k) * math.gamma(length - k + 1) / math.gamma(length + 1)
        total += beta * ce
    return total / length


def _mc(fn, n_keys: int, seed: int = 0) -> np.ndarray:
    keys = jax.random.split(jax.random.PRNGKey(seed), n_keys)
    return np.asarray(jax.jit(jax.vmap(fn))(keys), np.float64)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "polynomial"])
def test_mdlm_loss_is_an_unbiased_estimate_of_the_exact_nelbo(schedule):
    exact = exact_mdlm_nelbo(X)
    obj = MDLM(schedule=make_schedule(schedule, 3.0), t_min=0.0).bind(MTOK)
    batch = jnp.asarray(np.tile(X, (8, 1)))  # 8 copies: the antithetic times span [0, 1)

    def one_nelbo(key):  # the single-draw estimator at a uniform time
        kt, km = jax.random.split(key)
        return obj.nelbo(table_model, batch[:1], km, jax.random.uniform(kt, (1,)))[0]

    def one_loss(key):
        return obj.loss(table_model, batch, key)[0]

    for fn, n in ((one_nelbo, 40_000), (one_loss, 20_000)):
        v = _mc(fn, n)
        se = v.std(ddof=1) / math.sqrt(n)
        assert se < 0.02 * exact  # precise enough that a biased weight would be caught
        assert abs(v.mean() - exact) < 4 * se, (fn.__name__, v.mean(), exact, se)


def test_mdlm_nll_draws_are_unbiased_and_stratified():
    exact = exact_mdlm_nelbo(X)
    obj = MDLM(eval_t_min=0.0).bind(MTOK)
    batch = jnp.asarray(np.stack([X, X]))
    k, n = 4, 10_000
    draws = _mc(lambda key: obj.nll(table_model, batch, key, k), n)  # [n, K, B]
    assert draws.shape == (n, k, 2)
    per_key = draws.mean(axis=(1, 2))
    se = per_key.std(ddof=1) / math.sqrt(n)
    assert abs(per_key.mean() - exact) < 4 * se, (per_key.mean(), exact, se)
    # the K times of a sequence are stratified, so the K-draw mean varies less than one draw
    assert draws.mean(axis=1)[:, 0].var() < 0.5 * draws[:, 0, 0].var()


def _smooth_model(vocab: int):
    """Logits that depend on each input token and its position (deterministic)."""
    rng = np.random.default_rng(2)
    emb = jnp.asarray(rng.normal(size=(vocab, vocab)).astype(np.float32))
    pos = jnp.asarray(rng.normal(size=(64, vocab)).astype(np.float32))

    def model(tokens, mask_kind="bidirectional", positions=None, t=None):
        return emb[tokens] + pos[: tokens.shape[1]]

    return model


def test_mdlm_unmasked_positions_contribute_nothing():
    vocab = 12
    tok = SimpleNamespace(mask_id=10, bos_id=11, vocab_size=vocab)
    obj = MDLM().bind(tok)
    base = _smooth_model(vocab)
    noise = jnp.asarray(np.random.default_rng(3).normal(size=(4, 16, vocab)).astype(np.float32)) * 5

    def perturb(where_masked: bool):
        def model(z, **kw):
            hit = (z == tok.mask_id) if where_masked else (z != tok.mask_id)
            return base(z, **kw) + jnp.where(hit[..., None], noise, 0.0)
        return model

    x = jnp.asarray(np.random.default_rng(4).integers(0, 10, size=(4, 16)).astype(np.int32))
    key = jax.random.PRNGKey(5)
    t = jnp.full((4,), 0.5)
    z, masked = obj.corrupt(key, x, t)
    assert 0 < int(masked.sum()) < masked.size  # both kinds of position are present
    np.testing.assert_array_equal(np.asarray(z)[np.asarray(masked)], tok.mask_id)
    np.testing.assert_array_equal(np.asarray(z)[~np.asarray(masked)], np.asarray(x)[~np.asarray(masked)])

    ref = obj.nelbo(base, x, key, t)
    np.testing.assert_array_equal(obj.nelbo(perturb(False), x, key, t), ref)
    assert float(jnp.max(jnp.abs(obj.nelbo(perturb(True), x, key, t) - ref))) > 1e-2

    ref_loss = obj.loss(base, x, key)[0]
    assert float(obj.loss(perturb(False), x, key)[0]) == float(ref_loss)
    assert float(obj.loss(perturb(True), x, key)[0]) != pytest.approx(float(ref_loss), rel=1e-3)


def test_mdlm_subs_suppresses_the_mask_logit():
    vocab = 12
    tok = SimpleNamespace(mask_id=10, bos_id=11, vocab_size=vocab)
    obj = MDLM().bind(tok)
    z = jnp.asarray([[0, 10, 3, 10], [10, 10, 10, 10]], jnp.int32)
    logits = obj.logits(_smooth_model(vocab), z)
    assert logits.shape == (2, 4, vocab)
    assert bool(jnp.all(jnp.isneginf(logits[..., tok.mask_id])))
    others = jnp.delete(logits, tok.mask_id, axis=-1)
    assert bool(jnp.all(jnp.isfinite(others)))
    # the model's probability of predicting [MASK] is exactly zero
    assert float(jnp.max(jax.nn.softmax(logits, axis=-1)[..., tok.mask_id])) == 0.0


def test_mdlm_needs_bind():
    with pytest.raises(AssertionError, match="bind"):
        MDLM().loss(_smooth_model(4), jnp.zeros((2, 3), jnp.int32), jax.random.PRNGKey(0))


# ----------------------------------------------------------------------------- schedules


def make_schedule(name: str, power: float = 2.0):
    """The schedule ``objective/schedule=<name>`` selects (conf/objective/schedule/), as the trainer
    builds it."""
    import hydra

    over = [f"objective.schedule.power={power}"] if name == "polynomial" else []
    cfg = compose(["objective=mdlm", f"objective/schedule={name}", *over])
    return hydra.utils.instantiate(cfg.objective.schedule)


@pytest.mark.parametrize("name,power", [("linear", 2.0), ("cosine", 2.0), ("polynomial", 2.0),
                                        ("polynomial", 3.0)])
def test_schedule_endpoints_and_weight(name, power):
    s = make_schedule(name, power)
    assert float(s.alpha(jnp.float32(0.0))) == pytest.approx(1.0, abs=1e-6)
    assert float(s.alpha(jnp.float32(1.0))) == pytest.approx(0.0, abs=1e-6)
    ts = jnp.linspace(0.0, 1.0, 101)
    a = s.alpha(ts)
    assert bool(jnp.all(jnp.diff(a) < 0))  # strictly decreasing: masking only grows
    dalpha = jax.vmap(jax.grad(lambda t: s.alpha(t)))
    for t in (0.05, 0.2, 0.5, 0.8, 0.95):
        t = jnp.float32(t)
        expected = -dalpha(t[None])[0] / (1.0 - s.alpha(t))
        assert float(s.weight(t)) == pytest.approx(float(expected), rel=1e-4)


def test_linear_weight_is_one_over_t():
    s = make_schedule("linear")
    for t in (0.1, 0.25, 0.9):
        assert float(s.weight(jnp.float32(t))) == pytest.approx(1 / t, rel=1e-6)


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(UserError, match="objective/schedule=sigmoid: unknown option") as e:
        make_schedule("sigmoid")
    assert "cosine" in str(e.value) and "polynomial" in str(e.value)
    with pytest.raises(UserError, match="schedule"):
        MDLM(schedule="sigmoid")  # a name, not a schedule object


@pytest.mark.parametrize("n", [1, 7, 8, 64])
def test_antithetic_times_are_stratified(n):
    obj = MDLM()
    for seed in range(5):
        t = np.sort(np.asarray(obj.sample_times(jax.random.PRNGKey(seed), n, 0.0), np.float64))
        assert t.shape == (n,)
        np.testing.assert_array_equal(np.floor(t * n), np.arange(n))  # one point per [i/n, (i+1)/n)


def test_sample_times_respect_t_min():
    for antithetic in (True, False):
        obj = MDLM(antithetic=antithetic)
        t = np.asarray(obj.sample_times(jax.random.PRNGKey(0), 256, 0.1))
        assert t.min() >= 0.1 and t.max() <= 1.0
        assert t.min() < 0.15 and t.max() > 0.95  # still covers the interval


# ----------------------------------------------------------------------------- overfitting


def _overfit(objective, steps):
    """Train a tiny Transformer on one fixed batch; returns the per-step training losses."""
    tok = ByteTokenizer()
    text = b"the quick brown fox jumps over the lazy dog; pack my box with five dozen jugs."
    rows = np.frombuffer(text[:64], np.uint8).astype(np.int32).reshape(2, 32)
    # two sequences, four copies each: MDLM's antithetic times then cover [0, 1) per sequence
    batch = jnp.asarray(np.repeat(rows, 4, axis=0))
    model = Transformer(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2,
                        max_len=64, attention="chunked", attn_chunk=32, rngs=nnx.Rngs(0))
    objective = objective.bind(tok)
    objective.check(model, tok)
    optim = OmegaConf.create(dict(lr=3e-3, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0,
                                  warmup_steps=1, min_lr_ratio=1.0, grad_clip=1.0))
    tx, _ = make_optimizer(optim, steps)
    graphdef, params = split_model(model)
    layout = build_layout(None)  # mesh=single: the trainer's step on one device
    state = init_sharded_state(params, tx, layout)
    step = make_train_step(graphdef, objective, tx, 0.99, layout, state)
    losses = []
    for i in range(steps):
        state, m = step(state, batch, jax.random.PRNGKey(i))
        losses.append(float(m["loss"]))
    assert int(state["step"]) == steps
    return np.array(losses)


def test_overfitting_one_batch_ar():
    losses = _overfit(AR(), steps=60)
    assert np.all(np.isfinite(losses))
    assert losses[0] == pytest.approx(math.log(260), rel=0.15)  # starts near uniform
    assert losses[-5:].mean() < 0.5 * losses[:5].mean(), losses


def test_overfitting_one_batch_mdlm():
    # The NELBO is a noisy single-draw estimate: compare 5-step averages, and give it more
    # steps than AR (at 60 steps it reaches only ~0.47x its start; at 100, ~0.3x).
    losses = _overfit(MDLM(), steps=100)
    assert np.all(np.isfinite(losses))
    assert losses[-5:].mean() < 0.5 * losses[:5].mean(), losses


# ----------------------------------------------------------------------------- pairing checks


class _StubModel:
    def __init__(self, masks, vocab_size):
        self.supported_masks = masks
        self.vocab_size = vocab_size
        self.name = "stub"


def test_check_rejects_a_model_without_the_needed_mask():
    tok = ByteTokenizer()
    causal_only = _StubModel(("causal",), tok.vocab_size)
    AR().bind(tok).check(causal_only, tok)  # fine for AR
    with pytest.raises(UserError, match="bidirectional"):
        MDLM().bind(tok).check(causal_only, tok)
    bidi_only = _StubModel(("bidirectional",), tok.vocab_size)
    with pytest.raises(UserError, match="causal"):
        AR().bind(tok).check(bidi_only, tok)


@pytest.mark.parametrize("objective", [AR(), MDLM()], ids=["ar", "mdlm"])
def test_check_rejects_a_vocabulary_mismatch(objective):
    tok = ByteTokenizer()
    model = _StubModel(("causal", "bidirectional"), tok.vocab_size + 1)
    with pytest.raises(UserError, match="vocabulary"):
        objective.bind(tok).check(model, tok)
    objective.bind(tok).check(_StubModel(("causal", "bidirectional"), tok.vocab_size), tok)


def test_bind_takes_the_special_ids_from_the_tokenizer():
    tok = ByteTokenizer()
    assert AR().bind(tok).bos_id == tok.bos_id
    assert MDLM().bind(tok).mask_id == tok.mask_id
    assert tok.mask_id != tok.bos_id


def test_a_causal_denoiser_is_checked_and_carried_to_its_sampler():
    """objective.mask_kind=causal: the loss reads the model under the causal mask, the label
    says so, the masked-diffusion sampler decodes under the run's mask, and the settings a
    causal denoiser cannot use are one-line refusals."""
    from sandbox.samplers.mdm import MaskedDiffusionSampler

    tok = ByteTokenizer()
    seen = []

    def spy(tokens, mask_kind="bidirectional", positions=None, t=None):
        seen.append(mask_kind)
        return jnp.zeros((*tokens.shape, tok.vocab_size), jnp.float32)

    obj = MDLM(mask_kind="causal").bind(tok)
    assert obj.label == "mdlm(causal)"
    loss, _ = obj.loss(spy, jnp.zeros((2, 8), jnp.int32), jax.random.PRNGKey(0))
    assert np.isfinite(float(loss)) and seen == ["causal"]
    s = MaskedDiffusionSampler().bind(tok).for_checkpoint(obj)
    assert s.mask_kind == "causal" and s.settings()["mask_kind"] == "causal"
    assert "mask_kind" not in MaskedDiffusionSampler().for_checkpoint(MDLM()).settings()
    with pytest.raises(UserError, match="sampler.cache"):
        s.replace(cache="prefix", block_size=4, steps=4).check(family="mdm", length=16, prompt_len=8)
    for kw, field in [({"mask_kind": "block"}, "objective.mask_kind"),
                      ({"mask_kind": "causal", "prompt_attention": "self"}, "prompt_attention")]:
        with pytest.raises(UserError, match=field) as e:
            MDLM(**kw)
        assert "\n" not in str(e.value)


def test_logit_shift_is_refused_by_objectives_that_read_logits_in_their_own_layout():
    tok = ByteTokenizer()
    model = Transformer(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, max_len=32,
                        logit_shift=True, rngs=nnx.Rngs(0))
    with pytest.raises(UserError, match="logit_shift") as e:
        AR().bind(tok).check(model, tok)
    assert "\n" not in str(e.value)
    MDLM().bind(tok).check(model, tok)  # masked diffusion reads one logit per position: allowed


def test_the_hybrid_adds_the_clean_next_token_loss_of_the_same_weights():
    """objective.ar_weight: the loss is the NELBO plus ar_weight x the next-token loss of the
    clean sequence through the causal shifted denoiser (the same draw of masks and times), and
    the settings it cannot work with are one-line refusals."""
    tok = ByteTokenizer()
    model = Transformer(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, max_len=32,
                        logit_shift=True, rngs=nnx.Rngs(0))
    x = jax.random.randint(jax.random.PRNGKey(1), (3, 12), 0, 256)
    cond = jnp.arange(12)[None, :].repeat(3, 0) < 4                  # a 4-token prompt
    key = jax.random.PRNGKey(2)
    plain = MDLM(mask_kind="causal").bind(tok)
    hybrid = MDLM(mask_kind="causal", ar_weight=0.5).bind(tok)
    hybrid.check(model, tok)
    assert hybrid.label == "mdlm(causal,ar=0.5)"
    base, _ = plain.loss(model, x, key, cond=cond)
    total, metrics = hybrid.loss(model, x, key, cond=cond)
    logits = suppress(model(x, mask_kind="causal"), (tok.mask_id,))
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), x[..., None], -1)[..., 0]
    ar = jnp.mean(jnp.sum(jnp.where(cond, 0.0, ce), -1) / 8)
    assert float(metrics["ar_nll"]) == pytest.approx(float(ar), rel=1e-5)
    assert float(metrics["nelbo"]) == pytest.approx(float(base), rel=1e-6)
    assert float(total) == pytest.approx(float(base) + 0.5 * float(ar), rel=1e-5)
    unshifted = Transformer(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, max_len=32,
                            rngs=nnx.Rngs(0))
    with pytest.raises(UserError, match="model.logit_shift"):
        hybrid.check(unshifted, tok)
    for kw, field in [({"ar_weight": 0.5}, "mask_kind=causal"), ({"mask_kind": "causal", "ar_weight": -1},
                                                                  "ar_weight=-1")]:
        with pytest.raises(UserError, match=field) as e:
            MDLM(**kw)
        assert "\n" not in str(e.value)
