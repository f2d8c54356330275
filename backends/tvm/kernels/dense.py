"""The dense ops as TE computes (shapes with symbolic dims), scheduled for the CPU (outer loop of
every block parallel) or for a GPU (dlight's rules bind blocks and threads).

A symbolic IR dim ('tokens', 'batch*seq') becomes one int64 shape variable per distinct name."""

from __future__ import annotations

import tvm

te, topi = tvm.te, tvm.topi


class Dims:
    """IR dims -> TE shape expressions, one variable per symbol."""

    def __init__(self):
        self.vars: dict[str, tvm.tirx.Var] = {}

    def __call__(self, shape) -> list:
        return [d if isinstance(d, int) else self.vars.setdefault(d, te.var(d.replace("*", "_"), "int64"))
                for d in shape]


def broadcast_index(in_shape, out_shape, idx):
    lead = len(out_shape) - len(in_shape)
    return [0 if d == 1 and o != 1 else i for d, o, i in zip(in_shape, out_shape[lead:], idx[lead:])]


def binary(fn, a_shape, b_shape, out_shape):
    dims = Dims()
    a = te.placeholder(dims(a_shape), "float32", "a")
    b = te.placeholder(dims(b_shape), "float32", "b")
    out = dims(out_shape)
    y = te.compute(out, lambda *i: fn(a(*broadcast_index(a_shape, out_shape, i)),
                                      b(*broadcast_index(b_shape, out_shape, i))), "y")
    return [a, b, y]


def unary(fn, shape):
    x = te.placeholder(Dims()(shape), "float32", "x")
    return [x, te.compute(x.shape, lambda *i: fn(x(*i)), "y")]


def gelu(v, approximate: str):
    if approximate == "tanh":
        c = 0.7978845608028654
        return 0.5 * v * (1.0 + te.tanh(c * (v + 0.044715 * v * v * v)))
    return 0.5 * v * (1.0 + te.erf(v * 0.7071067811865476))


def rms_norm(shape, eps: float):
    dims = Dims()
    x = te.placeholder(dims(shape), "float32", "x")
    w = te.placeholder((shape[-1],), "float32", "w")
    k = te.reduce_axis((0, shape[-1]), "k")
    ss = te.compute(x.shape[:-1], lambda *i: te.sum(x(*i, k) * x(*i, k), axis=k), "ss")
    y = te.compute(x.shape, lambda *i: w[i[-1]] * (x(*i) * te.rsqrt(ss(*i[:-1]) / shape[-1] + eps)), "y")
    return [x, w, y]


def softmax(shape, axis: int):
    x = te.placeholder(Dims()(shape), "float32", "x")
    return [x, topi.nn.softmax(x, axis=axis)]


def embedding(ids_shape, vocab: int, width: int):
    ids = te.placeholder(Dims()(ids_shape), "int64", "ids")
    w = te.placeholder((vocab, width), "float32", "w")
    return [ids, w, te.compute((*ids.shape, width), lambda *i: w[ids(*i[:-1]), i[-1]], "y")]


def build(op: str, attrs: dict, in_shapes: list, out_shape) -> list:
    """The TE tensors (inputs then output) of one dense node."""
    if op in ("add", "mul"):
        return binary((lambda p, q: p + q) if op == "add" else (lambda p, q: p * q), *in_shapes, out_shape)
    if op == "silu":
        return unary(lambda v: v * te.sigmoid(v), in_shapes[0])
    if op == "sigmoid":
        return unary(te.sigmoid, in_shapes[0])
    if op == "gelu":
        return unary(lambda v: gelu(v, attrs["approximate"]), in_shapes[0])
    if op == "rms_norm":
        return rms_norm(in_shapes[0], attrs["eps"])
    if op == "softmax":
        return softmax(in_shapes[0], attrs["axis"])
    if op == "embedding":
        return embedding(in_shapes[0], *in_shapes[1])
    raise KeyError(op)


def prim_func(tensors: list, gpu: bool, target) -> tvm.tirx.PrimFunc:
    func = te.create_prim_func(tensors).with_attr("global_symbol", "main")
    if gpu:
        mod = tvm.IRModule({"main": func})
        with target:
            mod = tvm.s_tir.dlight.ApplyDefaultSchedule(tvm.s_tir.dlight.gpu.Fallback())(mod)
        return mod["main"]
    sch = tvm.s_tir.Schedule(func)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        loops = sch.get_loops(block)
        if loops:
            sch.parallel(loops[0])
    return sch.mod["main"]
