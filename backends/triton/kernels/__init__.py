"""The Triton kernels of the MoE hot path, forward and backward (launched by ..launch and ..autograd)."""

from .dispatch import align_kernel, bucket_kernel, dispatch_kernel, gather_kernel, inverse_kernel
from .moe_gemm import grouped_gemm_dw_kernel, moe_gemm_kernel
from .router import router_kernel
from .swiglu_combine import combine_bwd_kernel, combine_kernel, swiglu_bwd_kernel, swiglu_kernel

__all__ = ["align_kernel", "bucket_kernel", "combine_bwd_kernel", "combine_kernel", "dispatch_kernel",
           "gather_kernel", "grouped_gemm_dw_kernel", "inverse_kernel", "moe_gemm_kernel", "router_kernel",
           "swiglu_bwd_kernel", "swiglu_kernel"]
