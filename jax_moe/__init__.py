"""jax-moe: Mixture-of-Experts routing kernels for JAX (XLA FFI, CPU + CUDA)."""
from jax_moe.align import Alignment, align_shapes, moe_align_block_size
from jax_moe.permute import PermutePlan, permute, unpermute

__all__ = ["Alignment", "PermutePlan", "align_shapes", "moe_align_block_size", "permute",
           "unpermute"]
__version__ = "0.1.0"
