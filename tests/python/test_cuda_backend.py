"""CUDA backend: CUDA against CPU on identical inputs (in the style of llama.cpp's test-backend-ops),
at the shapes that select the CUDA kernels' own code paths (decode split-K over 4K-8K keys, one
split for wide batches, decode of sequences with several tokens, prefill tiles over many sequences
and odd GQA groups, chunked prefill through a sliding-window ring cache, full-vocab sampling with
mixed per-sequence settings), plus the error a caller gets when CUDA is asked for and cannot be had
(that one runs everywhere).

Inputs are rounded to bf16 before either backend sees them, so both compute from the same values
and every difference comes from the CUDA kernels' own roundings. Tolerances, stated where used:
  * copies, indices and token ids: exact;
  * bf16 outputs: one rounding to bf16 costs at most 2^-8 relative (8 significant bits);
  * attention (prefill kernel) additionally rounds the softmax weights p to bf16 for the P.V
    tensor-core product, at most 2^-8 of sum_j p_j |v_j| -- so |cuda - cpu| <= 2^-8 (|out| +
    sum p|v|) + f32 noise;
  * decode attention feeds p to P.V as hi + lo bf16 parts (exact to ~2^-16), so only the output
    rounding remains: |cuda - exact| <= 2^-8 |exact| + 2^-14 sum p|v| + f32 noise, against the
    float64 reference. A single bf16 rounding of p breaks this bound at short contexts, where a
    few weights of ~0.3 carry the output (test_ops' long-and-short decode step did).
Shapes are named after the kernel path they reach; a failure names the path and the shape.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import reference as ref
from gpt_oss_c import _core

ops = _core.ops
HAVE_CUDA = _core.cuda_available()
needs_cuda = pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA backend or GPU (_core.cuda_available() is False)")

BF16_U = 2.0**-8  # unit roundoff of bf16 (8 significant bits)
F32_NOISE = 1e-5  # f32 sums of a few thousand terms, relative to the summed magnitudes
NAN_BF16 = 0x7FC0  # cache entries that no valid read may touch


def bf16(x) -> np.ndarray:
    """x rounded to bf16, as float32 (what a bf16 backend stores)."""
    return ref.bf16_round(x).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Asking for CUDA (runs everywhere)
# ---------------------------------------------------------------------------------------------


def test_cuda_request_fails_cleanly():
    if HAVE_CUDA:
        # A GPU is there: an index past the visible ones is a ValueError that says how many exist.
        with pytest.raises(ValueError, match=r"cuda:4096 was requested but \d+ GPU\(s\) are visible"):
            ops.backend_info("cuda:4096")
        info = ops.backend_info("cuda")
        assert info["name"] == "cuda" and info["act_type"] == "BF16" and "sm_" in info["device_name"]
    else:
        # No GPU, no driver, or a build without CUDA: a clear exception (never a crash) that names
        # the way out.
        with pytest.raises((RuntimeError, NotImplementedError), match="device='cpu'"):
            ops.embed(np.zeros(1, np.int32), np.zeros((1, 32), np.uint16), device="cuda")


@needs_cuda
def test_out_of_memory_names_bytes_needed_and_free():
    # The sampling scratch is ~30 KB per sequence: 8M one-logit sequences ask the backend for
    # ~246 GB of device memory (more than any single GPU has) from ~0.5 GB of host arrays.
    S = 8_000_000
    with pytest.raises(MemoryError) as e:
        ops.sample(np.zeros((S, 1), np.float32), 1.0, device="cuda")
    msg = str(e.value)
    assert "out of GPU memory allocating sampling scratch" in msg, msg
    assert re.search(r"needed \d+ bytes \(\d+\.\d+ GiB\) but only \d+ bytes \(\d+\.\d+ GiB\) are free", msg), msg
    # The backend is still usable afterwards.
    tok, _ = ops.sample(np.array([[0.0, 2.0, 1.0]], np.float32), 0.0, device="cuda")
    assert tok[0] == 1


# ---------------------------------------------------------------------------------------------
# embed, rmsnorm, rope, kv_append, router
# ---------------------------------------------------------------------------------------------


@needs_cuda
def test_embed_gpt_oss_width_matches_cpu_exactly():
    rng = ref.rng_for("cuda", "embed")
    table = ref.random_bf16(rng, (4099, 2880))
    ids = rng.integers(0, 4099, 301).astype(np.int32)
    ids[:2] = [0, 4098]
    np.testing.assert_array_equal(ops.embed(ids, table, device="cuda"), ops.embed(ids, table, device="cpu"))


@needs_cuda
def test_skip_ops_launches_nothing_for_matching_calls_only():
    # GPT_OSS_C_SKIP_OPS (bench/op_cost.py) is read when the backend is created: a child process.
    code = """
import numpy as np
from gpt_oss_c import _core
ops = _core.ops
rng = np.random.default_rng(5)
for T in (1, 3):
    x = rng.standard_normal((T, 64)).astype(np.float32)
    w = rng.standard_normal(64).astype(np.float32)
    same = np.allclose(ops.rmsnorm(x, w, device="cuda"), ops.rmsnorm(x, w, device="cpu"), rtol=2**-7, atol=1e-6)
    print(T, "same" if same else "differs")
"""
    env = dict(os.environ, GPT_OSS_C_SKIP_OPS="attention,rmsnorm@T=3")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "same", "3", "differs"], proc.stdout


@needs_cuda
@pytest.mark.parametrize("T,H", [(1, 2880), (257, 2880), (3, 4)])
def test_rmsnorm_block_per_row_matches_cpu(T, H):
    rng = ref.rng_for("cuda", "rmsnorm", T, H)
    x = (rng.standard_normal((T + 5, H)) * 4).astype(np.float32)
    w = rng.standard_normal(H).astype(np.float32)
    rows = rng.integers(0, T + 5, T).astype(np.int32)  # the final norm's row gather
    cuda = ops.rmsnorm(x, w, rows=rows, device="cuda")
    cpu = ops.rmsnorm(x, w, rows=rows, device="cpu")
    # The same f32 value rounded once to bf16, plus a few f32 ulps of difference before rounding.
    ref.check(cuda, cpu, (BF16_U + 1e-6) * np.abs(cpu), f"rmsnorm T={T} H={H}")


@needs_cuda
@pytest.mark.parametrize("T,n_q,n_kv", [(1, 64, 8), (300, 64, 8), (5, 3, 1)])
def test_rope_matches_cpu(T, n_q, n_kv):
    rng = ref.rng_for("cuda", "rope", T, n_q)
    P = 131072
    cos, sin = (t.astype(np.float32) for t in ref.rope_tables(P))
    pos = rng.integers(0, P, T).astype(np.int32)
    q = bf16(rng.standard_normal((T, n_q * 64)))
    k = bf16(rng.standard_normal((T, n_kv * 64)))
    qc, kc = ops.rope(q, k, pos, cos, sin, device="cuda")
    qh, kh = ops.rope(q, k, pos, cos, sin, device="cpu")
    for name, x, cuda, cpu in (("q", q, qc, qh), ("k", k, kc, kh)):
        a, b = np.split(np.abs(x.astype(np.float64)).reshape(T, -1, 64), 2, axis=-1)
        c, s = np.abs(cos[pos])[:, None, :], np.abs(sin[pos])[:, None, :]
        mag = np.concatenate([a * c + b * s, b * c + a * s], axis=-1).reshape(T, -1)
        # One bf16 rounding of the output; the f32 rotation may differ by an FMA (a few ulps of mag).
        ref.check(cuda, cpu, BF16_U * np.abs(cpu) + 1e-6 * mag, f"rope {name} T={T}")


@needs_cuda
def test_kv_append_many_sequences_and_long_chunk_matches_cpu_exactly():
    rng = ref.rng_for("cuda", "kv")
    slots, n_kv, L = 6, 8, 128
    ck0 = ref.random_bf16(rng, (slots, n_kv, L, 64))
    cv0 = ref.random_bf16(rng, (slots, n_kv, L, 64))
    seqs = [(5, 0, 1), (0, 127, 2), (3, 500, 300), (1, 129, 1), (2, 7, 128)]  # wraps, > len, == len
    T = sum(c for _, _, c in seqs)
    k = rng.standard_normal((T, n_kv * 64)).astype(np.float32)
    v = rng.standard_normal((T, n_kv * 64)).astype(np.float32)
    slot, start, lens = (np.array(c, np.int32) for c in zip(*seqs))
    cuda = ops.kv_append(k, v, ck0, cv0, slot, start, lens, device="cuda")
    cpu = ops.kv_append(k, v, ck0, cv0, slot, start, lens, device="cpu")
    np.testing.assert_array_equal(cuda[0], cpu[0])
    np.testing.assert_array_equal(cuda[1], cpu[1])


@needs_cuda
@pytest.mark.parametrize("T,E,k", [(1, 32, 4), (1000, 128, 4), (33, 256, 8), (7, 1, 1), (5, 8, 8)])
def test_router_topk_warp_per_token_matches_cpu(T, E, k):
    rng = ref.rng_for("cuda", "router", T, E, k)
    logits = np.round(rng.standard_normal((T, E)) * 4, 1).astype(np.float32)  # rounding makes ties
    logits[0, : min(E - k, 3)] = -np.inf  # -inf logits, but never all of the k selected
    ic, wc = ops.router_topk(logits, k, device="cuda")
    ih, wh = ops.router_topk(logits, k, device="cpu")
    np.testing.assert_array_equal(ic, ih)  # exact: indices, ties to the lower expert
    np.testing.assert_allclose(wc, wh, rtol=2e-6, atol=1e-7)  # softmax of k f32 values: a few ulps


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------


def attention_vs_cpu(*, n_q, n_kv, window, cache_len, slots, seqs, q_scale=1.0, seed=0):
    """seqs: (slot, start, count) per sequence. The cache holds positions [start - cache_len,
    start) of a random bf16 history and NaN elsewhere (reading anything else poisons the output).
    q, k, v are bf16 values given to both backends. Checks |cuda - cpu| against the bound of the
    module docstring and returns the CUDA output."""
    rng = ref.rng_for("cuda", "attn", seed, n_q, n_kv, window, cache_len, tuple(seqs))
    ck = np.full((slots, n_kv, cache_len, 64), NAN_BF16, np.uint16)
    cv = ck.copy()
    sinks = rng.standard_normal(n_q).astype(np.float32)
    qs, ks, vs, mags = [], [], [], []
    for slot, start, count in seqs:
        P = start + count
        hk = bf16(rng.standard_normal((P, n_kv, 64)))
        hv = bf16(rng.standard_normal((P, n_kv, 64)))
        q = bf16(rng.standard_normal((count, n_q, 64)) * q_scale)
        for p in range(max(0, start - cache_len), start):
            ck[slot, :, p % cache_len] = ref.f32_to_bf16_bits(hk[p])
            cv[slot, :, p % cache_len] = ref.f32_to_bf16_bits(hv[p])
        mags.append(ref.attention(q, list(range(start, P)), hk, np.abs(hv), sinks, window).reshape(count, -1))
        qs.append(q.reshape(count, -1))
        ks.append(hk[start:].reshape(count, -1))
        vs.append(hv[start:].reshape(count, -1))
    slot, start, lens = (np.array(c, np.int32) for c in zip(*seqs))
    args = (np.concatenate(qs), np.concatenate(ks), np.concatenate(vs), ck, cv, slot, start, lens, sinks)
    cuda = ops.attention(*args, window=window, device="cuda")
    cpu = ops.attention(*args, window=window, device="cpu")
    assert np.isfinite(cuda).all(), "attention read a NaN (an invalid cache entry or a garbage row)"
    mag = np.concatenate(mags)
    ref.check(cuda, cpu, BF16_U * (np.abs(cpu) + mag) + F32_NOISE * mag,
          f"attention n_q={n_q} n_kv={n_kv} window={window} len={cache_len} seqs={seqs}")
    return cuda


@needs_cuda
@pytest.mark.parametrize("start", [4095, 8191])
def test_attention_decode_split_k_long_context(start):
    # One sequence: ~50 splits of the key range over 8 KV heads, merged by the last block.
    attention_vs_cpu(n_q=64, n_kv=8, window=0, cache_len=8192, slots=1, seqs=[(0, start, 1)])


@needs_cuda
def test_attention_decode_split_k_odd_batch_of_long_contexts():
    seqs = [(2, 4000, 1), (0, 17, 1), (1, 6999, 1)]
    attention_vs_cpu(n_q=64, n_kv=8, window=0, cache_len=8192, slots=3, seqs=seqs)


@needs_cuda
@pytest.mark.parametrize("window,cache_len", [(128, 128), (0, 1024)])
def test_attention_decode_window_edge_odd_batch(window, cache_len):
    # Positions on both sides of the 128-key window and the ring wrap, five sequences at once.
    seqs = [(0, 0, 1), (1, 127, 1), (2, 128, 1), (3, 129, 1), (4, 1000, 1)]
    attention_vs_cpu(n_q=64, n_kv=8, window=window, cache_len=cache_len, slots=5, seqs=seqs)


@needs_cuda
def test_attention_decode_one_split_wide_batch():
    # 64 sequences x 8 KV heads = 512 blocks: more than ~3 per SM, so no split-K and no partials.
    rng = ref.rng_for("cuda", "wide")
    seqs = [(s, int(rng.integers(0, 600)), 1) for s in range(64)]
    attention_vs_cpu(n_q=64, n_kv=8, window=0, cache_len=640, slots=64, seqs=seqs)


@needs_cuda
@pytest.mark.parametrize("window", [0, 128])
def test_attention_decode_path_with_multi_token_sequences(window):
    # T = 7 <= 2 S: the decode kernel, with sequences of 1-3 tokens whose later tokens see the
    # earlier ones from this step's k/v, not from the cache.
    seqs = [(0, 300, 1), (1, 5, 3), (2, 130, 1), (3, 0, 2)]
    attention_vs_cpu(n_q=64, n_kv=8, window=window, cache_len=512, slots=4, seqs=seqs)


@needs_cuda
@pytest.mark.parametrize("n_q,n_kv", [(4, 4), (6, 2), (16, 1), (64, 8)])
@pytest.mark.parametrize("window", [0, 128])
def test_attention_prefill_group_sizes(n_q, n_kv, window):
    # Rows are (token, head) pairs: G = 1, 3, 16, 8 heads per KV head; G = 3 splits tokens across
    # 64-row tiles. 200 tokens after a 100-token cache: tiles straddle the cache/step boundary and
    # (window 128) the window edge.
    attention_vs_cpu(n_q=n_q, n_kv=n_kv, window=window, cache_len=512, slots=1, seqs=[(0, 100, 200)])


@needs_cuda
def test_attention_prefill_many_sequences():
    # 40 sequences (more than one warp's worth in the tile lookup) of 1 to 9 tokens plus one of 150.
    rng = ref.rng_for("cuda", "many")
    seqs = [(s, int(rng.integers(0, 200)), int(rng.integers(1, 10))) for s in range(40)] + [(40, 60, 150)]
    attention_vs_cpu(n_q=8, n_kv=2, window=128, cache_len=256, slots=41, seqs=seqs)


@needs_cuda
def test_attention_prefill_long_chunk_after_long_cache():
    # 300 queries over 2300 keys, the first 2000 from the cache.
    attention_vs_cpu(n_q=8, n_kv=1, window=0, cache_len=2400, slots=1, seqs=[(0, 2000, 300)])


@needs_cuda
@pytest.mark.parametrize("seqs", [[(0, 3000, 1)], [(0, 40, 70)]])
def test_attention_large_scores_stay_finite(seqs):
    # q x 8: scores of several hundred, far above the sinks; the running max must rescale exactly.
    attention_vs_cpu(n_q=64, n_kv=8, window=0, cache_len=4096, slots=1, seqs=seqs, q_scale=8.0)


# Decode steps whose tokens have very different key counts. The launcher picks one split count for
# the step from T * n_kv and the longest possible key range (cache length + T); each token then cuts
# its own key range into chunks of max(ceil16(keys / splits), 64) keys, so short tokens leave most
# splits empty and long ones may leave the last split partial or empty. decode_layout mirrors that
# for a GPU of DECODE_SMS SMs (H100 SXM / H200) to name the failing token's layout; with another SM
# count the tests stay valid, only the boundaries they hit move.
DECODE_SMS = 132


def decode_layout(T, n_kv, window, cache_len, keys):
    target = 3 * DECODE_SMS
    max_keys = window if window > 0 else cache_len + T
    splits = 1 if T * n_kv >= target else max(1, min(-(-target // (T * n_kv)), -(-max_keys // 64), 64))
    chunk = max(-(-(-(-keys // splits)) // 16) * 16, 64)
    used = -(-keys // chunk)
    return (f"{keys} keys, splits={splits} chunk={chunk}: {used} non-empty, last holds {keys - (used - 1) * chunk}"
            if splits > 1 else f"{keys} keys, one split")


def decode_step_vs_reference(*, n_q, n_kv, window, cache_len, seqs, seed=0):
    """seqs: (slot, start, count) with T <= 2 S (the decode kernel). The cache holds
    positions [start - cache_len, start) of a random bf16 history and NaN elsewhere. Checks CUDA
    against the float64 reference with the decode bound of the module docstring; a failure names
    the token, its head and its split layout."""
    rng = ref.rng_for("cuda", "decode-mixed", seed, n_q, n_kv, window, cache_len, tuple(seqs))
    ck = np.full((max(c[0] for c in seqs) + 1, n_kv, cache_len, 64), NAN_BF16, np.uint16)
    cv = ck.copy()
    sinks = rng.standard_normal(n_q).astype(np.float32)
    qs, ks, vs, exact, mags, rows = [], [], [], [], [], []
    for slot, start, count in seqs:
        P = start + count
        hk = bf16(rng.standard_normal((P, n_kv, 64)))
        hv = bf16(rng.standard_normal((P, n_kv, 64)))
        q = bf16(rng.standard_normal((count, n_q, 64)))
        for p in range(max(0, start - cache_len), start):
            ck[slot, :, p % cache_len] = ref.f32_to_bf16_bits(hk[p])
            cv[slot, :, p % cache_len] = ref.f32_to_bf16_bits(hv[p])
        pos = list(range(start, P))
        exact.append(ref.attention(q, pos, hk, hv, sinks, window).reshape(count, -1))
        mags.append(ref.attention(q, pos, hk, np.abs(hv), sinks, window).reshape(count, -1))
        qs.append(q.reshape(count, -1))
        ks.append(hk[start:].reshape(count, -1))
        vs.append(hv[start:].reshape(count, -1))
        rows += [(slot, p, min(p + 1, window) if window else p + 1) for p in pos]
    T = len(rows)
    assert T <= 2 * len(seqs), "a decode step: at most two tokens per sequence on average"
    slot, start, lens = (np.array(c, np.int32) for c in zip(*seqs))
    out = ops.attention(np.concatenate(qs), np.concatenate(ks), np.concatenate(vs), ck, cv, slot, start, lens, sinks,
                        window=window, device="cuda")
    assert np.isfinite(out).all(), "decode attention read a NaN (an invalid cache entry or a garbage row)"
    exact, mag = np.concatenate(exact), np.concatenate(mags)
    err = np.abs(np.asarray(out, np.float64) - exact)
    bound = BF16_U * np.abs(exact) + (2.0**-14 + F32_NOISE) * mag
    if (err > bound).any():
        t, c = np.unravel_index(np.argmax(err / bound), err.shape)
        s, p, keys = rows[t]
        raise AssertionError(
            f"decode attention n_q={n_q} n_kv={n_kv} window={window} len={cache_len} seqs={seqs}: "
            f"{(err > bound).sum()} of {err.size} elements out of bound; worst: token {t} (sequence {s}, "
            f"position {p}, {decode_layout(T, n_kv, window, cache_len, keys)}), head {c // 64} (KV head "
            f"{c // 64 // (n_q // n_kv)}), dim {c % 64}: cuda {out[t, c]!r}, exact {exact[t, c]:.6g}, "
            f"|err| {err[t, c]:.3g} > {bound[t, c]:.3g}")


@needs_cuda
def test_attention_decode_long_and_short_tokens_in_one_step():
    # test_ops' case that failed on the GPU: 3001, 1501, 1024 and 11 keys, n_kv = 1 (G = 4); 49
    # splits of 64 keys, the 11-key token in split 0 with 48 empty ones.
    decode_step_vs_reference(n_q=4, n_kv=1, window=0, cache_len=3072,
                             seqs=[(0, 3000, 1), (1, 1500, 1), (2, 1023, 1), (3, 10, 1)])


# Key counts at the layout's edges. On 132 SMs this 12-token step gets 33 splits with n_kv = 1 (17,
# 9, 5 with n_kv = 2, 4, 8; the same lengths then land elsewhere in their chunks). With 33 splits:
# 1 key (32 empty splits), 16 / 17 (a warp's tile, then one key for the next warp), 64 / 65 (a full
# split, then one key in the next), 1024 / 1025, 4321 (chunk 144: 30 full splits, one key in the
# 31st, 2 empty), 4752 (33 full splits of 144) and 5000 (chunk 160: 31 full, 40 keys, 1 empty);
# one sequence brings two tokens (the second sees the first from this step's k/v).
EDGE_SEQS = [(0, 0, 1), (1, 15, 1), (2, 16, 1), (3, 63, 1), (4, 64, 1), (5, 1023, 1), (6, 1024, 1),
             (7, 4320, 1), (8, 4751, 1), (9, 4999, 1), (10, 63, 2)]


@needs_cuda
@pytest.mark.parametrize("n_q,n_kv", [(4, 1), (16, 1), (6, 2), (12, 4), (64, 8)])
def test_attention_decode_split_boundaries_mixed_lengths(n_q, n_kv):
    decode_step_vs_reference(n_q=n_q, n_kv=n_kv, window=0, cache_len=5000, seqs=EDGE_SEQS)


@needs_cuda
@pytest.mark.parametrize("n_q,n_kv", [(4, 1), (64, 8)])
def test_attention_decode_window_mixed_lengths(n_q, n_kv):
    # Window 128 over a ring of 128: at most 2 splits of 64 keys; 1, 64, 65, 127, 128 and 128
    # (wrapped) keys, so split 1 is empty, holds one key, or is full.
    seqs = [(0, 0, 1), (1, 63, 1), (2, 64, 1), (3, 126, 1), (4, 127, 1), (5, 1000, 1)]
    decode_step_vs_reference(n_q=n_q, n_kv=n_kv, window=128, cache_len=128, seqs=seqs)


@needs_cuda
@pytest.mark.parametrize("seed", range(4))
def test_attention_decode_short_contexts_many_draws(seed):
    # Short contexts are where one bf16 rounding of p shows (weights of ~0.3): 8 sequences of 1-40
    # keys next to one of 2000, four random draws.
    lengths = ref.rng_for("cuda", "short-draws", seed).integers(0, 40, 8)
    seqs = [(i, int(n), 1) for i, n in enumerate(lengths)] + [(8, 1999, 1)]
    decode_step_vs_reference(n_q=8, n_kv=2, window=0, cache_len=2048, seqs=seqs, seed=seed)


def chunked_prefill_through_cache(*, n_q, n_kv, window, cache_len, chunks, seed=0, device="cuda"):
    """One sequence fed chunk by chunk the way the engine prefills it: per chunk, attention (keys
    before the chunk's start come from the cache, at p % cache_len) then kv_append of the chunk,
    both on `device`, the cache staying in bf16 between the calls. Starts as a NaN cache, so a read
    of a position the ring no longer (or never) held poisons the output. Each chunk's output is
    checked against the float64 reference over the whole history with the bound of the module
    docstring; the message names the chunk (start, T, kernel path) and the window bounds lo of its
    rows. Chunks of T <= 2 take the decode kernel, longer ones the prefill kernel."""
    total = sum(chunks)
    rng = ref.rng_for("cuda", "ring", seed, n_q, n_kv, window, cache_len, tuple(chunks))
    hk = bf16(rng.standard_normal((total, n_kv, 64)))
    hv = bf16(rng.standard_normal((total, n_kv, 64)))
    q_all = bf16(rng.standard_normal((total, n_q, 64)))
    sinks = rng.standard_normal(n_q).astype(np.float32)
    ck = np.full((1, n_kv, cache_len, 64), NAN_BF16, np.uint16)
    cv = ck.copy()
    one = np.zeros(1, np.int32)
    start = 0
    for T in chunks:
        pos = list(range(start, start + T))
        q, k, v = (a[start : start + T].reshape(T, -1) for a in (q_all, hk, hv))
        begin, count = np.array([start], np.int32), np.array([T], np.int32)
        out = ops.attention(q, k, v, ck, cv, one, begin, count, sinks, window=window, device=device)
        exact = ref.attention(q_all[start : start + T], pos, hk, hv, sinks, window).reshape(T, -1)
        mag = ref.attention(q_all[start : start + T], pos, hk, np.abs(hv), sinks, window).reshape(T, -1)
        lo = [max(0, p - window + 1) if window else 0 for p in (pos[0], pos[-1])]
        assert np.isfinite(out).all(), (
            f"chunk start={start} T={T}: attention read a NaN (a cache row the ring does not hold)")
        ref.check(out, exact, BF16_U * (np.abs(exact) + mag) + F32_NOISE * mag,
              f"{'decode' if T <= 2 else 'prefill'} chunk start={start} T={T} (rows' lo {lo[0]}..{lo[1]}, "
              f"{min(start, start - lo[0])} keys from the cache) n_q={n_q} n_kv={n_kv} window={window} "
              f"len={cache_len}")
        ck, cv = ops.kv_append(k, v, ck, cv, one, begin, count, device=device)
        start += T


# Schedules: (n_q, n_kv, window, cache_len, chunk sizes). With window W the rows of a chunk starting
# at s see keys from lo = s - W + 1 on; the prefill kernel's key tiles start at the first row's lo.
RING_SCHEDULES = {
    # test_engine's tiny model (window 8, ring of 8; full layers read a long cache), chunks of 5:
    # the end-to-end schedule that failed on the GPU, rows 23.. of the whole 33-token prefill.
    "engine-sliding": (8, 2, 8, 8, [5] * 7),
    "engine-full": (8, 2, 0, 64, [5] * 7),
    # Chunk starts 7, 23, 39, 55: the first row's lo at 0, 16, 32, 48; then decode steps (T = 1, 2).
    "lo-multiple-of-16": (8, 2, 8, 8, [7, 16, 16, 16, 3, 9, 1, 2, 12]),
    # Starts 22, 23, 24 (first lo 15, 16, 17), chunks longer than the ring (only their last 8 rows
    # stay in the cache, and their own later rows read none of it).
    "lo-around-16": (8, 2, 8, 8, [22, 1, 1, 3, 4, 20, 30]),
    # G = 3 and G = 16: a token's heads straddle warps / fill a warp's 16 rows.
    "group-3": (6, 2, 8, 8, [5, 3, 9, 7, 16, 4, 11, 6]),
    "group-16": (16, 1, 16, 16, [5, 11, 16, 3, 13, 17, 33, 4]),
    # Window 16: starts 0, 5, .., 75 with lo crossing 16, 32, 48, 64; then chunks above the window.
    "window-16": (8, 2, 16, 16, [5] * 16 + [40, 13, 1]),
    # gpt-oss heads and window: ring of 128, chunks below and above it, lo at 0, 8, 128, 138, ...
    "gpt-oss-128": (64, 8, 128, 128, [100, 35, 130, 5, 5, 200, 3, 1, 77]),
}


@needs_cuda
@pytest.mark.parametrize("name", list(RING_SCHEDULES))
def test_attention_chunked_prefill_through_ring_cache(name):
    n_q, n_kv, window, cache_len, chunks = RING_SCHEDULES[name]
    chunked_prefill_through_cache(n_q=n_q, n_kv=n_kv, window=window, cache_len=cache_len, chunks=chunks)


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------

V_FULL = 201088


@needs_cuda
def test_greedy_full_vocab_matches_cpu():
    rng = ref.rng_for("cuda", "greedy")
    logits = (rng.standard_normal((5, V_FULL)) * 4).astype(np.float32)
    logits[1, 7] = logits[1, 200000] = logits[1].max() + 2  # tie: lowest id
    logits[2, :] = -1.0
    logits[2, V_FULL - 1] = 0.0  # max in the last tile
    logits[3, ::2] = -np.inf  # half the vocabulary masked
    tc, lc = ops.sample(logits, 0.0, device="cuda")
    th, lh = ops.sample(logits, 0.0, device="cpu")
    np.testing.assert_array_equal(tc, th)
    # log-sum-exp of 201088 f32 terms (tree sums on the GPU): ~1e-6 absolute.
    np.testing.assert_allclose(lc, lh, rtol=0, atol=2e-5)


MIXED = [  # (temperature, top_k, top_p, min_p) per sequence of one batch
    (0.0, 0, 1.0, 0.0),
    (1.0, 0, 1.0, 0.0),
    (0.8, 40, 1.0, 0.0),
    (1.0, 0, 0.9, 0.0),
    (1.2, 100, 0.7, 0.02),
    (1.0, 0, 1.0, 0.05),
    (1.0, 1, 1.0, 0.0),
    (1.0, V_FULL, 0.5, 0.0),  # top_k = V: no top-k
    (0.5, 7, 1e-6, 0.0),  # top_p tiny: the most probable token only
]


@needs_cuda
@pytest.mark.parametrize("V", [1000, V_FULL])
def test_mixed_settings_in_one_batch_match_cpu(V):
    # Each sequence runs its own subset of the passes (greedy stops after the first, others skip
    # top-k or top-p) inside one batch; draws must be those of the CPU, sequence by sequence.
    rng = ref.rng_for("cuda", "mixed", V)
    S = 3 * len(MIXED)
    logits = (rng.standard_normal((S, V)) * 3).astype(np.float32)
    cfg = np.array([MIXED[s % len(MIXED)] for s in range(S)], np.float64)
    temp, top_k, top_p, min_p = cfg[:, 0], cfg[:, 1].astype(np.int32), cfg[:, 2], cfg[:, 3]
    seeds = np.arange(S, dtype=np.uint64) * 1000003 + 11
    counters = np.arange(S, dtype=np.int64) * 37 + 5
    args = (logits, temp, top_k, top_p, min_p)
    tc, lc = ops.sample(*args, seed=seeds, counter=counters, device="cuda")
    th, lh = ops.sample(*args, seed=seeds, counter=counters, device="cpu")
    compared = 0
    for s in range(S):
        _, margin = ref.sample(logits[s], temp[s], top_k[s], top_p[s], min_p[s], int(seeds[s]), int(counters[s]))
        # A target u * total within 1e-5 of a CDF step may fall either way between f32 and the
        # GPU's fixed-point masses; such draws are skipped (they are rare, and counted below).
        if margin > 1e-5:
            assert tc[s] == th[s], f"sequence {s} {MIXED[s % len(MIXED)]}: cuda {tc[s]}, cpu {th[s]}"
            compared += 1
    assert compared >= S * 3 // 4
    # logprob of the drawn token under the raw logits; compared where the tokens agree.
    same = tc == th
    np.testing.assert_allclose(lc[same], lh[same], rtol=0, atol=2e-5)


@needs_cuda
def test_sampling_is_deterministic():
    # Fixed-point masses make the GPU's sums independent of the order atomics land in.
    rng = ref.rng_for("cuda", "det")
    logits = (rng.standard_normal((16, V_FULL)) * 2).astype(np.float32)
    kw = dict(temperature=1.0, top_k=500, top_p=0.9, min_p=0.0, seed=3, counter=np.arange(16))
    a = ops.sample(logits, device="cuda", **kw)
    b = ops.sample(logits, device="cuda", **kw)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
