"""Absorbing-state masked diffusion (MDLM: Sahoo et al. 2024; MD4: Shi et al. 2024).

Forward process: each token of ``x[B, L]`` is independently replaced by ``[MASK]`` with
probability ``1 - alpha(t)``. The continuous-time negative ELBO (MDLM eq. 10, MD4 eq. 5)

    NELBO(x) = E_{t ~ U[0,1]} E_{z_t} [ w(t) sum_{l : z_t^l = MASK} -log p_theta(x^l | z_t) ],
    w(t) = -alpha'(t) / (1 - alpha(t))        (1/t for the linear schedule)

is an upper bound on -log p(x); divided by L it is in nats per token. With
``alpha(1) = 0`` and ``alpha(0) = 1`` the prior and reconstruction terms vanish.

Design choices:
- SUBS parameterisation: the logit of ``[MASK]`` is suppressed (the model never predicts
  a mask) and unmasked positions carry their input (they contribute nothing to the loss;
  samplers copy them).
- Antithetic (stratified) time sampling across the batch: ``t_b = (u + b/B) mod 1``,
  which lowers the variance of the batch mean at no cost.
- Training clips ``t`` to ``[t_min, 1]`` for stability (w(t) ~ 1/t).
- Evaluation (``nll``) uses the same bound in its masked-count form. Integrating t out of
  the linear-schedule NELBO with ``int_0^1 (1/t) Binom(k; L, t) dt = 1/k`` gives

      NELBO(x) / L = E_{k ~ U{1..L}} E_{m : |m| = k} [ mean_{l in m} -log p_theta(x^l | x_m) ]

  (the continuous-time ELBO does not depend on the schedule: MD4 Sec. 4, Ou et al. 2024),
  an unbiased estimator of the *unclipped* bound whose draws are bounded, unlike the
  time form whose 1/t weight gives draws of infinite variance near t = 0. ``K`` draws
  per sequence are stratified over k and the evaluator reports their standard error.
  ``eval_estimator=time`` keeps the time form (clipped at ``eval_t_min``) for comparison.
- Conditional data (``cond[B, L]`` True on a clean prompt, ``sandbox.tasks.edits.task``): only
  positions outside the prompt are ever masked or scored, and the bound is divided by their
  number, so it bounds -log p(target | prompt) per target token (the count form then draws
  k ~ U{1..#target}).
- ``prompt_attention`` (conditional data only): ``full`` (default; every position sees every
  position) or ``self``: the prompt attends only to itself (both directions) while the canvas
  attends to everything (``attention.PromptMask``), in training and in the held-out bound.
  The prompt's keys and values then never depend on the canvas, so a sampler computes them
  once per sequence and runs every diffusion step over the canvas alone (the exact prompt
  cache, ``sandbox.samplers.mdm``). The mask is built from ``cond`` itself, per row, rather
  than from ``data.prompt_len`` bound into the objective: ``cond`` is what defines the prompt
  for the corruption and the scoring already, so mask and loss cannot disagree, the objective
  needs nothing from the data config, and no layout assumption (equal prompt lengths,
  a leading prompt) is built in. Without ``cond`` (unconditional data) it changes nothing.
- ``mask_kind``: ``bidirectional`` (default, MDLM) or ``causal``: the denoiser of token ``i``
  reads only positions ``<= i`` (with ``model.logit_shift``, ``< i``: an AR model's
  next-token head). The NELBO is unchanged, the denoiser is just a restricted one; it is
  the least disruptive way to turn a pretrained causal LM into a masked-diffusion denoiser
  on a short budget (AR-to-diffusion adaptation keeps the shift and anneals the mask to
  bidirectional over billions of tokens: DiffuLLaMA, Gong et al. 2025; Dream, Ye et al.
  2025). It suits conditional tasks whose prompt carries what the canvas's right context
  would (the edit-native twin, ``sandbox.tasks.edits.native``).
- ``ar_weight`` (causal + ``model.logit_shift`` only): the training loss adds ``ar_weight`` x
  the next-token loss of the clean sequence, read through the same weights (with the shift a
  causal denoiser given no mask *is* a next-token model), in the spirit of Esoteric LMs (Sahoo
  et al. 2025: one model trained with both losses). Why: from a pretrained or AR-trained start,
  masked-diffusion updates alone unlearn what the AR loss taught within tens of steps (measured
  on code edits, ``docs/design.md``), while the AR term keeps every position with a clean
  history trained as the pretrained task. The held-out figure stays the NELBO (an upper bound
  on the diffusion model's -log p); ``ar_nll`` is logged beside it. One extra forward per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from sandbox.core import prng
from sandbox.core.errors import UserError
from sandbox.models.attention import PromptMask
from sandbox.models.logits import suppress
from sandbox.objectives.base import Objective, seq_mean, token_nll
from sandbox.objectives.schedules import Linear

PROMPT_ATTENTION = ("full", "self")


@dataclass(frozen=True)
class MDLM(Objective):
    schedule: object = Linear()  # alpha(t); the objective/schedule group (conf/objective/schedule/)
    t_min: float = 1e-3         # training clip
    eval_estimator: str = "count"  # "count" (bounded draws) or "time" (the training form)
    eval_t_min: float = 0.0     # time-form evaluation clip (0: the full integral)
    eval_draws: int = 8         # K stratified time draws per sequence in nll()
    antithetic: bool = True
    mask_id: int = -1
    name: str = "mdlm"
    mask_kind: str = "bidirectional"
    exact: bool = False
    flops_factor: float = 1.0
    conditional: bool = True
    sampler_family: str = "mdm"
    default_sampler: str = "mdm_ancestral"
    edit_sampler: str | None = "mdm_threshold"
    prompt_attention: str = "full"  # "full" or "self": the prompt attends only to itself (module doc)
    logit_shift_ok: bool = True     # one logit per position, whatever hidden state it is read from
    ar_weight: float = 0.0          # hybrid: + ar_weight x the clean sequence's next-token loss (module doc)

    @property
    def label(self) -> str:
        extra = [] if self.prompt_attention == "full" else ["prompt=self"]
        extra += [] if self.mask_kind == "bidirectional" else [self.mask_kind]
        extra += [f"ar={self.ar_weight:g}"] if self.ar_weight else []
        return f"{self.name}({','.join(extra)})" if extra else self.name

    def __post_init__(self):
        if not (hasattr(self.schedule, "alpha") and hasattr(self.schedule, "weight")):
            raise UserError(f"objective.schedule={self.schedule!r} is not a schedule; select one with "
                            "objective/schedule=linear|cosine|polynomial (conf/objective/schedule/)")
        if self.eval_estimator not in ("count", "time"):
            raise UserError(f"objective.eval_estimator: unknown value '{self.eval_estimator}' "
                            "(choose count or time)")
        if self.mask_kind not in ("bidirectional", "causal"):
            raise UserError(f"objective.mask_kind: unknown value '{self.mask_kind}' (choose bidirectional, "
                            "or causal for a denoiser that reads only the positions before each token)")
        if self.prompt_attention not in PROMPT_ATTENTION:
            raise UserError(f"objective.prompt_attention: unknown value '{self.prompt_attention}' "
                            "(choose full or self)")
        if not self.ar_weight >= 0:
            raise UserError(f"objective.ar_weight={self.ar_weight} must be >= 0 (0: the plain bound)")
        if self.ar_weight and self.mask_kind != "causal":
            raise UserError("objective.ar_weight needs objective.mask_kind=causal (then, with "
                            "model.logit_shift=true, a clean sequence is read as by a next-token model); "
                            "or set ar_weight=0")
        if self.mask_kind == "causal" and self.prompt_attention != "full":
            raise UserError("objective.mask_kind=causal already keeps the prompt from reading the canvas; "
                            "leave objective.prompt_attention at full")

    def bind(self, tokenizer):
        return self.replace(mask_id=int(tokenizer.mask_id))

    def check(self, model, tokenizer) -> None:
        super().check(model, tokenizer)
        if self.ar_weight and not getattr(model, "logit_shift", False):
            raise UserError("objective.ar_weight needs model.logit_shift=true: without the shift a causal "
                            "denoiser's logit at a clean token reads that token itself")
        if self.prompt_attention == "full":
            return
        name = getattr(model, "name", type(model).__name__)
        masks = getattr(model, "supported_masks", ())
        if "prompt" not in masks:
            raise UserError(f"objective.prompt_attention=self needs the prompt mask but model '{name}' "
                            f"supports only {', '.join(masks) or 'none'}; "
                            "use objective.prompt_attention=full")
        if getattr(model, "time_conditioning", False):
            raise UserError("objective.prompt_attention=self does not combine with model.time_conditioning "
                            "(the time estimated from the whole input would let the prompt read the "
                            "canvas); turn one of them off")

    def attention(self, cond=None):
        """The mask the backbone gets: ``mask_kind``, or with ``prompt_attention=self`` and a
        prompt marker cond[B, L] the prefix-bidirectional ``PromptMask(cond)``."""
        if cond is None or self.prompt_attention == "full":
            return self.mask_kind
        return PromptMask(cond)

    # -- pieces, exposed for tests and samplers -------------------------------------------
    def sample_times(self, key, n, t_min):
        """Times [n] in [t_min, 1]: stratified (antithetic) or i.i.d. uniform."""
        if self.antithetic:
            u = jax.random.uniform(key, ())
            t = jnp.mod(u + jnp.arange(n) / n, 1.0)
        else:
            t = jax.random.uniform(key, (n,))
        return t_min + (1.0 - t_min) * t

    def corrupt(self, key, tokens, t, cond=None):
        """Mask each token (outside the prompt ``cond``) with probability 1 - alpha(t).
        tokens[B, L], t[B] -> (z, masked)."""
        p_mask = 1.0 - self.schedule.alpha(t)[:, None]
        masked = prng.uniform(key, tokens.shape) < p_mask
        if cond is not None:
            masked = masked & ~cond
        return jnp.where(masked, self.mask_id, tokens), masked

    def logits(self, model, z, cond=None):
        """Backbone logits with the SUBS mask-token suppression. z[B, L] -> [B, L, V].
        ``cond``: the prompt marker, which sets the mask under ``prompt_attention=self``."""
        logits = model(z, mask_kind=self.attention(cond))
        return suppress(logits, (self.mask_id,))

    def _logits(self, model, z, cond):
        # cond reaches logits() only where it changes the mask, so a subclass that overrides
        # logits(model, z) keeps working with the default prompt_attention=full
        if cond is None or self.prompt_attention == "full":
            return self.logits(model, z)
        return self.logits(model, z, cond=cond)

    def nelbo(self, model, tokens, key, t, cond=None):
        """Single-draw NELBO per sequence [B] in nats per (target) token, at times t[B]."""
        assert self.mask_id >= 0, "call objective.bind(tokenizer) first"
        z, masked = self.corrupt(key, tokens, t, cond)
        ce = token_nll(self._logits(model, z, cond), tokens)
        w = self.schedule.weight(jnp.maximum(t, 1e-12))[:, None]
        return seq_mean(jnp.where(masked, w * ce, 0.0), cond)

    # -- the objective API -------------------------------------------------------------------
    def loss(self, model, tokens, key, cond=None):
        kt, km = jax.random.split(key)
        t = self.sample_times(kt, tokens.shape[0], self.t_min)
        with self.aux_losses() as aux:
            per_seq = self.nelbo(model, tokens, km, t, cond)
            if self.ar_weight:  # the clean sequence through the causal shifted denoiser: AR's loss
                ar = jnp.mean(seq_mean(token_nll(self._logits(model, tokens, cond), tokens), cond))
        nelbo = jnp.mean(per_seq)
        if not self.ar_weight:
            return self.add_aux(nelbo, {"nelbo": nelbo}, aux)
        return self.add_aux(nelbo + self.ar_weight * ar, {"nelbo": nelbo, "ar_nll": ar}, aux)

    def nll_count(self, model, tokens, key, k, cond=None):
        """Masked-count form, one draw per sequence [B]: mask exactly k[b] random positions
        (outside the prompt) and average the cross-entropy over them (nats per token,
        unbiased for NELBO / L)."""
        b, l = tokens.shape
        u = prng.uniform(key, (b, l))
        if cond is not None:
            u = jnp.where(cond, 2.0, u)  # prompt positions rank last: never among the k
        rank = jnp.argsort(u, axis=-1).argsort(axis=-1)
        masked = rank < k[:, None]
        z = jnp.where(masked, self.mask_id, tokens)
        ce = token_nll(self._logits(model, z, cond), tokens)
        return jnp.sum(jnp.where(masked, ce, 0.0), axis=-1) / k

    def nll(self, model, tokens, key, draws: int | None = None, cond=None):
        """NELBO draws [K, B] in nats per token, stratified over K draws per sequence."""
        assert self.mask_id >= 0, "call objective.bind(tokenizer) first"
        n = int(draws or self.eval_draws)
        b = tokens.shape[0]
        l = tokens.shape[1] if cond is None else jnp.sum(~cond, axis=-1)[None, :]    # [1, B]
        ku, km = jax.random.split(key)
        u = (jax.random.uniform(ku, (b,))[None, :] + jnp.arange(n)[:, None]) / n   # [K, B] in [0, 1)
        keys = jax.random.split(km, n)
        if self.eval_estimator == "count":
            k = jnp.clip(jnp.floor(u * l).astype(jnp.int32) + 1, 1, l)            # k ~ U{1..L}
            return jax.lax.map(lambda a: self.nll_count(model, tokens, a[0], a[1], cond), (keys, k))
        t = self.eval_t_min + (1.0 - self.eval_t_min) * u
        return jax.lax.map(lambda a: self.nelbo(model, tokens, a[0], a[1], cond), (keys, t))
