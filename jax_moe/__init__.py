"""jax-moe: Mixture-of-Experts routing kernels for JAX (XLA FFI, CPU + CUDA)."""
from jax_moe.align import Alignment, align_shapes, moe_align_block_size
from jax_moe.ep import EpHandle, EpRecv, ep_combine, ep_dispatch, ep_recv_rows

__all__ = ["Alignment", "EpHandle", "EpRecv", "align_shapes", "ep_combine", "ep_dispatch",
           "ep_recv_rows", "moe_align_block_size"]
__version__ = "0.1.0"
