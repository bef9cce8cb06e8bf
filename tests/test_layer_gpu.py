"""moe_mlp on CUDA agrees with the CPU backend (marker gpu): float32 at HIGHEST
precision within float32 rounding, bfloat16 within bf16 rounding; gradients too."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_moe
from backends import run_on as on
from test_layer import HI, case, rel_err

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_forward_and_grads_match_cpu(rng, dtype, tol):
    x, ids, w, wgu, wd = case(rng, T=300, H=256, I=128, E=16, K=4, dtype=dtype)

    def loss(x, w, wgu, wd):
        y = jax_moe.moe_mlp(x, ids, w, wgu, wd, block_size=16, precision=HI)
        return jnp.sum(y.astype(jnp.float32) ** 2), y

    f = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
    (l_gpu, y_gpu), g_gpu = on("cuda", f, x, w, wgu, wd)
    (l_cpu, y_cpu), g_cpu = on("cpu", f, x, w, wgu, wd)
    assert rel_err(y_gpu, y_cpu) < tol
    for a, b in zip(g_gpu, g_cpu):
        assert rel_err(a, b) < tol
