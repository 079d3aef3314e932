"""sandbox.core.prng: flat draws are jax.random's draws, and compile faster."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sandbox.core import prng
from sandbox.samplers.categorical import sample


@pytest.mark.parametrize("shape", [(4,), (3, 5, 7), (2, 16, 260)])
def test_flat_draws_equal_jax_random(shape):
    key = jax.random.PRNGKey(11)
    np.testing.assert_array_equal(prng.bits(key, shape), jax.random.bits(key, shape, jnp.uint32))
    np.testing.assert_array_equal(prng.uniform(key, shape), jax.random.uniform(key, shape))
    np.testing.assert_array_equal(prng.gumbel(key, shape), jax.random.gumbel(key, shape))
    assert prng.uniform(key, shape).shape == shape


def test_truncating_form_is_jax_random_categorical():
    logits = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 20))
    key = jax.random.PRNGKey(5)
    np.testing.assert_array_equal(sample(key, logits, "fp32_truncating"),
                                  jax.random.categorical(key, logits, axis=-1))

