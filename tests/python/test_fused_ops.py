"""The fused op families of csrc/ops.h: attn_input (rmsnorm -> qkv -> RoPE [-> KV append]) and
moe_input (rmsnorm -> router -> top-k).

On the CPU they are the composition of the single ops (Backend's default), checked against the
float64 references of tests/reference.py at f32 tolerance. On CUDA, attn_input steps of <= 8 tokens
run one fused kernel (cuda/dense_bf16.cu: the norm in every block's prologue, the GEMV, then the
RoPE / KV append in its epilogue), larger ones the composition; moe_input steps of <= 128 tokens
(E <= 128) run a thread-block-cluster kernel on sm_90 (one token: cuda/moe_input_expert_split.cu,
experts split over the blocks, E = 33 and 128 over 2 and 4; more: cuda/moe_input_cluster.cu, K split,
chunks of 16 tokens, so 17 and 64 cross chunks), elsewhere the GEMV fusion with the top-k in its
epilogue for <= 8 tokens. CUDA is checked against the same ops run one by one on CUDA (the engine's unfused
path: bf16 at every op boundary):
  * xn: for one token every fused path repeats f32_rmsnorm's loop and reduction order (bit for
    bit, asserted); for several, and in the K-split cluster kernel, the sum of squares runs in another order; two roundings of nearly equal values are at
    most one ulp apart (2 x 2^-8 relative);
  * q/k/v: the GEMV's f32 sums may be split differently, so a pre-RoPE value may round to the
    neighbouring bf16 (one ulp), which RoPE mixes with the pair's other value:
    |err| <= conc (2^-7 (|a| + |b|) + f32 noise + any xn ulp times |w|) + 2^-7 |out|
    (a, b the pre-RoPE pair, conc = max|cos| + max|sin|);
  * KV cache: the appended rows as q/k/v; every other entry bit for bit unchanged;
  * router logits: f32 sums in another order, 2 x 2^-16 of sum |x w| + |b| (+ any xn ulp times
    |w|); the top-k is exact on the fused kernel's own logits (except exact ties); weights 1e-5
    relative.
Shapes: the 20b layer (H = 2880, 64/8 heads, 32 experts, top-4), the 120b router (128 experts) and
odd small ones; T = 1, 2, 3, 8, 9, 17, 64.
"""
from __future__ import annotations

import numpy as np
import pytest

import reference as ref
from gpt_oss_c import _core
from helpers import DEVICES

ops = _core.ops
HAVE_CUDA = _core.cuda_available()
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA backend or GPU (_core.cuda_available() is False)")
F32_REL = 1e-5
F32_ACC = 2.0**-16
BF16_U = 2.0**-8


def pair_sum(a):
    """a [T, heads*64] -> a[i] + a[i + 32] at both i and i + 32 of every head (the RoPE pairs)."""
    h = np.asarray(a, np.float64).reshape(a.shape[0], -1, 2, 32)
    return np.concatenate([h[:, :, 0] + h[:, :, 1]] * 2, axis=-1).reshape(a.shape)


def attn_case(T, H, n_q, n_kv, seed=0):
    rng = ref.rng_for("fused", "attn", T, H, n_q, n_kv, seed)
    N = (n_q + 2 * n_kv) * 64
    x = (rng.standard_normal((T, H)) * 3).astype(np.float32)
    nw = (1 + 0.1 * rng.standard_normal(H)).astype(np.float32)
    w = ref.random_bf16(rng, (N, H), 0.05)
    b = rng.standard_normal(N).astype(np.float32)
    cos, sin = (t.astype(np.float32) for t in ref.rope_tables(4096))
    pos = rng.choice(np.arange(127, 4000), size=T, replace=False).astype(np.int32)
    return x, nw, w, b, cos, sin, pos


def cache_case(T, n_kv, len_, seed=0):
    rng = ref.rng_for("fused", "cache", T, n_kv, len_, seed)
    slots = T + 2
    ck = ref.random_bf16(rng, (slots, n_kv, len_, 64))
    cv = ref.random_bf16(rng, (slots, n_kv, len_, 64))
    seq_slot = rng.permutation(slots)[:T].astype(np.int32)
    return ck, cv, seq_slot


SHAPES = [(2880, 64, 8), (96, 4, 2), (160, 2, 1)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T", [1, 3, 8, 9])
@pytest.mark.parametrize("H,n_q,n_kv", SHAPES)
def test_attn_input_matches_reference(device, T, H, n_q, n_kv):
    x, nw, w, b, cos, sin, pos = attn_case(T, H, n_q, n_kv)
    xn, qkv, _, _ = ops.attn_input(x, nw, w, b, n_q, n_kv, pos, cos, sin, device=device)
    act_bf16 = ops.backend_info(device)["act_type"] == "BF16"
    xn_ref = ref.rmsnorm(x, nw)
    wf = ref.bf16_bits_to_f32(w).astype(np.float64)
    xin = np.asarray(xn, np.float64)  # the normed values (bf16 on CUDA) the projection read
    y = xin @ wf.T + b
    mag = pair_sum(np.abs(xin) @ np.abs(wf).T + np.abs(b))
    Q, R = n_q * 64, (n_q + n_kv) * 64
    want = np.concatenate([ref.apply_rope(y[:, :R], pos, cos, sin), y[:, R:]], axis=1)
    # Bound: f32 accumulation, plus (bf16 activations) the rounding of y before RoPE and of the
    # result, each half an ulp, mixed by RoPE with |cos| + |sin| <= conc.
    conc = float(np.max(np.abs(cos)) + np.max(np.abs(sin)))
    pair_mag = pair_sum(np.abs(y))
    if act_bf16:
        bound = conc * (F32_ACC * mag + BF16_U * pair_mag) + BF16_U * np.abs(want) + 1e-6
        ref.check(xn, xn_ref, BF16_U * np.abs(xn_ref) + 1e-6, f"attn_input xn {device} T={T} H={H}")
    else:
        bound = conc * (F32_REL * mag) + F32_REL * np.abs(want) + 1e-6
        ref.check(xn, xn_ref, F32_REL * np.abs(xn_ref) + 1e-6, f"attn_input xn {device} T={T} H={H}")
    ref.check(qkv, want, bound, f"attn_input qkv {device} T={T} H={H} heads={n_q}/{n_kv} (q {Q} cols)")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("len_", [128, 4096])
def test_attn_input_appends_decode_tokens(device, T, len_):
    H, n_q, n_kv = 96, 4, 2
    x, nw, w, b, cos, sin, pos = attn_case(T, H, n_q, n_kv, seed=1)
    ck, cv, seq_slot = cache_case(T, n_kv, len_)
    xn, qkv, ck2, cv2 = ops.attn_input(x, nw, w, b, n_q, n_kv, pos, cos, sin, cache_k=ck, cache_v=cv,
                                       seq_slot=seq_slot, device=device)
    xn1, qkv1, _, _ = ops.attn_input(x, nw, w, b, n_q, n_kv, pos, cos, sin, device=device)
    np.testing.assert_array_equal(qkv, qkv1)  # appending changes nothing else
    Q, KV = n_q * 64, n_kv * 64
    k = qkv[:, Q : Q + KV].reshape(T, n_kv, 64)
    v = qkv[:, Q + KV :].reshape(T, n_kv, 64)
    want_k, want_v = ck.copy(), cv.copy()
    for t in range(T):
        want_k[seq_slot[t], :, pos[t] % len_] = ref.f32_to_bf16_bits(k[t])
        want_v[seq_slot[t], :, pos[t] % len_] = ref.f32_to_bf16_bits(v[t])
    # The cache holds exactly the (bf16) k and v this call returned; nothing else moved.
    np.testing.assert_array_equal(ck2, want_k)
    np.testing.assert_array_equal(cv2, want_v)


@needs_cuda
@pytest.mark.parametrize("T", [1, 3, 8, 9])
@pytest.mark.parametrize("H,n_q,n_kv", SHAPES)
def test_cuda_attn_input_fused_matches_op_by_op(T, H, n_q, n_kv):
    x, nw, w, b, cos, sin, pos = attn_case(T, H, n_q, n_kv, seed=2)
    ck, cv, seq_slot = cache_case(T, n_kv, 256, seed=2)
    xn, qkv, ck2, cv2 = ops.attn_input(x, nw, w, b, n_q, n_kv, pos, cos, sin, cache_k=ck, cache_v=cv,
                                       seq_slot=seq_slot, device="cuda")
    xn1 = ops.rmsnorm(x, nw, device="cuda")
    y1 = ops.dense(xn1, w, bias=b, device="cuda")
    Q, R = n_q * 64, (n_q + n_kv) * 64
    q1, k1 = ops.rope(y1[:, :Q], y1[:, Q:R], pos, cos, sin, device="cuda")
    out1 = np.concatenate([q1, k1, y1[:, R:]], axis=1)
    path = "fused" if T <= 128 else "composition"
    ref.check(xn, xn1, 2 * BF16_U * np.abs(xn1), f"attn_input xn ({path}) T={T} H={H}")
    wf = ref.bf16_bits_to_f32(w).astype(np.float64)
    mag = pair_sum(np.abs(np.asarray(xn1, np.float64)) @ np.abs(wf).T + np.abs(b))
    xn_diff = pair_sum(np.abs(np.asarray(xn, np.float64) - xn1) @ np.abs(wf).T)  # if an xn rounded apart
    conc = float(np.max(np.abs(cos)) + np.max(np.abs(sin)))
    pair_mag = pair_sum(np.abs(np.asarray(y1, np.float64)))
    # Two roundings of nearly equal values may land one ulp (<= 2 x 2^-8 relative) apart.
    bound = conc * (2 * F32_ACC * mag + xn_diff + 2 * BF16_U * pair_mag) + 2 * BF16_U * np.abs(out1) + 1e-6
    ref.check(qkv, out1, bound, f"attn_input qkv ({path}) vs op by op T={T} H={H} heads={n_q}/{n_kv}")
    ck1, cv1 = ops.kv_append(qkv[:, Q:R], qkv[:, R:], ck, cv, seq_slot, pos, np.ones(T, np.int32), device="cuda")
    np.testing.assert_array_equal(ck2, ck1)
    np.testing.assert_array_equal(cv2, cv1)


@pytest.mark.parametrize("device", DEVICES)
def test_attn_input_rejects_bad_slot(device):
    x, nw, w, b, cos, sin, pos = attn_case(1, 96, 4, 2, seed=3)
    ck, cv, _ = cache_case(1, 2, 128)
    with pytest.raises(ValueError, match="slot"):
        ops.attn_input(x, nw, w, b, 4, 2, pos, cos, sin, cache_k=ck, cache_v=cv, seq_slot=np.array([7], np.int32),
                       device=device)


def moe_case(T, H, E, seed=0):
    rng = ref.rng_for("fused", "moe", T, H, E, seed)
    x = (rng.standard_normal((T, H)) * 3).astype(np.float32)
    nw = (1 + 0.1 * rng.standard_normal(H)).astype(np.float32)
    w = ref.random_bf16(rng, (E, H), 0.05)
    b = rng.standard_normal(E).astype(np.float32)
    return x, nw, w, b


def check_topk(idx, wts, logits, bound, k, what):
    """Experts exact where the selection is clear by more than `bound`; weights 1e-5 relative."""
    want_idx, want_w = ref.router_topk(logits, k)
    srt = np.sort(logits, axis=-1)[:, ::-1]
    ordered_gaps = np.abs(np.diff(srt[:, : k + 1], axis=-1))  # within the top k and to the (k+1)-th
    clear = (ordered_gaps > 2 * np.max(bound, axis=-1, keepdims=True)).all(axis=-1)
    np.testing.assert_array_equal(idx[clear], want_idx[clear], err_msg=what + " experts")
    ref.check(wts[clear], want_w[clear], 1e-5 * np.abs(want_w[clear]) + 1e-6, what + " weights")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T", [1, 3, 8, 9, 17])
@pytest.mark.parametrize("H,E,k", [(2880, 32, 4), (96, 128, 4), (160, 7, 3), (64, 256, 8)])
def test_moe_input_matches_reference(device, T, H, E, k):
    x, nw, w, b = moe_case(T, H, E)
    xn, logits, idx, wts = ops.moe_input(x, nw, w, b, k, device=device)
    act_bf16 = ops.backend_info(device)["act_type"] == "BF16"
    xn_ref = ref.rmsnorm(x, nw)
    ref.check(xn, xn_ref, (BF16_U if act_bf16 else F32_REL) * np.abs(xn_ref) + 1e-6, f"moe_input xn {device} T={T}")
    xin = np.asarray(xn, np.float64)  # the bf16 (or f32) values the router read
    wf = ref.bf16_bits_to_f32(w).astype(np.float64)
    want = xin @ wf.T + b
    mag = np.abs(xin) @ np.abs(wf).T + np.abs(b)
    bound = (F32_ACC if act_bf16 else F32_REL) * mag + 1e-6
    ref.check(logits, want, bound, f"moe_input logits {device} T={T} H={H} E={E}")
    check_topk(idx, wts, np.asarray(logits, np.float64), np.zeros_like(bound), k, f"moe_input {device} T={T} E={E}")


@needs_cuda
@pytest.mark.parametrize("T", [1, 2, 8, 9, 17, 64])
@pytest.mark.parametrize("H,E,k", [(2880, 32, 4), (2880, 128, 4), (96, 33, 5), (40, 7, 3)])
def test_cuda_moe_input_fused_matches_op_by_op(T, H, E, k):
    x, nw, w, b = moe_case(T, H, E, seed=1)
    xn, logits, idx, wts = ops.moe_input(x, nw, w, b, k, device="cuda")
    xn1 = ops.rmsnorm(x, nw, device="cuda")
    lg1 = ops.dense(xn1, w, bias=b, f32_out=True, device="cuda")
    path = "fused" if T <= 128 else "composition"
    ref.check(xn, xn1, 2 * BF16_U * np.abs(xn1), f"moe_input xn ({path}) T={T}")
    if T == 1:
        np.testing.assert_array_equal(xn, xn1, err_msg="moe_input xn of one token: f32_rmsnorm's bits")
    wf = ref.bf16_bits_to_f32(w).astype(np.float64)
    mag = np.abs(np.asarray(xn1, np.float64)) @ np.abs(wf).T + np.abs(b)
    bound = 2 * F32_ACC * mag + np.abs(np.asarray(xn, np.float64) - xn1) @ np.abs(wf).T + 1e-6
    ref.check(logits, lg1, bound, f"moe_input logits ({path}) vs op by op T={T} E={E}")
    # The top-k ran on the fused kernel's own logits: exact against the reference selection on them.
    check_topk(idx, wts, np.asarray(logits, np.float64), np.zeros_like(bound), k, f"moe_input ({path}) T={T} E={E}")
    for _ in range(2):  # repeated calls: the split-K and finished-tile counters were left at zero
        again = ops.moe_input(x, nw, w, b, k, device="cuda")
        np.testing.assert_array_equal(again[1], logits)
        np.testing.assert_array_equal(again[2], idx)
