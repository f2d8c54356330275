"""Launches the forward kernels on torch tensors: compiled on CUDA/ROCm, interpreted on CPU tensors, recorded on
meta tensors for lowering (..lower). Legend: T tokens, H hidden, E experts, K top-k, R = T*K rows, F = N/2."""

from __future__ import annotations

import functools
import threading
from unittest import mock

import numpy as np
import torch
import triton
from triton.runtime import interpreter
from triton.tools.tensor_descriptor import TensorDescriptor

from .kernels import BY_NAME
from .tuning import GemmConfig

recorder = None     # while lowering: the ..lower.Recorder that takes launches on meta tensors
_LOCK = threading.Lock()
_interpreted = functools.cache(interpreter.InterpretedFunction)


def _call_interpreted(self, *args, **kwargs):
    # a @triton.jit helper called by an interpreted kernel: its patch of triton.language ends with the call
    scope = interpreter._patch_lang(self.fn)
    try:
        return _interpreted(self.fn).rewrite()(*args, **kwargs)
    finally:
        scope.restore()


def _patch_lang_tensor(tensor, scope, patch=interpreter._patch_lang_tensor):
    # Triton 3.6 indexes with int(a 1-element array), which numpy >= 2.4 refuses; later Triton squeezes first
    patch(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))


def interpret(fn, grid, *args, **kwargs):
    """Interprets a kernel and its @triton.jit helpers, as TRITON_INTERPRET=1 would for the whole process."""
    with (_LOCK, np.errstate(over="ignore", invalid="ignore"),      # exp overflowing to inf is IEEE, not news
          mock.patch.object(triton.JITFunction, "__call__", _call_interpreted),
          mock.patch.object(interpreter, "_patch_lang_tensor", _patch_lang_tensor)):
        return _interpreted(fn)[grid](*args, **kwargs)


def run(name: str, grid: tuple, *args, **kwargs):
    """Launches the kernel of that name on the device of its first argument."""
    device = args[0].device.type
    if device == "meta":
        return recorder.record(name, *args, **kwargs)
    if device == "cpu":
        return interpret(BY_NAME[name].fn, grid, *args, **kwargs)
    return BY_NAME[name][grid](*args, **kwargs)


def compiled_for_nvidia(t: torch.Tensor, min_major: int = 0) -> bool:
    """Whether t's kernels compile (or are recorded) for an NVIDIA GPU of compute capability >= min_major."""
    if t.device.type == "meta":
        return recorder.target.startswith("cuda") and int(recorder.target.split("_")[-1]) // 10 >= min_major
    return t.is_cuda and not torch.version.hip and torch.cuda.get_device_capability(t.device)[0] >= min_major


def pow2(n: int, cap: int = 1 << 20) -> int:
    return min(cap, max(2, triton.next_power_of_2(max(int(n), 1))))


def dot_precision(t: torch.Tensor) -> str:
    """fp32 dots: 3xTF32 on NVIDIA tensor cores (near-fp32 accuracy), native fp32 elsewhere."""
    return "tf32x3" if t.dtype == torch.float32 and compiled_for_nvidia(t) else "ieee"


def router(x, weight, bias, score_bias, *, top_k, scoring, num_groups, top_groups, group_score, normalize,
           scaling):
    lead, (E, H) = x.shape[:-1], weight.shape
    x_TH = x.reshape(-1, H).contiguous()
    T = x_TH.shape[0]
    weights_TK, idx_TK = x.new_empty(T, top_k), x.new_empty(T, top_k, dtype=torch.int64)
    logits_TE = x.new_empty(T, E, dtype=torch.float32)
    if T:
        run("router_kernel", (T,), x_TH, weight.contiguous(), logits_TE if bias is None else bias.contiguous(),
            logits_TE if score_bias is None else score_bias.contiguous(), weights_TK, idx_TK, logits_TE, H,
            float(scaling), E=E, TOP_K=top_k, SCORING=scoring, NUM_GROUPS=num_groups,
            TOP_GROUPS=top_groups, GROUP_TOP2=group_score == "top2_sum", NORMALIZE=normalize,
            HAS_BIAS=bias is not None, HAS_SCORE_BIAS=score_bias is not None, BLOCK_E=pow2(E),
            BLOCK_H=pow2(H, 128), BLOCK_K=pow2(top_k), BLOCK_G=pow2(num_groups))
    return weights_TK.reshape(*lead, top_k), idx_TK.reshape(*lead, top_k), logits_TE.reshape(*lead, E)


def dispatch(x, indices, *, num_experts):
    top_k, H = indices.shape[-1], x.shape[-1]
    idx_R = indices.reshape(-1).contiguous()
    R = idx_R.numel()
    order_R, offsets = idx_R.new_empty(R, dtype=torch.int64), idx_R.new_empty(num_experts + 1, dtype=torch.int64)
    run("dispatch_kernel", (1,), idx_R, order_R, offsets, R, E=num_experts, BLOCK_E=pow2(num_experts), BLOCK_R=64)
    rows_RH = x.new_empty(R, H)
    if R and H:
        run("gather_kernel", (R, triton.cdiv(H, 256)), x.reshape(-1, H).contiguous(), order_R, rows_RH, H,
            TOP_K=top_k, BLOCK_H=pow2(H, 256))
    return rows_RH, offsets, order_R


def use_tma(w: torch.Tensor, cfg: GemmConfig) -> bool:
    """TMA weights on NVIDIA sm_90+ and in the interpreter (so CPU tests cover it), when 16-byte aligned."""
    aligned = w.numel() > 0 and w.is_contiguous() and (w.shape[-1] * w.element_size()) % 16 == 0 and \
        w.data_ptr() % 16 == 0 and cfg.block_k * w.element_size() >= 16
    return aligned and (w.device.type == "cpu" or compiled_for_nvidia(w, 9))


def moe_align(experts_R: torch.Tensor, num_experts: int, block_m: int):
    """Slots on the device, no host sync: each expert's rows padded to block_m (R pads), and each M-block's expert."""
    R = experts_R.numel()
    blocks = triton.cdiv(R, block_m) + min(num_experts, R)
    slots = experts_R.new_full((blocks * block_m,), R, dtype=torch.int32)
    block_expert = experts_R.new_empty(blocks, dtype=torch.int32)
    counts = experts_R.new_zeros(2 * num_experts, dtype=torch.int32)     # counts, then each expert's cursor
    if R:
        grid = (triton.cdiv(R, 256),)
        run("bucket_kernel", grid, experts_R, counts, slots, R, PLACE=False, BLOCK_R=256)
        run("align_kernel", (1,), counts, counts[num_experts:], block_expert, blocks, E=num_experts,
            BLOCK_E=pow2(num_experts), BLOCK_M=block_m, BLOCK_B=16)
        run("bucket_kernel", grid, experts_R, counts[num_experts:], slots, R, PLACE=True, BLOCK_R=256)
    return slots, block_expert


def moe_gemm(a, weight_ENK, y, slots, block_expert, cfg: GemmConfig, *, a_div=1, swiglu=False, scale=None):
    """y[r] = a[r // a_div] @ w[e]^T for every row r in the slots (see kernels/moe_gemm.py)."""
    E, N, K = weight_ENK.shape
    if not (y.numel() and block_expert.numel()):
        return y
    w = weight_ENK.contiguous()
    if use_tma(w, cfg):
        w = TensorDescriptor(w, [E * N, K], [K, 1], [cfg.block_n, cfg.block_k])
    run("moe_gemm_kernel", (block_expert.numel() * triton.cdiv(y.shape[1], cfg.block_n),), a.contiguous(), w, y,
        slots, block_expert, y if scale is None else scale.contiguous(), y.shape[0], y.shape[1], K, A_DIV=a_div,
        SWIGLU=swiglu, SCALE=scale is not None, W_TMA=isinstance(w, TensorDescriptor), PRECISION=dot_precision(a),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=8, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)
    return y


def grouped_matmul(x_RK, weight_ENK, offsets, cfg: GemmConfig, *, swiglu=False):
    """y = x @ w[e]^T per segment of rows; swiglu fuses the activation (out width N/2)."""
    R, E, N = x_RK.shape[0], *weight_ENK.shape[:2]
    y = x_RK.new_empty(R, N // 2 if swiglu else N)
    experts_R = torch.searchsorted(offsets[1:].contiguous(), torch.arange(R, device=x_RK.device), right=True)
    return moe_gemm(x_RK, weight_ENK, y, *moe_align(experts_R, E, cfg.block_m), cfg, swiglu=swiglu)


def moe_ffn(x, indices, weights, gate_up_ENK, down_ENK, cfg_gate_up: GemmConfig, cfg_down: GemmConfig):
    """dispatch -> gate_up + SwiGLU -> down -> combine in two GEMMs that gather rows and apply routing weights."""
    top_k, H = indices.shape[-1], x.shape[-1]
    experts_R = indices.reshape(-1).contiguous()
    R, E, F = experts_R.numel(), gate_up_ENK.shape[0], gate_up_ENK.shape[1] // 2
    h, y = x.new_empty(R, F), x.new_empty(R, H)
    slots, block_expert = moe_align(experts_R, E, cfg_gate_up.block_m)
    moe_gemm(x.reshape(-1, H), gate_up_ENK, h, slots, block_expert, cfg_gate_up, a_div=top_k, swiglu=True)
    if cfg_down.block_m != cfg_gate_up.block_m:
        slots, block_expert = moe_align(experts_R, E, cfg_down.block_m)
    moe_gemm(h, down_ENK, y, slots, block_expert, cfg_down, scale=weights.reshape(-1))
    return y.view(*indices.shape, H).sum(-2)


def swiglu(x):
    F = x.shape[-1] // 2
    x_M2F = x.reshape(-1, 2 * F).contiguous()
    y = x.new_empty(x_M2F.shape[0], F)
    if y.numel():
        run("swiglu_kernel", (x_M2F.shape[0], triton.cdiv(F, 256)), x_M2F, y, F, BLOCK_F=pow2(F, 256))
    return y.reshape(*x.shape[:-1], F)


def combine(y_RH, order_R, weights):
    """out[t] = sum over k of weights[t, k] * y[the row of pair t*K + k]."""
    top_k, H, R = weights.shape[-1], y_RH.shape[-1], order_R.numel()
    out = y_RH.new_empty(R // top_k if top_k else 0, H)
    if R and H:
        inverse_R = order_R.new_empty(R)    # inverse[order[r]] = r
        run("inverse_kernel", (triton.cdiv(R, 256),), order_R.contiguous(), inverse_R, R, BLOCK_R=256)
        run("combine_kernel", (out.shape[0], triton.cdiv(H, 256)), y_RH.contiguous(), inverse_R,
            weights.reshape(-1).contiguous(), out, H, TOP_K=top_k, BLOCK_H=pow2(H, 256))
    return out.reshape(*weights.shape[:-1], H)
