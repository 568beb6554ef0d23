"""Every op family of csrc/ops.h, through gpt_oss_c._core.ops (the Backend interface), against the
float64 references in tests/reference.py.

Tolerances are stated where they are used. The general rules:
  * indices, token ids, copies and bf16 storage: exact;
  * f32 activations (CPU): ~1e-5 relative to the magnitude of what was summed (sum |a*b|),
    since f32 sums of n terms in a few partial chains stay far below n * 2^-24 of that;
  * bf16 activations (CUDA): each bf16 rounding of an input or output costs <= 2^-9 relative,
    so elementwise ops get 2^-8; for attention and the MoE, where errors pass through exp and
    swiglu, the flash-attention criterion: no worse than twice the error of the same math done
    by the reference with bf16 rounding at the same places, plus the f32 bound.
"""
from __future__ import annotations

import numpy as np
import pytest

import reference as ref
from gpt_oss_c import _core

ops = _core.ops
BF16_REL = 2.0**-8  # two bf16 roundings (input and output), each <= 2^-9 relative
F32_REL = 1e-5


def check_vs_bf16_sim(out, exact, sim, f32_bound, what):
    """Flash-attention criterion for bf16 backends: max error <= 2 x the bf16-simulated error."""
    err = np.abs(np.asarray(out, np.float64) - exact).max()
    allowed = 2.0 * np.abs(sim - exact).max() + np.max(f32_bound)
    assert err <= allowed, f"{what}: max |err| {err:.3g} > 2 x bf16 reference error + f32 bound = {allowed:.3g}"


# ---------------------------------------------------------------------------------------------
# embed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T,H,V", [(1, 96, 7), (17, 160, 1000), (129, 2880, 301)])
def test_embed_copies_rows_exactly(device, T, H, V):
    rng = ref.rng_for("embed", T, H)
    table = ref.random_bf16(rng, (V, H))
    ids = rng.integers(0, V, T).astype(np.int32)
    ids[0], ids[-1] = 0, V - 1  # both ends of the table
    out = ops.embed(ids, table, device=device)
    # Exact: bf16 -> f32 is a widening, and the residual is f32 on every backend.
    np.testing.assert_array_equal(out, ref.bf16_bits_to_f32(table[ids]))


def test_embed_rejects_bad_ids(device):
    table = ref.random_bf16(ref.rng_for("embed-bad"), (10, 32))
    with pytest.raises(ValueError, match="outside"):
        ops.embed(np.array([3, 10], np.int32), table, device=device)
    with pytest.raises(ValueError, match="uint16"):
        ops.embed(np.array([3], np.int32), table.astype(np.int32), device=device)


# ---------------------------------------------------------------------------------------------
# rmsnorm
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 3, 17, 129])
@pytest.mark.parametrize("H", [96, 160, 2880])
def test_rmsnorm(device, act, T, H):
    rng = ref.rng_for("rmsnorm", T, H)
    x = (rng.standard_normal((T, H)) * 3 + 0.5).astype(np.float32)
    w = rng.standard_normal(H).astype(np.float32)
    out = ops.rmsnorm(x, w, device=device)
    exact = ref.rmsnorm(x, w)
    # Elementwise product after one reduction: purely relative error (a few f32 ulps), or one
    # bf16 rounding of the output.
    ref.check(out, exact, (F32_REL if act == "F32" else BF16_REL) * np.abs(exact), "rmsnorm")


def test_rmsnorm_gathers_rows(device, act):
    rng = ref.rng_for("rmsnorm-rows")
    x = rng.standard_normal((10, 96)).astype(np.float32)
    w = rng.standard_normal(96).astype(np.float32)
    rows = np.array([9, 0, 4, 4], np.int32)
    out = ops.rmsnorm(x, w, rows=rows, eps=1e-3, device=device)
    exact = ref.rmsnorm(x[rows], w, eps=1e-3)
    ref.check(out, exact, (F32_REL if act == "F32" else BF16_REL) * np.abs(exact), "rmsnorm rows")
    with pytest.raises(ValueError, match="rows"):
        ops.rmsnorm(x, w, rows=np.array([10], np.int32), device=device)


# ---------------------------------------------------------------------------------------------
# dense
# ---------------------------------------------------------------------------------------------


def dense_bound(act, x, w, bias, exact):
    """f32: 1e-5 of sum |x_k w_k| + |b|. bf16: x and the output are each rounded once."""
    mag = np.abs(x.astype(np.float64)) @ np.abs(w).T + (0 if bias is None else np.abs(bias))
    return F32_REL * mag if act == "F32" else BF16_REL * (mag + np.abs(exact))


# N = 33 and 130 leave partial row tiles; K = 100 and 2880 - (K % 16) tails exercise the kernels'
# remainder paths; T = 1 is the decode GEMV, 3 / 17 / 129 partial and multiple token tiles.
@pytest.mark.parametrize("T", [1, 3, 17, 129])
@pytest.mark.parametrize("N,K", [(96, 160), (33, 2880), (130, 100)])
def test_dense(device, act, T, N, K):
    rng = ref.rng_for("dense", T, N, K)
    x = rng.standard_normal((T, K)).astype(np.float32)
    wb = ref.random_bf16(rng, (N, K), 0.05)
    w = ref.bf16_bits_to_f32(wb).astype(np.float64)
    bias = rng.standard_normal(N).astype(np.float32)
    out = ops.dense(x, wb, bias=bias, device=device)
    exact = x.astype(np.float64) @ w.T + bias
    ref.check(out, exact, dense_bound(act, x, w, bias, exact), "dense")


@pytest.mark.parametrize("T", [1, 17])
def test_dense_accumulates_into_residual(device, act, T):
    rng = ref.rng_for("dense-acc", T)
    x = rng.standard_normal((T, 160)).astype(np.float32)
    wb = ref.random_bf16(rng, (96, 160), 0.1)
    w = ref.bf16_bits_to_f32(wb).astype(np.float64)
    y = rng.standard_normal((T, 96)).astype(np.float32)
    out = ops.dense(x, wb, y=y, device=device)  # no bias: the nullptr path
    exact = y + x.astype(np.float64) @ w.T
    bound = dense_bound(act, x, w, None, exact - y) + F32_REL * np.abs(y)  # residual stays f32
    ref.check(out, exact, bound, "dense accumulate")


def test_dense_f32_output(device, act):
    rng = ref.rng_for("dense-f32")
    x = rng.standard_normal((3, 96)).astype(np.float32)
    wb = ref.random_bf16(rng, (32, 96))
    w = ref.bf16_bits_to_f32(wb).astype(np.float64)
    out = ops.dense(x, wb, f32_out=True, device=device)
    exact = x.astype(np.float64) @ w.T
    mag = np.abs(x.astype(np.float64)) @ np.abs(w).T
    # f32 output: only the input rounding remains on a bf16 backend.
    ref.check(out, exact, (F32_REL if act == "F32" else BF16_REL) * mag, "dense f32 out")


def test_dense_rejects_bad_shapes(device):
    x = np.zeros((2, 96), np.float32)
    with pytest.raises(ValueError, match=r"w has shape \(4, 64\), expected \(\*, 96\)"):
        ops.dense(x, np.zeros((4, 64), np.uint16), device=device)
    with pytest.raises(ValueError, match="bias"):
        ops.dense(x, np.zeros((4, 96), np.uint16), bias=np.zeros(5, np.float32), device=device)


# ---------------------------------------------------------------------------------------------
# rope
# ---------------------------------------------------------------------------------------------


def test_yarn_reference_matches_spec():
    """The reference's YaRN numbers are the ones printed in GPT_OSS_FORMAT.md 4.4."""
    inv_freq, c, low, high = ref.yarn_params()
    spec = [1.0, 0.689044297, 0.474782050, 0.327145845, 0.225418001, 0.155322984, 0.107024424, 0.0737445652,
            0.0508132800, 0.0317056961, 0.0193350017, 0.0115920492, 0.00679495931, 0.00386035908, 0.00209379266,
            0.00105260219, 4.56483918e-4, 1.29318694e-4, 3.83088118e-5, 2.63964721e-5, 1.81883370e-5,
            1.25325696e-5, 8.63549576e-6, 5.95023948e-6, 4.09997847e-6, 2.82506676e-6, 1.94659629e-6,
            1.34129107e-6, 9.24208962e-7, 6.36820914e-7, 4.38797855e-7, 3.02351140e-7]
    # The spec prints values computed with fp32 freq_i; float64 differs from them by up to two fp32
    # ulps (the official torch reference itself differs from the printed values by 1.5e-7).
    np.testing.assert_allclose(inv_freq, spec, rtol=3e-7)
    assert low == pytest.approx(8.092779115512402, abs=1e-12)
    assert high == pytest.approx(17.39802450158856, abs=1e-12)
    assert c == pytest.approx(1.3465735902799727, abs=1e-15)


@pytest.mark.parametrize("T", [1, 17, 129])
@pytest.mark.parametrize("n_q,n_kv", [(8, 2), (64, 8)])
def test_rope(device, act, T, n_q, n_kv):
    rng = ref.rng_for("rope", T, n_q)
    P = 131072  # the full YaRN context: positions near the end have the largest angles
    cos, sin = ref.rope_tables(P)
    cos32, sin32 = cos.astype(np.float32), sin.astype(np.float32)
    pos = rng.integers(0, P, T).astype(np.int32)
    pos[: min(T, 4)] = [0, 127, 128, P - 1][: min(T, 4)]
    q = rng.standard_normal((T, n_q * 64)).astype(np.float32)
    k = rng.standard_normal((T, n_kv * 64)).astype(np.float32)
    qo, ko = ops.rope(q, k, pos, cos32, sin32, device=device)
    for name, x, out in (("q", q, qo), ("k", k, ko)):
        exact = ref.apply_rope(x, pos, cos32, sin32)  # the op's contract: the tables it is given
        a, b = np.split(np.abs(x.astype(np.float64)).reshape(T, -1, 64), 2, axis=-1)
        c, sn = np.abs(cos32[pos])[:, None, :], np.abs(sin32[pos])[:, None, :]
        mag = np.concatenate([a * c + b * sn, b * c + a * sn], axis=-1).reshape(T, -1)
        # Two products and one add per element: <= 3 * 2^-24 relative to |a c| + |b s|.
        ref.check(out, exact, (F32_REL if act == "F32" else BF16_REL) * (mag + np.abs(exact)), f"rope {name}")


# ---------------------------------------------------------------------------------------------
# attention + kv cache
# ---------------------------------------------------------------------------------------------

NAN_BF16 = 0x7FC0  # cache entries that must never be read


@pytest.fixture(params=["F32", "BF16"])
def kv(request, device) -> str:
    """KV cache dtype under test: the backend's kv_type (F32 on the CPU, BF16 on CUDA). The CPU also
    reads and writes a BF16 cache, for parity tests against CUDA (test_cuda_backend.py)."""
    kv_type = ops.backend_info(device)["kv_type"]
    if request.param != kv_type and not (device == "cpu" and request.param == "BF16"):
        pytest.skip(f"{device} has a {kv_type} KV cache")
    return request.param


def empty_cache(kv, shape):
    """A cache of dtype `kv` (float32, or uint16 bf16 bits) filled with NaN: reading any entry that
    ops.h says is not valid poisons the output."""
    return np.full(shape, np.nan, np.float32) if kv == "F32" else np.full(shape, NAN_BF16, np.uint16)


def to_cache(kv, x):
    """f32 values as the cache stores them."""
    return np.asarray(x, np.float32) if kv == "F32" else ref.f32_to_bf16_bits(x)


def kv_precision(kv, x):
    """The values attention computes with: keys and values are used at the cache's precision."""
    return np.asarray(x, np.float32) if kv == "F32" else ref.bf16_round(x)


def attention_case(device, act, kv, *, n_q, n_kv, window, cache_len, slots, seqs, sink_shift=0.0, seed=0):
    """seqs: (slot, start, count) per sequence. Each sequence gets a random K/V history over
    absolute positions [0, start + count). The cache (dtype kv) holds the history of positions
    [start - cache_len, start) at p % cache_len and NaN everywhere else. The reference sees every
    key and value at the cache's precision, this step's included (ops.h)."""
    rng = ref.rng_for("attn", seed, n_q, window, cache_len, tuple(seqs))
    ck = empty_cache(kv, (slots, n_kv, cache_len, 64))
    cv = ck.copy()
    sinks = (rng.standard_normal(n_q) + sink_shift).astype(np.float32)
    qs, ks, vs, exact, sim, mag = [], [], [], [], [], []
    for slot, start, count in seqs:
        P = start + count
        hk = rng.standard_normal((P, n_kv, 64)).astype(np.float32)
        hv = rng.standard_normal((P, n_kv, 64)).astype(np.float32)
        q = rng.standard_normal((count, n_q, 64)).astype(np.float32)
        for p in range(max(0, start - cache_len), start):
            ck[slot, :, p % cache_len] = to_cache(kv, hk[p])
            cv[slot, :, p % cache_len] = to_cache(kv, hv[p])
        pos = list(range(start, P))
        kb, vb = kv_precision(kv, hk), kv_precision(kv, hv)
        exact.append(ref.attention(q, pos, kb, vb, sinks, window))
        sim.append(ref.bf16_round(ref.attention(ref.bf16_round(q), pos, kb, vb, sinks, window)))
        mag.append(ref.attention(q, pos, kb, np.abs(vb), sinks, window))  # sum_k p_k |v_k|
        qs.append(q.reshape(count, -1))
        ks.append(hk[start:].reshape(count, -1))
        vs.append(hv[start:].reshape(count, -1))
    slot, start, lens = (np.array(c, np.int32) for c in zip(*seqs))
    out = ops.attention(np.concatenate(qs), np.concatenate(ks), np.concatenate(vs), ck, cv, slot, start, lens,
                        sinks, window=window, device=device)
    T = out.shape[0]
    exact = np.concatenate(exact).reshape(T, -1)
    sim = np.concatenate(sim).reshape(T, -1)
    # f32: scores carry ~64 * 2^-24 relative error, exp turns that into the same relative error
    # on each weight; the output error is then ~1e-6 of sum p|v|. 1e-5 leaves 10x headroom.
    f32_bound = F32_REL * np.concatenate(mag).reshape(T, -1)
    what = f"attention {kv} cache, window={window} len={cache_len} seqs={seqs}"
    if act == "F32":
        ref.check(out, exact, f32_bound, what)
    else:
        check_vs_bf16_sim(out, exact, sim, f32_bound, what)
    return out


@pytest.mark.parametrize("start", [0, 1, 126, 127, 128, 129, 300])
def test_attention_decode_sliding_window_edge(device, act, kv, start):
    # Ring buffer of exactly the window: positions >= 128 wrap.
    attention_case(device, act, kv, n_q=8, n_kv=2, window=128, cache_len=128, slots=1, seqs=[(0, start, 1)])


@pytest.mark.parametrize("start", [0, 5, 200, 511])
def test_attention_decode_full(device, act, kv, start):
    attention_case(device, act, kv, n_q=8, n_kv=2, window=0, cache_len=512, slots=1, seqs=[(0, start, 1)])


@pytest.mark.parametrize("start", [1023, 1024, 2047, 2048, 3000])
def test_attention_decode_long_context_split_keys(device, act, kv, start):
    # One decode token over start + 1 keys: 1024 keys is one CPU chunk, 1025 two, 3001 three; a
    # step this small (T * n_kv = 2) has its key range split across threads on the CPU.
    attention_case(device, act, kv, n_q=8, n_kv=2, window=0, cache_len=4096, slots=1, seqs=[(0, start, 1)])


def test_attention_decode_long_and_short_contexts(device, act, kv):
    # Split and unsplit rows in one step: 3000, 1500, 1024 and 10 cached keys.
    seqs = [(0, 3000, 1), (1, 1500, 1), (2, 1023, 1), (3, 10, 1)]
    attention_case(device, act, kv, n_q=4, n_kv=1, window=0, cache_len=3072, slots=4, seqs=seqs)


def test_attention_prefill_chunk_at_long_context(device, act, kv):
    # 40 queries after 2000 cached keys: 80 (token, kv head) items, so a CPU with up to 20 threads
    # keeps each row on one thread and merges its two key chunks there.
    attention_case(device, act, kv, n_q=8, n_kv=2, window=0, cache_len=2048, slots=1, seqs=[(0, 2000, 40)])


@pytest.mark.parametrize("count", [3, 17, 129, 200])
@pytest.mark.parametrize("window,cache_len", [(128, 128), (0, 256)])
def test_attention_prefill_from_zero(device, act, kv, count, window, cache_len):
    # count 129 / 200 with window 128: the chunk is longer than the window and the ring.
    attention_case(device, act, kv, n_q=8, n_kv=2, window=window, cache_len=cache_len, slots=2,
                   seqs=[(1, 0, count)])


@pytest.mark.parametrize("start,count", [(120, 17), (300, 129), (127, 1), (5, 3)])
@pytest.mark.parametrize("window,cache_len", [(128, 128), (0, 512)])
def test_attention_prefill_chunk_after_cache(device, act, kv, start, count, window, cache_len):
    # Keys before `start` come from the cache (wrapped ring at 300), later ones from this step.
    attention_case(device, act, kv, n_q=4, n_kv=4, window=window, cache_len=cache_len, slots=1,
                   seqs=[(0, start, count)])


@pytest.mark.parametrize("window,cache_len", [(128, 128), (0, 512)])
def test_attention_mixed_sequences(device, act, kv, window, cache_len):
    # Decode and prefill of four sequences in one step, at different positions and slots.
    seqs = [(2, 300, 1), (0, 0, 17), (3, 130, 5), (1, 7, 1)]
    attention_case(device, act, kv, n_q=8, n_kv=2, window=window, cache_len=cache_len, slots=4, seqs=seqs)


@pytest.mark.parametrize("seqs", [[(0, 200, 1)], [(0, 0, 17)], [(1, 140, 3)]])
def test_attention_gpt_oss_heads(device, act, kv, seqs):
    # The model's own head layout: 64 q heads over 8 kv heads.
    attention_case(device, act, kv, n_q=64, n_kv=8, window=128, cache_len=128, slots=2, seqs=seqs)


@pytest.mark.parametrize("sink_shift", [-30.0, 8.0])
def test_attention_extreme_sinks(device, act, kv, sink_shift):
    # +8: the sink takes almost all of the mass; -30: none of it (exp underflows to ~1e-13).
    attention_case(device, act, kv, n_q=8, n_kv=2, window=0, cache_len=64, slots=1, seqs=[(0, 20, 3)],
                   sink_shift=sink_shift)


@pytest.mark.parametrize("kv_dtype", [np.float32, np.uint16])
def test_cpu_attention_prefill_equals_chunked_prefill_then_decode(kv_dtype):
    """Prefill of 40 tokens in one step == 25 tokens, kv_append, then 15 (the K/V precision rule).
    Exact on the CPU: the same keys at the same precision, and a row's operations depend only on its
    own key range."""
    rng = ref.rng_for("attn-chunks")
    n_q, n_kv, L = 8, 2, 128
    q = rng.standard_normal((40, n_q * 64)).astype(np.float32)
    k = rng.standard_normal((40, n_kv * 64)).astype(np.float32)
    v = rng.standard_normal((40, n_kv * 64)).astype(np.float32)
    sinks = rng.standard_normal(n_q).astype(np.float32)
    ck = empty_cache("F32" if kv_dtype == np.float32 else "BF16", (1, n_kv, L, 64))
    cv = ck.copy()
    one = np.array([0], np.int32)
    full = ops.attention(q, k, v, ck, cv, one, np.array([0], np.int32), np.array([40], np.int32), sinks, window=16)
    a = ops.attention(q[:25], k[:25], v[:25], ck, cv, one, np.array([0], np.int32), np.array([25], np.int32), sinks,
                      window=16)
    ck, cv = ops.kv_append(k[:25], v[:25], ck, cv, one, np.array([0], np.int32), np.array([25], np.int32))
    b = ops.attention(q[25:], k[25:], v[25:], ck, cv, one, np.array([25], np.int32), np.array([15], np.int32), sinks,
                      window=16)
    np.testing.assert_array_equal(np.concatenate([a, b]), full)


def test_cpu_attention_long_rows_bitwise_independent_of_threads_and_batch():
    """A row's result may not depend on how the CPU spreads the work. The last of 2100 tokens,
    decoded after a kv_append of its history: on 1 thread (T * n_kv = 4 items: no key split), on 2
    and 7 threads (the 3 key chunks of each row on different threads); and as the last row of a
    one-step prefill (2100 * 4 items: each row's chunks merged on one thread)."""
    rng = ref.rng_for("attn-threads")
    n_q, n_kv, P = 8, 4, 2100
    q = rng.standard_normal((P, n_q * 64)).astype(np.float32)
    k = rng.standard_normal((P, n_kv * 64)).astype(np.float32)
    v = rng.standard_normal((P, n_kv * 64)).astype(np.float32)
    sinks = rng.standard_normal(n_q).astype(np.float32)
    ck = np.zeros((1, n_kv, P, 64), np.float32)
    ck, cv = ops.kv_append(k[:-1], v[:-1], ck, ck, np.array([0], np.int32), np.array([0], np.int32),
                           np.array([P - 1], np.int32))
    decode = [ops.attention(q[-1:], k[-1:], v[-1:], ck, cv, np.array([0], np.int32), np.array([P - 1], np.int32),
                            np.array([1], np.int32), sinks, device=d) for d in ("cpu:1", "cpu:2", "cpu:7")]
    prefill = ops.attention(q, k, v, np.full_like(ck, np.nan), np.full_like(cv, np.nan), np.array([0], np.int32),
                            np.array([0], np.int32), np.array([P], np.int32), sinks, device="cpu:2")
    for out in decode[1:] + [prefill[-1:]]:
        np.testing.assert_array_equal(out, decode[0])


def test_attention_rejects_cache_too_short(device):
    kv_type = ops.backend_info(device)["kv_type"]
    with pytest.raises(ValueError, match="cache holds only"):
        attention_case(device, "F32", kv_type, n_q=4, n_kv=4, window=0, cache_len=128, slots=1, seqs=[(0, 300, 1)])


def test_attention_rejects_cache_dtypes(device):
    q = np.zeros((1, 64), np.float32)
    one, zero, sinks = np.array([1], np.int32), np.array([0], np.int32), np.zeros(1, np.float32)
    with pytest.raises(ValueError, match="float32 .* or uint16"):
        c = np.zeros((1, 1, 4, 64), np.float64)
        ops.attention(q, q, q, c, c, zero, zero, one, sinks, device=device)
    with pytest.raises(ValueError, match="cache_v must have dtype float32"):
        ops.attention(q, q, q, np.zeros((1, 1, 4, 64), np.float32), np.zeros((1, 1, 4, 64), np.uint16), zero, zero,
                      one, sinks, device=device)
    if device != "cpu" and ops.backend_info(device)["kv_type"] == "BF16":
        # A backend without an F32 cache says so (the CPU implements both).
        c = np.zeros((1, 1, 4, 64), np.float32)
        with pytest.raises(NotImplementedError, match="F32"):
            ops.attention(q, q, q, c, c, zero, zero, one, sinks, device=device)
        with pytest.raises(NotImplementedError, match="F32"):
            ops.kv_append(q, q, c, c, zero, zero, one, device=device)


def test_kv_append_ring_and_long_chunks(device, kv):
    rng = ref.rng_for("kv")
    slots, n_kv, L = 3, 2, 128
    ck0 = to_cache(kv, rng.standard_normal((slots, n_kv, L, 64)))
    cv0 = to_cache(kv, rng.standard_normal((slots, n_kv, L, 64)))
    # A prefill from 0, a decode token after the ring wrapped, and a 200-token chunk (> len):
    # only its last 128 tokens may be written.
    seqs = [(1, 0, 17), (0, 250, 1), (2, 100, 200)]
    T = sum(c for _, _, c in seqs)
    k = rng.standard_normal((T, n_kv * 64)).astype(np.float32)
    v = rng.standard_normal((T, n_kv * 64)).astype(np.float32)
    slot, start, lens = (np.array(c, np.int32) for c in zip(*seqs))
    ck, cv = ops.kv_append(k, v, ck0, cv0, slot, start, lens, device=device)
    assert ck.dtype == ck0.dtype and cv.dtype == cv0.dtype
    ek, ev = ck0.copy(), cv0.copy()
    t = 0
    for s, st, n in seqs:
        for i in range(n):
            if i >= n - L:
                ek[s, :, (st + i) % L] = to_cache(kv, k[t + i].reshape(n_kv, 64))
                ev[s, :, (st + i) % L] = to_cache(kv, v[t + i].reshape(n_kv, 64))
        t += n
    # Exact: an F32 cache stores the f32 values; round-to-nearest-even to bf16 is the same on every
    # backend (a bf16 backend rounds the same value on upload). Untouched entries keep their bits.
    np.testing.assert_array_equal(ck, ek)
    np.testing.assert_array_equal(cv, ev)


def test_kv_append_rejects_bad_batches(device):
    ck = np.zeros((2, 1, 8, 64), np.uint16)
    k = np.zeros((2, 64), np.float32)
    with pytest.raises(ValueError, match="slot"):
        ops.kv_append(k, k, ck, ck, np.array([2], np.int32), np.array([0], np.int32), np.array([2], np.int32),
                      device=device)
    with pytest.raises(ValueError, match="seq_lens sum"):
        ops.kv_append(k, k, ck, ck, np.array([0], np.int32), np.array([0], np.int32), np.array([3], np.int32),
                      device=device)
    with pytest.raises(ValueError, match="slot 1"):
        ops.kv_append(k, k, ck, ck, np.array([1, 1], np.int32), np.array([0, 0], np.int32), np.array([1, 1], np.int32),
                      device=device)


# ---------------------------------------------------------------------------------------------
# router
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T,E,k", [(1, 32, 4), (17, 128, 4), (3, 5, 5), (129, 32, 1)])
def test_router_topk(device, T, E, k):
    rng = ref.rng_for("router", T, E, k)
    logits = (rng.standard_normal((T, E)) * 2).astype(np.float32)
    idx, w = ops.router_topk(logits, k, device=device)
    eidx, ew = ref.router_topk(logits, k)
    np.testing.assert_array_equal(idx, eidx)  # exact: indices
    # A softmax of k f32 values: a few ulps.
    np.testing.assert_allclose(w, ew, rtol=1e-6, atol=1e-7)


def test_router_topk_ties_prefer_lower_index(device):
    logits = np.array([[1, 3, 3, 2, 3, 0], [0, 0, 0, 0, 0, 0], [-1, 5, -1, -1, 5, -1]], np.float32)
    idx, w = ops.router_topk(logits, 3, device=device)
    np.testing.assert_array_equal(idx, [[1, 2, 4], [0, 1, 2], [1, 4, 0]])
    np.testing.assert_allclose(w[:2], 1 / 3, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# moe
# ---------------------------------------------------------------------------------------------


def moe_case(device, act, *, T, E, k, H, I, expert_idx=None, seed=0, e1=None, e2=None):
    rng = ref.rng_for("moe", seed, T, E, k, H, I)
    x = rng.standard_normal((T, H)).astype(np.float32)
    if expert_idx is None:
        expert_idx = np.stack([rng.permutation(E)[:k] for _ in range(T)]).astype(np.int32)
    expert_w = rng.dirichlet(np.ones(k), T).astype(np.float32)
    # Scales chosen so that mlp1 outputs have rms ~7: the swiglu clamps are exercised.
    e1 = e1 if e1 is not None else int(np.round(np.log2(2.93 * np.sqrt(H) / 7)))
    e2 = e2 if e2 is not None else int(np.round(np.log2(2.93 * np.sqrt(I) * 10)))
    w1b, w1s = ref.make_mxfp4(rng, (E, 2 * I), H, -e1)
    w2b, w2s = ref.make_mxfp4(rng, (E, H), I, -e2)
    b1 = rng.standard_normal((E, 2 * I)).astype(np.float32)
    b2 = rng.standard_normal((E, H)).astype(np.float32)
    y0 = rng.standard_normal((T, H)).astype(np.float32)
    args = (x, expert_idx, expert_w, w1b, w1s, b1, w2b, w2s, b2)
    out = ops.moe(*args, y0, device=device)
    delta, mag, u = ref.moe(*args, return_parts=True)
    exact = y0 + delta
    # f32: normwise per token, 1e-5 of the largest |w| (|W2| |z| + |b2|) in the row (the swiglu
    # inputs carry ~1e-6 relative error that W2 spreads over the row), plus the residual's ulp.
    f32_bound = F32_REL * (mag.max(axis=1, keepdims=True) + np.abs(y0))
    what = f"moe T={T} E={E} k={k} H={H} I={I}"
    if act == "F32":
        ref.check(out, exact, f32_bound, what)
    else:
        sim = y0 + ref.moe(*args, act_round=ref.bf16_round)
        check_vs_bf16_sim(out, exact, sim, f32_bound, what)
    return out, u, args, y0


@pytest.mark.parametrize("T", [1, 3, 17, 129])
@pytest.mark.parametrize("H,I", [(96, 160), (160, 96)])
def test_moe(device, act, T, H, I):
    _, u, _, _ = moe_case(device, act, T=T, E=8, k=4, H=H, I=I)
    # The case must exercise both clamps: glu above +7, linear beyond +-7.
    assert (u[:, 0::2] > 7).any() and (np.abs(u[:, 1::2]) > 7).any()


def test_moe_one_to_seven_tokens_per_expert(device, act):
    # Expert e gets counts[e] tokens: partial (1..3), full (4) and full + partial (5..7) tiles.
    counts = [7, 6, 5, 4, 4, 3, 2, 1]
    T, k = 8, 4
    flat = np.repeat(np.arange(8), counts)  # position p -> token p % T, slot p // T: distinct per token
    expert_idx = np.empty((T, k), np.int32)
    for p, e in enumerate(flat):
        expert_idx[p % T, p // T] = e
    moe_case(device, act, T=T, E=8, k=k, H=96, I=160, expert_idx=expert_idx)


@pytest.mark.parametrize("T,E,k", [(300, 4, 2), (257, 2, 2)])
def test_moe_hundreds_of_tokens_per_expert(device, act, T, E, k):
    moe_case(device, act, T=T, E=E, k=k, H=96, I=96)


@pytest.mark.parametrize("T", [1, 2])
def test_moe_gpt_oss_20b_shapes(device, act, T):
    # H = I = 2880 (90 blocks per row), 4 experts chosen from 32 per token.
    moe_case(device, act, T=T, E=32, k=4, H=2880, I=2880)


def test_moe_result_independent_of_thread_count():
    outs = [moe_case(dev, "F32", T=37, E=8, k=4, H=96, I=160, seed=3)[0] for dev in ("cpu:1", "cpu:2", "cpu:3")]
    # Exact: each output is computed by the same instruction sequence whoever computes it.
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_cpu_decode_rows_equal_prefill_rows_bitwise():
    """On the CPU a token's dense and MoE outputs do not depend on what else is in the step: the
    kernels compute each (row, token) with the same operations whatever the tile (simd.h)."""
    rng = ref.rng_for("batch-invariance")
    x = rng.standard_normal((17, 160)).astype(np.float32)
    wb = ref.random_bf16(rng, (96, 160), 0.1)
    full = ops.dense(x, wb)
    for t in (0, 5, 16):
        np.testing.assert_array_equal(ops.dense(x[t : t + 1], wb), full[t : t + 1])
    out, _, args, y0 = moe_case("cpu", "F32", T=9, E=4, k=2, H=96, I=96, seed=5)
    x, idx, w, *weights = args
    for t in (0, 4, 8):
        one = ops.moe(x[t : t + 1], idx[t : t + 1], w[t : t + 1], *weights, y0[t : t + 1])
        np.testing.assert_array_equal(one, out[t : t + 1])


def test_moe_rejects_bad_inputs(device):
    _, _, args, y0 = moe_case(device, "F32" if device == "cpu" else "BF16", T=2, E=4, k=2, H=96, I=96)
    x, idx, *rest = args
    with pytest.raises(ValueError, match="outside"):
        ops.moe(x, np.array([[0, 4], [1, 2]], np.int32), *rest, y0, device=device)
    with pytest.raises(ValueError, match="w1_scales"):
        ops.moe(x, idx, rest[0], rest[1], rest[2][:, :-2], *rest[3:], y0, device=device)


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------

V_FULL = 201088


def test_philox_reference_known_answers():
    # Random123's kat_vectors for philox4x32_10: this validates the reference itself.
    assert ref.philox4x32_10((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert ref.philox4x32_10((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert ref.philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_greedy_full_vocab_and_logprob(device):
    rng = ref.rng_for("greedy")
    logits = (rng.standard_normal((3, V_FULL)) * 4).astype(np.float32)
    logits[1, 5] = logits[1, 9] = logits[1].max() + 1  # tie: the lowest id wins
    tok, lp = ops.sample(logits, 0.0, device=device)
    np.testing.assert_array_equal(tok, [np.argmax(logits[0]), 5, np.argmax(logits[2])])
    # log_softmax over 201088 f32 logits: f32 exp, f64 sum; ~1e-6 absolute.
    np.testing.assert_allclose(lp, ref.log_softmax(logits)[np.arange(3), tok], rtol=0, atol=2e-5)


def test_seeded_draws_are_reproducible_and_batch_independent(device):
    rng = ref.rng_for("seeded")
    logits = rng.standard_normal((4, 5000)).astype(np.float32)
    kw = dict(temperature=1.0, top_k=0, top_p=0.95, min_p=0.0)
    seeds = np.array([1, 2, 3, 2**63 + 5], np.uint64)
    counters = np.array([10, 10, 11, 12], np.int64)
    a, _ = ops.sample(logits, seed=seeds, counter=counters, device=device, **kw)
    b, _ = ops.sample(logits, seed=seeds, counter=counters, device=device, **kw)
    np.testing.assert_array_equal(a, b)
    for s in range(4):  # alone in the batch: the same token
        alone, _ = ops.sample(logits[s : s + 1], seed=int(seeds[s]), counter=int(counters[s]), device=device, **kw)
        assert alone[0] == a[s]
    draws, _ = ops.sample(np.repeat(logits[:1], 64, 0), seed=7, counter=np.arange(64), device=device, **kw)
    assert len(set(draws.tolist())) > 20  # different counters really draw differently


CASES = [
    # (temperature, top_k, top_p, min_p)
    (1.0, 0, 1.0, 0.0),
    (0.7, 0, 1.0, 0.0),
    (1.0, 50, 1.0, 0.0),
    (1.0, 0, 0.9, 0.0),
    (1.3, 40, 0.8, 0.05),
    (1.0, 0, 1.0, 0.1),
]


@pytest.mark.parametrize("V", [1000, V_FULL])
@pytest.mark.parametrize("temperature,top_k,top_p,min_p", CASES)
def test_draws_match_reference(device, V, temperature, top_k, top_p, min_p):
    rng = ref.rng_for("draw", V)
    logits = (rng.standard_normal(V) * 3).astype(np.float32)
    S = 64 if V < V_FULL else 8
    counters = np.arange(S) * 7919
    tok, _ = ops.sample(np.repeat(logits[None], S, 0), temperature, top_k, top_p, min_p, seed=42, counter=counters,
                        device=device)
    compared = 0
    for s in range(S):
        want, margin = ref.sample(logits, temperature, top_k, top_p, min_p, seed=42, counter=int(counters[s]))
        # u * total within 1e-5 of a CDF step could flip between f32 and f64 probabilities.
        if margin > 1e-5:
            assert tok[s] == want, f"draw {s}: got {tok[s]}, reference {want}"
            compared += 1
    assert compared >= S // 2


# Crafted distribution: probabilities 0.5, 0.3, 0.15, 0.05 on ids 3, 1, 6, 0 (of 8).
CRAFTED_P = np.array([0.05, 0.3, 0.0, 0.5, 0.0, 0.0, 0.15, 0.0])


def crafted_logits():
    with np.errstate(divide="ignore"):
        l = np.log(CRAFTED_P)
    return np.where(np.isfinite(l), l, -30.0).astype(np.float32)


@pytest.mark.parametrize(
    "top_k,top_p,min_p,kept",
    [
        (2, 1.0, 0.0, {3, 1}),
        (0, 0.79, 0.0, {3, 1}),  # 0.5 + 0.3 = 0.8 first reaches 0.79
        (0, 0.81, 0.0, {3, 1, 6}),
        (3, 0.84, 0.0, {3, 1}),  # renormalised over top_k's 0.95: 0.8 / 0.95 = 0.842 >= 0.84
        (0, 1.0, 0.2, {3, 1, 6}),  # p >= 0.2 * 0.5
        (0, 1.0, 0.35, {3, 1}),
    ],
)
def test_filters_keep_exactly_the_expected_set(device, top_k, top_p, min_p, kept):
    N = 4000
    tok, _ = ops.sample(np.repeat(crafted_logits()[None], N, 0), 1.0, top_k, top_p, min_p, seed=5,
                        counter=np.arange(N), device=device)
    assert set(tok.tolist()) == kept


def test_top_k_keeps_ties(device):
    logits = np.array([[5, 4, 4, 4, 1, 0, 0, 0]], np.float32)
    tok, _ = ops.sample(np.repeat(logits, 3000, 0), 1.0, 2, seed=9, counter=np.arange(3000), device=device)
    assert set(tok.tolist()) == {0, 1, 2, 3}  # all logits >= the 2nd largest


def test_empirical_frequencies(device):
    # 20000 draws at temperature 0.7: each token's frequency within 5 binomial standard deviations
    # of its probability (a false alarm has probability < 1e-5 over the 8 tokens; the draws are
    # deterministic, so the test cannot flake).
    N, T = 20000, 0.7
    logits = np.array([0.3, -1.0, 1.2, 0.0, 2.0, -0.5, 0.9, -3.0], np.float32)
    p = np.exp(logits.astype(np.float64) / T)
    p /= p.sum()
    tok, lp = ops.sample(np.repeat(logits[None], N, 0), T, seed=2024, counter=np.arange(N), device=device)
    freq = np.bincount(tok, minlength=8) / N
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / N) + 1e-12)
    np.testing.assert_allclose(lp, ref.log_softmax(logits)[tok], atol=1e-6)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=1.0, top_p=0.0), "top_p"),
        (dict(temperature=1.0, min_p=1.5), "min_p"),
        (dict(temperature=1.0, top_k=-1), "top_k"),
    ],
)
def test_sampling_rejects_bad_settings(device, kw, match):
    with pytest.raises(ValueError, match=match):
        ops.sample(np.zeros((1, 10), np.float32), device=device, **kw)
