"""jax-moe: Mixture-of-Experts routing kernels for JAX (XLA FFI, CPU + CUDA)."""
from jax_moe.align import Alignment, align_shapes, moe_align_block_size
from jax_moe.ep import EpHandle, EpRecv, ep_combine, ep_dispatch, ep_recv_rows
from jax_moe.layer import moe_mlp
from jax_moe.permute import PermutePlan, permute, unpermute
from jax_moe.router import route
from jax_moe.silu import silu_and_mul

__all__ = ["Alignment", "EpHandle", "EpRecv", "PermutePlan", "align_shapes", "ep_combine",
           "ep_dispatch", "ep_recv_rows", "moe_align_block_size", "moe_mlp", "permute", "route",
           "silu_and_mul", "unpermute"]
__version__ = "0.1.0"
