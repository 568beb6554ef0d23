"""Numerics check for an e4m3 tensor-core decode MoE (bench/NOTES.md, plan at the end of session 8).

FP4 weights are exact e4m3 values (times 2^-6), so mma.m16n8k32.e4m3 could take them after a few
integer ops, if the bf16 activation is split into e4m3 terms, each 32-element block of a term with its
own power-of-two scale (the block's max |remainder| scaled into [2^shift, 2^(shift+1))). This prints,
per activation distribution and number of terms, whether the terms sum back to x exactly and the
largest error of an FP4 GEMV (2048 x 2880, real-checkpoint-like scales) relative to the bf16 rounding
of its own output. Run: python bench/fp8_split_check.py (numpy and torch >= 2.1 for float8_e4m3fn).
"""
import numpy as np
import torch

rng = np.random.default_rng(0)


def bf16(a):
    return torch.tensor(a, dtype=torch.float32).to(torch.bfloat16).to(torch.float64).numpy()


def e4m3(a):
    return torch.tensor(a, dtype=torch.float32).to(torch.float8_e4m3fn).to(torch.float64).numpy()


def split(x, terms, shift):
    r = x.reshape(-1, 32).copy()
    out = np.zeros_like(r)
    for _ in range(terms):
        m = np.abs(r).max(axis=1, keepdims=True)
        s = 2.0 ** np.where(m > 0, np.floor(np.log2(np.where(m > 0, m, 1))) - shift, 0)
        q = e4m3(r / s) * s
        out += q
        r -= q
    return out.reshape(x.shape)


K, N = 2880, 2048
fp4 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6])[rng.integers(0, 16, size=(N, K))]
W = fp4 * 2.0 ** rng.integers(-9, -5, size=(N, K // 32)).repeat(32, axis=1)
g = lambda: rng.standard_normal(K)  # noqa: E731
inputs = [("normal", g()), ("heavy t3", rng.standard_t(3, K)),
          ("spiky", g() * np.where(rng.random(K) < 0.01, 100, 1)),
          ("1e-6..1e2", g() * 10.0 ** rng.uniform(-6, 2, K)),
          ("swiglu z", np.clip(3 * g(), -7, 7) / (1 + np.exp(-1.702 * np.clip(3 * g(), None, 7))) * (np.clip(3 * g(), -7, 7) + 1))]
for shift in (8, 7):
    for name, x in inputs:
        xb = bf16(x)
        y = W @ xb
        ref = np.abs(bf16(y) - y).max()
        res = []
        for t in (2, 3):
            xt = split(xb, t, shift)
            res.append(f"{t} terms: x exact {np.array_equal(xt, xb)}, dot err / output bf16 rounding "
                       f"{np.abs(W @ xt - y).max() / ref:.2g}")
        print(f"block max in [2^{shift}, 2^{shift + 1}) {name:10s} " + " | ".join(res))
