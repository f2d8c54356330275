"""The Triton kernels of the MoE hot path, forward and backward, by name (launched by ..launch and ..autograd)."""

from . import dispatch_combine, moe_gemm, router

BY_NAME = {name: fn for module in (dispatch_combine, moe_gemm, router) for name, fn in vars(module).items()
           if name.endswith("_kernel")}
