"""jax-moe: Mixture-of-Experts routing kernels for JAX (XLA FFI, CPU + CUDA)."""
from jax_moe.align import Alignment, align_shapes, moe_align_block_size

__all__ = ["Alignment", "align_shapes", "moe_align_block_size"]
__version__ = "0.1.0"
