"""Float64 numpy references for every op family of csrc/ops.h.

Written straight from /work/shared/GPT_OSS_FORMAT.md (section numbers below), not from the kernels.
Everything computes in float64; bf16 tensors are handled as their uint16 bit patterns. Both the
CPU and the CUDA backend are tested against this one module (tests/python/test_ops.py).
"""
from __future__ import annotations

import zlib

import numpy as np

# ---------------------------------------------------------------------------------------------
# test plumbing shared by the op tests
# ---------------------------------------------------------------------------------------------


def rng_for(*key) -> np.random.Generator:
    """A generator seeded by the test's own key (crc32 of its repr): the same inputs in every run
    and every process (str hash() is salted per process)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def check(out, want, bound, what):
    """Elementwise |out - want| <= bound (bound broadcast), else an AssertionError naming the worst
    element."""
    err = np.abs(np.asarray(out, np.float64) - np.asarray(want, np.float64))
    bound = np.broadcast_to(bound, err.shape)
    bad = err > bound
    if bad.any():
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(
            f"{what}: {bad.sum()} of {err.size} elements out of bound; worst at {i}: got {out[i]!r}, "
            f"want {want[i]!r}, |err| {err[i]:.3g} > bound {bound[i]:.3g}"
        )

# ---------------------------------------------------------------------------------------------
# bf16 <-> float (bit patterns in uint16)
# ---------------------------------------------------------------------------------------------


def f32_to_bf16_bits(x) -> np.ndarray:
    """float -> bf16 bits, round to nearest even on the float32 value; NaN stays a (quiet) NaN."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return np.where(nan, (u >> 16) | 0x40, rounded).astype(np.uint16)


def bf16_bits_to_f32(b) -> np.ndarray:
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def bf16_round(x) -> np.ndarray:
    """The value x takes when stored as bf16, as float64."""
    return bf16_bits_to_f32(f32_to_bf16_bits(x)).astype(np.float64)


def random_bf16(rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:
    """Normal(0, scale) values as bf16 bits."""
    return f32_to_bf16_bits(rng.standard_normal(shape) * scale)


# ---------------------------------------------------------------------------------------------
# RMSNorm (4.2): x * rsqrt(mean(x^2) + eps) * w
# ---------------------------------------------------------------------------------------------


def rmsnorm(x, w, eps: float = 1e-5) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * np.asarray(w, np.float64)


# ---------------------------------------------------------------------------------------------
# YaRN RoPE (4.3 step 5, 4.4): half-split pairing, NTK-by-parts frequencies, concentration
# ---------------------------------------------------------------------------------------------


def yarn_params(head_dim=64, base=150000.0, factor=32.0, initial_context=4096, ntk_alpha=1.0, ntk_beta=32.0):
    """Returns (inv_freq [head_dim/2], concentration, low, high). low/high are NOT rounded."""
    half = head_dim // 2
    freq = base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    low = half * np.log(initial_context / (ntk_beta * 2 * np.pi)) / np.log(base)
    high = half * np.log(initial_context / (ntk_alpha * 2 * np.pi)) / np.log(base)
    ramp = np.clip((np.arange(half, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    mask = 1.0 - ramp
    inv_freq = (1.0 / (factor * freq)) * (1.0 - mask) + (1.0 / freq) * mask
    concentration = 0.1 * np.log(factor) + 1.0
    return inv_freq, concentration, low, high


def rope_tables(max_pos: int, **yarn_kwargs):
    """cos, sin [max_pos, 32] float64 with the concentration folded into both."""
    inv_freq, c, _, _ = yarn_params(**yarn_kwargs)
    angles = np.arange(max_pos, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles) * c, np.sin(angles) * c


def apply_rope(x, positions, cos, sin) -> np.ndarray:
    """x [T, heads*64]; out[i] = x[i] cos - x[i+32] sin, out[i+32] = x[i+32] cos + x[i] sin."""
    x = np.asarray(x, np.float64)
    T = x.shape[0]
    h = x.reshape(T, -1, 64)
    c = np.asarray(cos, np.float64)[positions][:, None, :]
    s = np.asarray(sin, np.float64)[positions][:, None, :]
    a, b = h[..., :32], h[..., 32:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1).reshape(T, -1)


# ---------------------------------------------------------------------------------------------
# Attention with sinks and a sliding window (4.3 steps 6-9), over absolute positions
# ---------------------------------------------------------------------------------------------


def attention(q, q_pos, keys, values, sinks, window: int = 0, scale: float = 0.125) -> np.ndarray:
    """One sequence. q [Tq, n_q, 64] at absolute positions q_pos; keys/values [P, n_kv, 64] hold
    positions 0..P-1. Query at p sees keys [lo, p], lo = max(0, p - window + 1) if window else 0.
    p = exp(s) / (sum exp(s) + exp(sink)): the sink has no value row, is not scaled, not masked.
    Returns [Tq, n_q, 64]."""
    q = np.asarray(q, np.float64)
    keys = np.asarray(keys, np.float64)
    values = np.asarray(values, np.float64)
    sinks = np.asarray(sinks, np.float64)
    n_q, n_kv = q.shape[1], keys.shape[1]
    G = n_q // n_kv
    out = np.zeros_like(q)
    for t, p in enumerate(q_pos):
        lo = max(0, p - window + 1) if window else 0
        k = keys[lo : p + 1]  # [n, n_kv, 64]
        v = values[lo : p + 1]
        qh = q[t].reshape(n_kv, G, 64)
        s = np.einsum("ngd,gmd->gmn", k, qh) * scale  # [n_kv, G, n]
        sink = sinks.reshape(n_kv, G)
        m = np.maximum(s.max(axis=-1), sink)
        e = np.exp(s - m[..., None])
        denom = e.sum(axis=-1) + np.exp(sink - m)
        out[t] = (np.einsum("gmn,ngd->gmd", e, v) / denom[..., None]).reshape(n_q, 64)
    return out


# ---------------------------------------------------------------------------------------------
# Router (4.5 steps 2-3): top-k (ties: lower expert index first), softmax over the k only
# ---------------------------------------------------------------------------------------------


def router_topk(logits, k: int):
    logits = np.asarray(logits, np.float64)
    idx = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    sel = np.take_along_axis(logits, idx, axis=-1)
    e = np.exp(sel - sel[:, :1])
    return idx.astype(np.int32), e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# SwiGLU (4.5 step 4): even rows glu (clamped above only), odd rows linear (clamped), +1
# ---------------------------------------------------------------------------------------------


def swiglu(u, alpha: float = 1.702, limit: float = 7.0) -> np.ndarray:
    u = np.asarray(u, np.float64)
    glu = np.minimum(u[..., 0::2], limit)
    lin = np.clip(u[..., 1::2], -limit, limit)
    return glu / (1.0 + np.exp(-alpha * glu)) * (lin + 1.0)


# ---------------------------------------------------------------------------------------------
# MXFP4 (3): E2M1 codes, byte j = element 2j (low nibble) and 2j+1 (high nibble), E8M0 scale
# ---------------------------------------------------------------------------------------------

FP4_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float64)


def mxfp4_decode(blocks, scales) -> np.ndarray:
    """blocks [..., G, 16] uint8, scales [..., G] uint8 -> [..., G*32] float64."""
    blocks = np.asarray(blocks, np.uint8)
    scales = np.asarray(scales, np.uint8)
    vals = np.empty(blocks.shape[:-1] + (32,), np.float64)
    vals[..., 0::2] = FP4_VALUES[blocks & 0x0F]
    vals[..., 1::2] = FP4_VALUES[blocks >> 4]
    vals *= np.ldexp(1.0, scales.astype(np.int64) - 127)[..., None]
    return vals.reshape(blocks.shape[:-2] + (blocks.shape[-2] * 32,))


def make_mxfp4(rng: np.random.Generator, rows_shape, K: int, exponent: int, spread: int = 1):
    """Random MXFP4 weights [*rows_shape, K]: uniform random codes and scales 2^e with
    e in [exponent - spread, exponent + spread]. Returns (blocks uint8, scales uint8)."""
    G = K // 32
    blocks = rng.integers(0, 256, size=tuple(rows_shape) + (G, 16), dtype=np.uint8)
    scales = (127 + rng.integers(exponent - spread, exponent + spread + 1, size=tuple(rows_shape) + (G,))).astype(np.uint8)
    return blocks, scales


def _moe_passes(x, expert_idx, expert_w, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2, alpha, limit, rounds):
    """The MoE once per entry of `rounds` (None, or a rounding applied to x and to the swiglu
    output), decoding each active expert's weights once for all passes. Returns the outputs, and
    the per-row magnitudes and mlp1 pre-activations of the first pass."""
    x = np.asarray(x, np.float64)
    T, H = x.shape
    xs = [x if r is None else r(x) for r in rounds]
    outs = [np.zeros((T, H)) for _ in rounds]
    mag = np.zeros((T, H))
    us = []
    for e in np.unique(expert_idx):
        tok, slot = np.nonzero(expert_idx == e)
        W1 = mxfp4_decode(w1_blocks[e], w1_scales[e])
        W2 = mxfp4_decode(w2_blocks[e], w2_scales[e])
        w = np.asarray(expert_w, np.float64)[tok, slot][:, None]
        for i, r in enumerate(rounds):
            u = xs[i][tok] @ W1.T + np.asarray(b1[e], np.float64)
            z = swiglu(u, alpha, limit)
            if r is not None:
                z = r(z)
            y = z @ W2.T + np.asarray(b2[e], np.float64)
            np.add.at(outs[i], tok, w * y)
            if i == 0:
                np.add.at(mag, tok, np.abs(w) * (np.abs(z) @ np.abs(W2).T + np.abs(np.asarray(b2[e], np.float64))))
                us.append(u)
    return outs, mag, np.concatenate(us)


def moe(x, expert_idx, expert_w, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2, alpha=1.702, limit=7.0,
        act_round=None, return_parts=False):
    """out[t] = sum_j w[t,j] (W2[e] swiglu(W1[e] x[t] + b1[e]) + b2[e]), e = expert_idx[t, j].
    act_round (optional) is applied to x and to the swiglu output, to model a backend that keeps
    activations in bf16. With return_parts, also returns per-row magnitudes
    sum_j w_j (|W2| |z| + |b2|) (for error bounds) and the mlp1 pre-activations of every pair."""
    (out,), mag, u = _moe_passes(x, expert_idx, expert_w, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2, alpha,
                                 limit, [act_round])
    return (out, mag, u) if return_parts else out


def moe_exact_and_rounded(x, expert_idx, expert_w, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2, alpha=1.702,
                          limit=7.0, act_round=None):
    """(exact, mag, rounded): moe(..., return_parts=True)'s output and magnitudes, and
    moe(..., act_round=act_round), from one decode of each expert's weights (the 20b-shape tests
    spend most of their time decoding)."""
    (exact, rounded), mag, _ = _moe_passes(x, expert_idx, expert_w, w1_blocks, w1_scales, b1, w2_blocks, w2_scales, b2,
                                           alpha, limit, [None, act_round or bf16_round])
    return exact, mag, rounded


# ---------------------------------------------------------------------------------------------
# Sampling (csrc/ops.h SamplingConfig): Philox4x32-10, filters, inverse-CDF draw
# ---------------------------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF


def philox4x32_10(ctr, key):
    """Philox4x32-10 (Salmon et al. 2011): ctr 4 x u32, key 2 x u32 -> 4 x u32."""
    c = [int(v) & _MASK32 for v in ctr]
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    for _ in range(10):
        p0 = 0xD2511F53 * c[0]
        p1 = 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & _MASK32, (p0 >> 32) ^ c[3] ^ k1, p0 & _MASK32]
        k0 = (k0 + 0x9E3779B9) & _MASK32
        k1 = (k1 + 0xBB67AE85) & _MASK32
    return c


def philox_uniform(seed: int, counter: int) -> float:
    """u in [0, 1) with 24 bits: word 0 of Philox at counter (counter, 0, 0) keyed by the seed."""
    w = philox4x32_10((counter & _MASK32, counter >> 32, 0, 0), (seed & _MASK32, (seed >> 32) & _MASK32))[0]
    return (w >> 8) / 16777216.0


def sampling_kept(logits, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """Unnormalised probabilities q [V] (float64) of softmax(logits / temperature) after the
    filters, in the order top_k, top_p, min_p; dropped tokens get 0."""
    l = np.asarray(logits, np.float64)
    l = np.where(np.isnan(l), -np.inf, l)
    q = np.exp((l - l.max()) / temperature)
    V = l.size
    if 0 < top_k < V:
        kth = np.sort(l)[::-1][top_k - 1]
        q = np.where(l >= kth, q, 0.0)
    if top_p < 1.0:
        target = top_p * q.sum()
        desc = np.sort(q[q > 0])[::-1]
        i = int(np.searchsorted(np.cumsum(desc), target, side="left"))
        thr = desc[min(i, desc.size - 1)]
        q = np.where(q >= thr, q, 0.0)
    if min_p > 0.0:
        q = np.where(q >= min_p * q.max(), q, 0.0)
    return q


def sample(logits, temperature, top_k=0, top_p=1.0, min_p=0.0, seed=0, counter=0):
    """Returns (token, margin). Greedy at temperature 0 (lowest id on ties, margin inf). Otherwise
    the first id, in id order, whose running kept mass exceeds u * total; margin is the distance
    of u * total to the nearest CDF step, relative to total (tiny margins may flip under f32)."""
    l = np.asarray(logits, np.float64)
    if temperature == 0:
        return int(np.argmax(np.where(np.isnan(l), -np.inf, l))), np.inf
    q = sampling_kept(l, temperature, top_k, top_p, min_p)
    cdf = np.cumsum(q)
    total = cdf[-1]
    target = philox_uniform(seed, counter) * total
    tok = int(np.argmax(cdf > target))
    margin = np.min(np.abs(cdf[q > 0] - target)) / total
    return tok, margin


def log_softmax(logits) -> np.ndarray:
    l = np.asarray(logits, np.float64)
    m = l.max(axis=-1, keepdims=True)
    return l - m - np.log(np.exp(l - m).sum(axis=-1, keepdims=True))
