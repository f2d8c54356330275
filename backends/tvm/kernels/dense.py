"""The dense ops as TE computes: BUILD[op](attrs, input shapes) -> tensors, inputs then output. A symbolic
IR dim ('tokens', 'batch*seq') becomes one int64 variable per distinct name."""

from __future__ import annotations

from tvm import te, topi


def inputs(*shapes, dtypes=("float32", "float32")) -> list:
    names: dict = {}

    def dim(d):
        return d if isinstance(d, int) else names.setdefault(d, te.var(d.replace("*", "_"), "int64"))

    return [te.placeholder([dim(d) for d in shape], dtype, f"x{i}")      # distinct names: OpenCL binds by name
            for i, (shape, dtype) in enumerate(zip(shapes, dtypes))]


def unary(fn, shape) -> list:
    (x,) = inputs(shape)
    return [x, te.compute(x.shape, lambda *i: fn(x(*i)), "y")]


def gelu(v, approximate: str):
    if approximate == "tanh":
        return 0.5 * v * (1.0 + te.tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)))
    return 0.5 * v * (1.0 + te.erf(v * 0.7071067811865476))


def rms_norm(eps: float, shape, w_shape) -> list:
    x, w = inputs(shape, w_shape)
    k = te.reduce_axis((0, shape[-1]), "k")
    ss = te.compute(x.shape[:-1], lambda *i: te.sum(x(*i, k) * x(*i, k), axis=k), "ss")
    return [x, w, te.compute(x.shape, lambda *i: w[i[-1]] * (x(*i) * te.rsqrt(ss(*i[:-1]) / shape[-1] + eps)), "y")]


def swiglu(shape) -> list:
    """y[..., f] = silu(x[..., f]) * x[..., F + f], F half the last dim."""
    (x,) = inputs(shape)
    F = shape[-1] // 2
    return [x, te.compute((*x.shape[:-1], F), lambda *i: x(*i) / (1 + te.exp(-x(*i))) * x(*i[:-1], i[-1] + F), "y")]


def embedding(ids_shape, table_shape) -> list:
    ids, w = inputs(ids_shape, table_shape, dtypes=("int64", "float32"))
    return [ids, w, te.compute((*ids.shape, w.shape[1]), lambda *i: w[ids(*i[:-1]), i[-1]], "y")]


def apply(fn, *shapes) -> list:
    tensors = inputs(*shapes)
    return [*tensors, fn(*tensors)]


BUILD = {
    "add": lambda a, ins: apply(topi.add, *ins),
    "mul": lambda a, ins: apply(topi.multiply, *ins),
    "silu": lambda a, ins: unary(lambda v: v * te.sigmoid(v), ins[0]),
    "sigmoid": lambda a, ins: unary(te.sigmoid, ins[0]),
    "gelu": lambda a, ins: unary(lambda v: gelu(v, a["approximate"]), ins[0]),
    "rms_norm": lambda a, ins: rms_norm(a["eps"], *ins),
    "softmax": lambda a, ins: apply(lambda x: topi.nn.softmax(x, axis=a["axis"]), ins[0]),
    "embedding": lambda a, ins: embedding(*ins),
    "swiglu": lambda a, ins: swiglu(ins[0]),
}
