"""Launches the kernels on torch tensors. CUDA/ROCm tensors run Triton-compiled code; CPU tensors run
the SAME kernel source through Triton's interpreter (InterpretedFunction over the kernel's Python
function), so nobody has to set TRITON_INTERPRET before importing.

Legend: T tokens, H hidden, E experts, K top-k, R = T*K rows, N out features, F = N/2."""

from __future__ import annotations

import contextlib
import functools
import json
import threading

import numpy as np
import torch
import triton
from triton.runtime import interpreter
from triton.runtime.interpreter import InterpretedFunction, _patch_lang
from triton.runtime.jit import JITFunction
from triton.tools.tensor_descriptor import TensorDescriptor

from . import kernels
from .kernels.router import scoring_code
from .tuning import GemmConfig

_INTERPRETER_LOCK = threading.RLock()


def _call_interpreted(self, *args, **kwargs):
    # InterpretedFunction.__call__ patches triton.language for good (harmless when everything is
    # interpreted); here the patch must end with the call, or later GPU compiles break.
    scope = _patch_lang(self.fn)
    try:
        return interpreted_fn(self.fn).rewrite()(*args, **kwargs)
    finally:
        scope.restore()


@functools.cache
def interpreted_fn(fn) -> InterpretedFunction:
    return InterpretedFunction(fn)


def _patch_lang_tensor(tensor, scope):
    # Triton 3.6 turns a scalar (a 1-element array) into an index with int(array), which numpy >= 2.4
    # refuses; later Triton squeezes it first, as here.
    _PATCH_LANG_TENSOR(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))


_PATCH_LANG_TENSOR = interpreter._patch_lang_tensor


@contextlib.contextmanager
def interpreter_scope():
    """While a kernel is interpreted, calls to @triton.jit helpers (tl.sum, tl.cumsum, ... are such) run
    interpreted too: what TRITON_INTERPRET=1 does at import time, limited to this scope."""
    with _INTERPRETER_LOCK:
        saved = JITFunction.__call__
        JITFunction.__call__ = _call_interpreted
        interpreter._patch_lang_tensor = _patch_lang_tensor
        try:
            yield
        finally:
            JITFunction.__call__ = saved
            interpreter._patch_lang_tensor = _PATCH_LANG_TENSOR


class Interpreted:
    def __init__(self, fn):
        self.fn = interpreted_fn(fn)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            # numpy stands in for the GPU: exp overflowing to inf is the intended IEEE result, not news
            with interpreter_scope(), np.errstate(over="ignore", invalid="ignore"):
                return self.fn[grid](*args, **kwargs)
        return launch


TL = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int64: "i64", torch.int32: "i32"}
OPTIONS = ("num_warps", "num_stages")


def arg_type(a) -> str:
    if isinstance(a, TensorDescriptor):
        return f"tensordesc<{TL[a.base.dtype]}[{', '.join(map(str, a.block_shape))}]>"
    if isinstance(a, torch.Tensor):
        return "*" + TL[a.dtype]
    return "fp32" if isinstance(a, float) else "i1" if isinstance(a, bool) else "i32" if abs(a) < 2**31 else "i64"


class Recorder:
    """Ahead-of-time lowering runs the executable on meta tensors: each launch it would make on `target`
    is recorded here (kernel, signature, constants, options, the nodes it serves) instead of run."""

    def __init__(self, target: str):
        self.target, self.phase, self.nodes, self.launches = target, "forward", [], {}

    def record(self, name: str, *args, **kwargs):
        names = [q.name for q in getattr(kernels, name).params if not q.is_constexpr]
        constexprs = {k: v for k, v in kwargs.items() if k not in OPTIONS}
        inst = {"kernel": name, "signature": {**{n: arg_type(a) for n, a in zip(names, args)},
                                              **{k: "constexpr" for k in constexprs}},
                "constexprs": constexprs, "num_warps": kwargs.get("num_warps", 4),
                "num_stages": kwargs.get("num_stages", 3), "pass": self.phase}
        found = self.launches.setdefault(json.dumps(inst, sort_keys=True), {**inst, "nodes": []})
        found["nodes"] += [n for n in self.nodes if n not in found["nodes"]]


RECORDING: list[Recorder] = []


class Recorded:
    """kernel(name, a meta tensor)[grid](...): the launch is recorded, not run."""

    def __init__(self, name: str):
        self.name = name

    def __getitem__(self, grid):
        return functools.partial(RECORDING[-1].record, self.name)


def attribute(nodes: list[str]):
    """The graph nodes the next launches serve (for the lowering manifest)."""
    if RECORDING:
        RECORDING[-1].nodes = nodes


def kernel(name: str, t: torch.Tensor):
    if t.device.type == "meta":
        return Recorded(name)
    jitted = getattr(kernels, name)
    return Interpreted(jitted.fn) if t.device.type == "cpu" else jitted


def compiled_for_nvidia(t: torch.Tensor, min_major: int = 0) -> bool:
    """True when t's kernels compile for an NVIDIA GPU of compute capability >= min_major (or are recorded
    for such a target)."""
    if t.device.type == "meta":
        target = RECORDING[-1].target
        return target.startswith("cuda") and int(target.split("_")[-1]) // 10 >= min_major
    return t.device.type == "cuda" and not torch.version.hip and torch.cuda.get_device_capability(t.device)[0] >= \
        min_major


def pow2(n: int) -> int:
    return max(2, triton.next_power_of_2(max(int(n), 1)))


def dot_precision(t: torch.Tensor) -> str:
    """fp32 dots: 3xTF32 on NVIDIA tensor cores (near-fp32 accuracy), native fp32 elsewhere."""
    if t.dtype == torch.float32 and compiled_for_nvidia(t):
        return "tf32x3"
    return "ieee"


def router(x, weight, bias, score_bias, *, top_k, scoring, num_groups, top_groups, group_score, normalize,
           scaling):
    lead, (E, H) = x.shape[:-1], weight.shape
    x_TH = x.reshape(-1, H).contiguous()
    T = x_TH.shape[0]
    weights_TK = torch.empty(T, top_k, dtype=x.dtype, device=x.device)
    idx_TK = torch.empty(T, top_k, dtype=torch.int64, device=x.device)
    logits_TE = torch.empty(T, E, dtype=torch.float32, device=x.device)
    if T:
        kernel("router_kernel", x)[(T,)](
            x_TH, weight.contiguous(), bias.contiguous() if bias is not None else logits_TE,
            score_bias.contiguous() if score_bias is not None else logits_TE, weights_TK, idx_TK, logits_TE, H,
            float(scaling), E=E, TOP_K=top_k, SCORING=scoring_code(scoring), NUM_GROUPS=num_groups,
            TOP_GROUPS=top_groups, GROUP_TOP2=group_score == "top2_sum", NORMALIZE=normalize,
            HAS_BIAS=bias is not None, HAS_SCORE_BIAS=score_bias is not None, BLOCK_E=pow2(E),
            BLOCK_H=min(pow2(H), 128), BLOCK_K=pow2(top_k), BLOCK_G=pow2(num_groups))
    return weights_TK.reshape(*lead, top_k), idx_TK.reshape(*lead, top_k), logits_TE.reshape(*lead, E)


def dispatch(x, indices, *, num_experts):
    top_k, H = indices.shape[-1], x.shape[-1]
    idx_R = indices.reshape(-1).contiguous()
    R = idx_R.numel()
    order_R = torch.empty(R, dtype=torch.int64, device=x.device)
    offsets = torch.empty(num_experts + 1, dtype=torch.int64, device=x.device)
    kernel("dispatch_kernel", x)[(1,)](idx_R, order_R, offsets, R, E=num_experts, BLOCK_E=pow2(num_experts),
                                      BLOCK_R=64)
    rows_RH = torch.empty(R, H, dtype=x.dtype, device=x.device)
    if R and H:
        block_h = min(pow2(H), 256)
        kernel("gather_kernel", x)[(R, triton.cdiv(H, block_h))](x.reshape(-1, H).contiguous(), order_R, rows_RH,
                                                                  H, TOP_K=top_k, BLOCK_H=block_h)
    return rows_RH, offsets, order_R


def gemm_extra(t: torch.Tensor, cfg: GemmConfig) -> dict:
    return {} if t.device.type == "cpu" else {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def use_tma(w: torch.Tensor, cfg: GemmConfig) -> bool:
    """Weights through a tensor descriptor: on NVIDIA sm_90+ (TMA) and in the interpreter (so the CPU tests
    cover that path), when the rows are 16-byte aligned as TMA requires."""
    aligned = w.numel() > 0 and w.is_contiguous() and (w.shape[-1] * w.element_size()) % 16 == 0 and \
        w.data_ptr() % 16 == 0
    return (w.device.type == "cpu" or compiled_for_nvidia(w, 9)) and aligned and cfg.block_k * w.element_size() >= 16


def moe_align(experts_R: torch.Tensor, num_experts: int, block_m: int):
    """Slots for the MoE GEMM, on the device with no host sync: each expert's rows padded to block_m
    (slots[s] = row, or R where padding), and the expert of each M-block (-1 past the last)."""
    R, dev = experts_R.numel(), experts_R.device
    blocks = triton.cdiv(R, block_m) + min(num_experts, R)
    slots = torch.full((blocks * block_m,), R, dtype=torch.int32, device=dev)
    block_expert = torch.empty(blocks, dtype=torch.int32, device=dev)
    counts = torch.zeros(2 * num_experts, dtype=torch.int32, device=dev)     # counts, then each expert's cursor
    if R:
        kernel("bucket_kernel", experts_R)[(triton.cdiv(R, 256),)](experts_R, counts, slots, R, PLACE=False,
                                                                   BLOCK_R=256)
        kernel("align_kernel", experts_R)[(1,)](counts, counts[num_experts:], block_expert, blocks, E=num_experts,
                                                BLOCK_E=pow2(num_experts), BLOCK_M=block_m, BLOCK_B=16)
        kernel("bucket_kernel", experts_R)[(triton.cdiv(R, 256),)](experts_R, counts[num_experts:], slots, R,
                                                                   PLACE=True, BLOCK_R=256)
    return slots, block_expert


def moe_gemm(a, weight_ENK, y, slots, block_expert, cfg: GemmConfig, *, a_div=1, swiglu=False, scale=None):
    """y[r] = a[r // a_div] @ w[e]^T for every row r in the slots (see kernels/moe_gemm.py)."""
    E, N, K = weight_ENK.shape
    if not (y.numel() and block_expert.numel()):
        return y
    w = weight_ENK.contiguous()
    if use_tma(w, cfg):
        w = TensorDescriptor(w, [E * N, K], [K, 1], [cfg.block_n, cfg.block_k])
    kernel("moe_gemm_kernel", a)[(block_expert.numel() * triton.cdiv(y.shape[1], cfg.block_n),)](
        a.contiguous(), w, y, slots, block_expert, y if scale is None else scale.contiguous(), y.shape[0],
        y.shape[1], K, A_DIV=a_div, SWIGLU=swiglu, SCALE=scale is not None, W_TMA=isinstance(w, TensorDescriptor),
        PRECISION=dot_precision(a), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=8,
        **gemm_extra(a, cfg))
    return y


def grouped_matmul(x_RK, weight_ENK, offsets, cfg: GemmConfig, *, swiglu=False):
    """y = x @ w[e]^T per segment of rows; swiglu fuses the activation (out width N/2)."""
    R, E, N = x_RK.shape[0], *weight_ENK.shape[:2]
    y = torch.empty(R, N // 2 if swiglu else N, dtype=x_RK.dtype, device=x_RK.device)
    experts_R = torch.searchsorted(offsets[1:].contiguous(), torch.arange(R, device=x_RK.device), right=True)
    slots, block_expert = moe_align(experts_R, E, cfg.block_m)
    return moe_gemm(x_RK, weight_ENK, y, slots, block_expert, cfg, swiglu=swiglu)


def moe_ffn(x, indices, weights, gate_up_ENK, down_ENK, cfg_gate_up: GemmConfig, cfg_down: GemmConfig):
    """dispatch -> grouped gate_up + SwiGLU -> grouped down -> combine, fused: the gate_up GEMM gathers each
    pair's token row, the down GEMM multiplies by the routing weight, so combine is a sum over k."""
    top_k, H = indices.shape[-1], x.shape[-1]
    experts_R = indices.reshape(-1).contiguous()
    R, E, F = experts_R.numel(), gate_up_ENK.shape[0], gate_up_ENK.shape[1] // 2
    h = torch.empty(R, F, dtype=x.dtype, device=x.device)
    y = torch.empty(R, H, dtype=x.dtype, device=x.device)
    slots, block_expert = moe_align(experts_R, E, cfg_gate_up.block_m)
    moe_gemm(x.reshape(-1, H), gate_up_ENK, h, slots, block_expert, cfg_gate_up, a_div=top_k, swiglu=True)
    if cfg_down.block_m != cfg_gate_up.block_m:
        slots, block_expert = moe_align(experts_R, E, cfg_down.block_m)
    moe_gemm(h, down_ENK, y, slots, block_expert, cfg_down, scale=weights.reshape(-1))
    return y.view(*indices.shape, H).sum(-2)


def swiglu(x):
    F = x.shape[-1] // 2
    x_M2F = x.reshape(-1, 2 * F).contiguous()
    y = torch.empty(x_M2F.shape[0], F, dtype=x.dtype, device=x.device)
    if y.numel():
        block = min(pow2(F), 256)
        kernel("swiglu_kernel", x)[(x_M2F.shape[0], triton.cdiv(F, block))](x_M2F, y, F, BLOCK_F=block)
    return y.reshape(*x.shape[:-1], F)


def inverse_permutation(order_R):
    """inverse[order[r]] = r: where each (token, k) pair's row landed."""
    R = order_R.numel()
    inverse_R = torch.empty(R, dtype=order_R.dtype, device=order_R.device)
    kernel("inverse_kernel", order_R)[(triton.cdiv(R, 256),)](order_R.contiguous(), inverse_R, R, BLOCK_R=256)
    return inverse_R


def combine(y_RH, order_R, weights):
    top_k, H = weights.shape[-1], y_RH.shape[-1]
    R = order_R.numel()
    T = R // top_k if top_k else 0
    out = torch.empty(T, H, dtype=y_RH.dtype, device=y_RH.device)
    if R and H:
        inverse_R = inverse_permutation(order_R)
        block = min(pow2(H), 256)
        kernel("combine_kernel", y_RH)[(T, triton.cdiv(H, block))](
            y_RH.contiguous(), inverse_R, weights.reshape(-1).contiguous(), out, H, TOP_K=top_k, BLOCK_H=block)
    return out.reshape(*weights.shape[:-1], H)
