"""Running one function on the CPU and the CUDA backend, for the gpu-marked
tests that compare our CUDA kernels with our CPU kernels."""
import jax
import numpy as np


def run_on(platform, fn, *args):
    """fn jitted on the first `platform` device ('cpu' or 'cuda'); numpy outputs."""
    dev = jax.devices(platform)[0]
    return jax.tree.map(np.asarray, jax.jit(fn)(*[jax.device_put(a, dev) for a in args]))


def cpu_and_cuda(fn, *args):
    """(outputs on the CPU, outputs on CUDA)."""
    return run_on("cpu", fn, *args), run_on("cuda", fn, *args)


def bits(x):
    """The raw bits of x as unsigned integers of the same width."""
    x = np.asarray(x)
    return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


def assert_same_bits(a, b):
    """Every leaf of two output trees has the same dtype, shape and bits."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(bits(x), bits(y))
