"""The dense ops as TE computes: BUILD[op](attrs, input shapes, output shape) -> tensors, inputs then output.
A symbolic IR dim ('tokens', 'batch*seq') becomes one int64 variable per distinct name."""

from __future__ import annotations

import operator

from tvm import te, topi


def dims(shape, names: dict) -> list:
    return [d if isinstance(d, int) else names.setdefault(d, te.var(d.replace("*", "_"), "int64")) for d in shape]


def placeholder(shape, names: dict, name: str, dtype: str = "float32"):
    return te.placeholder(dims(shape, names), dtype, name)


def binary(fn, a_shape, b_shape, out_shape):
    names = {}
    a, b = placeholder(a_shape, names, "a"), placeholder(b_shape, names, "b")

    def at(x, shape, i):        # x broadcast to out_shape from the right
        lead = len(out_shape) - len(shape)
        return x(*[0 if d == 1 and o != 1 else j for d, o, j in zip(shape, out_shape[lead:], i[lead:])])

    return [a, b, te.compute(dims(out_shape, names), lambda *i: fn(at(a, a_shape, i), at(b, b_shape, i)), "y")]


def unary(fn, shape):
    x = placeholder(shape, {}, "x")
    return [x, te.compute(x.shape, lambda *i: fn(x(*i)), "y")]


def gelu(v, approximate: str):
    if approximate == "tanh":
        return 0.5 * v * (1.0 + te.tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)))
    return 0.5 * v * (1.0 + te.erf(v * 0.7071067811865476))


def rms_norm(shape, eps: float):
    x, w = placeholder(shape, {}, "x"), te.placeholder((shape[-1],), "float32", "w")
    k = te.reduce_axis((0, shape[-1]), "k")
    ss = te.compute(x.shape[:-1], lambda *i: te.sum(x(*i, k) * x(*i, k), axis=k), "ss")
    return [x, w, te.compute(x.shape, lambda *i: w[i[-1]] * (x(*i) * te.rsqrt(ss(*i[:-1]) / shape[-1] + eps)), "y")]


def softmax(shape, axis: int):
    x = placeholder(shape, {}, "x")
    return [x, topi.nn.softmax(x, axis=axis)]


def embedding(ids_shape, vocab: int, width: int):
    ids, w = placeholder(ids_shape, {}, "ids", "int64"), te.placeholder((vocab, width), "float32", "w")
    return [ids, w, te.compute((*ids.shape, width), lambda *i: w[ids(*i[:-1]), i[-1]], "y")]


BUILD = {
    "add": lambda a, ins, out: binary(operator.add, *ins, out),
    "mul": lambda a, ins, out: binary(operator.mul, *ins, out),
    "silu": lambda a, ins, out: unary(lambda v: v * te.sigmoid(v), ins[0]),
    "sigmoid": lambda a, ins, out: unary(te.sigmoid, ins[0]),
    "gelu": lambda a, ins, out: unary(lambda v: gelu(v, a["approximate"]), ins[0]),
    "rms_norm": lambda a, ins, out: rms_norm(ins[0], a["eps"]),
    "softmax": lambda a, ins, out: softmax(ins[0], a["axis"]),
    "embedding": lambda a, ins, out: embedding(ins[0], *ins[1]),
}
