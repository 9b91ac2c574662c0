"""Zero-invariance on random graphs (hypothesis, derandomized, 30 examples each): groups found, a random
removal, and the pruned graph computes what the original with those channels zeroed computes (tolerances of
``assert_zero_invariant``).

CNNs: convs (plain, depthwise, with a channel multiplier, grouped), BN, ReLU, per-channel scales (also
channels-last), residual Add, Concat, Split, Slice, Gather, MaxPool, and a Flatten into a Gemm.
Transformers: residual MLPs and attention (separate or fused QKV, grouped-query attention).
"""

from __future__ import annotations

import re

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_prune_groups import assert_zero_invariant

import nasc
from nasc.ir import parse
from nasc.passes.prune_groups import channel_groups


class _Text:
    """IR text being written: lines, constants, fresh value names."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: list[str] = []
        self.k = 0

    def name(self) -> str:
        self.k += 1
        return f"v{self.k}"

    def const(self, *shape: int, kind: str = "f32") -> str:
        n = self.name()
        self.consts.append(f'const %{n} : {kind}[{",".join(map(str, shape))}] = "{n}"')
        return n

    def ints(self, vals: list[int]) -> str:
        n = self.name()
        self.consts.append(f'const %{n} : i64[{len(vals)}] = dense[{", ".join(map(str, vals))}]')
        return n

    def op(self, shape: tuple[int, ...], op: str, args: list[str], attrs: str = "") -> str:
        out = self.name()
        self.lines.append(f'%{out} : f32[{",".join(map(str, shape))}] = {op}({", ".join("%" + a for a in args)})'
                          f'{attrs} #"{out}"')
        return out


class _Chain(_Text):
    """IR text for a random CNN on [1, C, 6, 6]: convs (plain, depthwise, grouped), BN, ReLU, per-channel
    Mul, residual Add, Concat, Split, channel Slice; then global pooling, Flatten and a Gemm to the output."""

    def __init__(self, draw: st.DrawFn, c0: int) -> None:
        super().__init__()
        self.draw = draw
        self.x = self.name()
        self.lines.append(f"input %{self.x} : f32[1,{c0},6,6]")
        self.live: list[tuple[str, int]] = []  # (value, channels) of every activation so far
        self.cur = (self.x, c0)

    def node(self, c: int, op: str, args: list[str], attrs: str = "") -> str:
        out = self.op((1, c, 6, 6), op, args, attrs)
        self.live.append((out, c))
        self.cur = (out, c)
        return out

    def conv(self, x: str, cin: int, cout: int, group: int = 1) -> str:
        k = self.draw(st.sampled_from([1, 3]))
        args = [x, self.const(cout, cin // group, k, k)] + ([self.const(cout)] if self.draw(st.booleans()) else [])
        attrs = f"pads=[{k // 2}, {k // 2}, {k // 2}, {k // 2}]" + (f", group={group}" if group > 1 else "")
        return self.node(cout, "Conv", args, " {" + attrs + "}")

    def step(self) -> None:
        x, c = self.cur
        kind = self.draw(st.sampled_from(["conv", "conv", "dw", "dw2", "group", "bn", "relu", "mul", "add", "concat",
                                          "split", "slice", "gather", "nhwc", "pool"]))
        if kind == "conv" or (kind == "group" and c % 2) or (kind in ("add", "concat") and len(self.live) < 2):
            self.conv(x, c, self.draw(st.integers(2, 8)))
        elif kind == "dw":
            self.conv(x, c, c, group=c)
        elif kind == "dw2":  # depthwise with a channel multiplier of 2
            self.conv(x, c, 2 * c, group=c)
        elif kind == "gather":  # a constant selection of channels, repeats allowed
            idx = self.draw(st.lists(st.integers(-c, c - 1), min_size=1, max_size=c + 2))
            self.node(len(idx), "Gather", [x, self.ints(idx)], " {axis=1}")
        elif kind == "nhwc":  # channels last for a per-channel scale, and back
            t, m = self.name(), self.name()
            self.lines.append(f'%{t} : f32[1,6,6,{c}] = Transpose(%{x}) {{perm=[0, 2, 3, 1]}} #"{t}"')
            self.lines.append(f'%{m} : f32[1,6,6,{c}] = Mul(%{t}, %{self.const(c)}) #"{m}"')
            self.node(c, "Transpose", [m], " {perm=[0, 3, 1, 2]}")
        elif kind == "pool":
            self.node(c, "MaxPool", [x], " {kernel_shape=[3, 3], pads=[1, 1, 1, 1]}")
        elif kind == "group":
            self.conv(x, c, 2 * self.draw(st.integers(1, 4)), group=2)
        elif kind == "bn":
            s, b, m = self.const(c), self.const(c), self.const(c)
            self.node(c, "BatchNormalization", [x, s, b, m, self.const(c, kind="f32v")])
        elif kind == "relu":
            self.node(c, "Relu", [x])
        elif kind == "mul":
            self.node(c, "Mul", [x, self.const(c, 1, 1)])
        elif kind == "add":  # a residual from an earlier value, projected to the current width when needed
            y, cy = self.draw(st.sampled_from(self.live[:-1]))
            if cy != c:
                y = self.conv(y, cy, c)
            self.node(c, "Add", [x, y])
        elif kind == "concat":
            y, cy = self.draw(st.sampled_from(self.live[:-1]))
            self.node(c + cy, "Concat", [x, y] if self.draw(st.booleans()) else [y, x], " {axis=1}")
        elif kind == "split" and c >= 2:
            a = self.draw(st.integers(1, c - 1))
            p, q = self.name(), self.name()
            sizes = self.ints([a, c - a])
            parts = f"%{p} : f32[1,{a},6,6], %{q} : f32[1,{c - a},6,6]"
            self.lines.append(f'{parts} = Split(%{x}, %{sizes}) {{axis=1}} #"{p}"')
            self.live += [(p, a), (q, c - a)]
            pa, qa = self.conv(p, a, c), self.conv(q, c - a, c)
            self.node(c, "Add", [pa, qa])
        elif kind == "slice" and c >= 2:
            s = self.draw(st.integers(0, c - 2))
            e = self.draw(st.integers(s + 1, c))
            self.node(e - s, "Slice", [x, self.ints([s]), self.ints([e]), self.ints([1])])
        else:
            self.node(c, "Relu", [x])

    def text(self, classes: int, pool: bool) -> str:
        """The tail: global pooling then Flatten, or Flatten of the whole map (a channel is 36 of the Gemm's K)."""
        x, c = self.cur
        p, f, y = self.name(), self.name(), self.name()
        k = c if pool else 36 * c
        w, b = self.const(classes, k), self.const(classes)
        tail = [f'%{p} : f32[1,{c},1,1] = GlobalAveragePool(%{x}) #"{p}"' if pool else f'%{p} : f32[1,{c},6,6] = Relu(%{x}) #"{p}"',
                f'%{f} : f32[1,{k}] = Flatten(%{p}) {{axis=1}} #"{f}"',
                f'%{y} : f32[1,{classes}] = Gemm(%{f}, %{w}, %{b}) {{transB=1}} #"{y}"', f"output %{y}"]
        return "\n".join(['graph "random" opsets {"": 21}', self.lines[0], *self.consts, *self.lines[1:], *tail]) + "\n"


@st.composite
def random_cnn(draw: st.DrawFn) -> str:
    chain = _Chain(draw, draw(st.integers(1, 4)))
    for _ in range(draw(st.integers(3, 8))):
        chain.step()
    return chain.text(draw(st.integers(2, 5)), draw(st.booleans()))


def build_random(text: str) -> nasc.Graph:
    """Constants: normal weights, variances ("f32v") in [0.5, 2]."""
    rng = np.random.default_rng(0)
    consts = {}
    for name, kind, shp in re.findall(r'const %(\w+) : (f32v?)\[([\d,]*)\] = "', text):
        dims = [int(d) for d in shp.split(",")]
        consts[name] = (rng.uniform(0.5, 2, dims) if kind == "f32v" else rng.standard_normal(dims)).astype(np.float32)
    return parse(text.replace(": f32v[", ": f32["), consts)


def check_random_removals(g, a, data):
    """Remove some units of up to three drawn groups (never a whole group: the pass always keeps a unit of every
    group) and check zero-invariance."""
    candidates = [grp for grp in a.prunable if grp.size > 1]
    if not candidates:
        return
    picked = data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique_by=lambda x: x.id))
    removed = {}
    for grp in picked:
        k = data.draw(st.integers(1, grp.size - 1))
        removed[grp.id] = data.draw(st.lists(st.integers(0, grp.size - 1), min_size=k, max_size=k, unique=True))
    assert_zero_invariant(g, a, removed, changes=False)


@settings(max_examples=30, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=random_cnn(), data=st.data())
def test_random_cnns_are_zero_invariant(text, data):
    g = build_random(text)
    a = channel_groups(g)
    for grp in a.groups:  # every weight-bearing axis the graph's channels flow through is accounted for
        assert grp.size >= 1 and (grp.barrier or grp.prunable)
    assert not any(grp.inexact for grp in a.groups)  # no LayerNorm here
    check_random_removals(g, a, data)


class _Tokens(_Text):
    """IR text for a random transformer on [1, 4, D]: residual MLPs and attention blocks (separate or fused
    QKV projections, grouped-query attention repeated by Unsqueeze/Expand/Reshape), then a linear head."""

    S = 4

    def __init__(self, draw: st.DrawFn, d: int) -> None:
        super().__init__()
        self.draw, self.d = draw, d
        self.x = "x"

    def mlp(self) -> None:
        s, d, h = self.S, self.d, self.draw(st.integers(2, 12))
        up = self.op((1, s, h), "MatMul", [self.x, self.const(d, h)])
        if self.draw(st.booleans()):
            up = self.op((1, s, h), "Add", [up, self.const(h)])
        act = self.op((1, s, h), self.draw(st.sampled_from(["Relu", "Sigmoid"])), [up])
        down = self.op((1, s, d), "MatMul", [act, self.const(h, d)])
        self.x = self.op((1, s, d), "Add", [self.x, down])

    def heads(self, v: str, n: int, hd: int) -> str:
        """[1, S, n * hd] -> [1, n, S, hd]"""
        r = self.op((1, self.S, n, hd), "Reshape", [v, self.ints([1, self.S, n, hd])])
        return self.op((1, n, self.S, hd), "Transpose", [r], " {perm=[0, 2, 1, 3]}")

    def repeat(self, v: str, kv: int, rep: int, hd: int) -> str:
        """repeat_kv: [1, kv, S, hd] -> [1, kv * rep, S, hd]"""
        s = self.S
        u = self.op((1, kv, 1, s, hd), "Unsqueeze", [v, self.ints([2])])
        e = self.op((1, kv, rep, s, hd), "Expand", [u, self.ints([1, kv, rep, s, hd])])
        return self.op((1, kv * rep, s, hd), "Reshape", [e, self.ints([1, kv * rep, s, hd])])

    def attention(self) -> None:
        s, d = self.S, self.d
        nh, hd = self.draw(st.integers(1, 4)), self.draw(st.integers(2, 3))
        kv = self.draw(st.sampled_from([k for k in range(1, nh + 1) if nh % k == 0]))
        fused = kv == nh and self.draw(st.booleans())
        if fused:  # one projection to [3, heads, head_dim] (Swin, ViT), split into q, k, v
            qkv = self.op((1, s, 3 * nh * hd), "MatMul", [self.x, self.const(d, 3 * nh * hd)])
            r = self.op((1, s, 3, nh, hd), "Reshape", [qkv, self.ints([1, s, 3, nh, hd])])
            t = self.op((3, 1, nh, s, hd), "Transpose", [r], " {perm=[2, 0, 3, 1, 4]}")
            q, k, v = self.name(), self.name(), self.name()
            self.lines.append(f'%{q} : f32[1,1,{nh},{s},{hd}], %{k} : f32[1,1,{nh},{s},{hd}], '
                              f'%{v} : f32[1,1,{nh},{s},{hd}] = Split(%{t}) {{axis=0, num_outputs=3}} #"{q}"')
            axis0 = self.ints([0])
            q, k, v = (self.op((1, nh, s, hd), "Squeeze", [y, axis0]) for y in (q, k, v))
        else:
            q = self.heads(self.op((1, s, nh * hd), "MatMul", [self.x, self.const(d, nh * hd)]), nh, hd)
            k = self.heads(self.op((1, s, kv * hd), "MatMul", [self.x, self.const(d, kv * hd)]), kv, hd)
            v = self.heads(self.op((1, s, kv * hd), "MatMul", [self.x, self.const(d, kv * hd)]), kv, hd)
            if kv < nh:
                k, v = self.repeat(k, kv, nh // kv, hd), self.repeat(v, kv, nh // kv, hd)
        kt = self.op((1, nh, hd, s), "Transpose", [k], " {perm=[0, 1, 3, 2]}")
        sc = self.op((1, nh, s, s), "MatMul", [q, kt])
        p = self.op((1, nh, s, s), "Softmax", [sc], " {axis=-1}")
        o = self.op((1, nh, s, hd), "MatMul", [p, v])
        ot = self.op((1, s, nh, hd), "Transpose", [o], " {perm=[0, 2, 1, 3]}")
        om = self.op((1, s, nh * hd), "Reshape", [ot, self.ints([1, s, nh * hd])])
        out = self.op((1, s, d), "MatMul", [om, self.const(nh * hd, d)])
        self.x = self.op((1, s, d), "Add", [self.x, out])

    def text(self) -> str:
        y = self.op((1, self.S, 3), "MatMul", [self.x, self.const(self.d, 3)])
        return "\n".join(['graph "tokens" opsets {"": 21}', f"input %x : f32[1,{self.S},{self.d}]", *self.consts,
                          *self.lines, f"output %{y}"]) + "\n"


@st.composite
def random_transformer(draw: st.DrawFn) -> str:
    t = _Tokens(draw, draw(st.integers(4, 8)))
    for _ in range(draw(st.integers(1, 3))):
        t.attention() if draw(st.booleans()) else t.mlp()
    return t.text()


@settings(max_examples=30, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=random_transformer(), data=st.data())
def test_random_transformers_are_zero_invariant(text, data):
    """Heads (with their KV heads under GQA) and MLP units are prunable; the model width is not (the input)."""
    g = build_random(text)
    a = channel_groups(g)
    # every block prunes (a single head's dims are two groups: q with k, v with the output projection)
    n_blocks = text.count("Softmax(") + text.count("Sigmoid(") + text.count("Relu(")
    assert len([grp for grp in a.prunable if not grp.inexact]) >= n_blocks
    check_random_removals(g, a, data)
