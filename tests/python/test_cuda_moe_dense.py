"""CUDA tests of the dense bf16 matmul (cuda/dense_bf16.cu) and the MXFP4 MoE (cuda/moe_mxfp4.cu,
cuda/expert_route.cu, cuda/mxfp4_layout.cu), through gpt_oss_c._core.ops (the Backend interface,
so the MXFP4 re-layout of place_weight is exercised), against the float64 references of
tests/reference.py and against the CPU backend on identical inputs.

Every test names the kernel path its shape selects (the thresholds mirror launch_dense_bf16 and
launch_moe_mxfp4), so one failing run says which kernel and which shape. The same kernels can be
checked without the binding or the backend by `python bench/cuda_kernels.py --check`.

Tolerances (bf16 activations on CUDA: the binding rounds x to bf16 before upload):
  * dense: the reference is computed from the bf16-rounded x, so the kernel's only errors are the
    f32 accumulation, bounded by 2^-16 of sum |x_k w_k| (+|b|) -- K <= 4096 products, each exact,
    summed in f32 trees of depth <= ~16 -- and, for a bf16 output, one rounding (half an ulp: <= 2^-8 relative);
  * MoE: z is rounded to bf16 between the two matmuls, as the reference implementations do, so
    the flash-attention criterion of test_ops.py: max error <= 2 x the error of the same math done
    in float64 with bf16 rounding of x and z, plus the f32 bound 1e-5 of the row's magnitude;
  * CUDA vs CPU: the same bound with the CPU's own (f32) error added;
  * determinism: bitwise equal across repeated runs.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

_core = pytest.importorskip("gpt_oss_c._core")
if not _core.cuda_available():
    pytest.skip("no CUDA backend or GPU (gpt_oss_c._core.cuda_available() is False)", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/reference.py
import reference as ref  # noqa: E402

pytestmark = pytest.mark.cuda
ops = _core.ops
F32_ACC = 2.0**-16
F32_REL = 1e-5
# One round-to-nearest to bf16 (8 significant bits): half an ulp, which is at most 2^-8 of |value|
# (2^-9 holds only at the top of a binade; the first H200 run, 2026-11-28, hit exactly that).
BF16_OUT = 2.0**-8


def rerun_in_child(env, selection, what):
    # Knobs such as GPT_OSS_C_FORCE_PORTABLE are read once per process: a child pytest reruns the
    # tests `selection` picks in this file with `env` added, and must pass.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", selection],
                          env=dict(os.environ, **env), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{what} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"


# ---------------------------------------------------------------------------------------------
# dense
# ---------------------------------------------------------------------------------------------


def dense_path(T, N, K):
    # KS (warps per tile) and Z (blocks per tile, split-K) also depend on the SM count and the
    # kernel's occupancy, so only the regime is named: the GEMV splits k over Z > 1 blocks when its
    # tiles would fill under a quarter of the resident warps (N up to ~3000 at 132 SMs: the router,
    # N=32..640 here); the 64x64 GEMM when there are fewer tiles than 2 per SM.
    if K % 32:
        return "bf16_dense_generic"
    if T <= 8 and K <= 4096 and N <= 24 * 132 and 2 * K * ((N + 131) // 132) <= 192 * 1024:
        # With programmatic dependent launch (sm_90) and ~132 SMs; otherwise the GEMV below.
        return "bf16_dense_gemv_resident (or bf16_dense_gemv_mma)"
    if T <= 16:
        return f"bf16_dense_gemv_mma NT={1 if T <= 8 else 2}" + (" (split-K over blocks)" if N <= 3000 else "")
    if T <= 128:
        return "bf16_dense_gemm_mma 64x64" + (" (split-K)" if ((T + 63) // 64) * ((N + 63) // 64) < 264 else "")
    return "bf16_dense_gemm_mma 128x128"


def dense_case(T, N, K, *, bias=True, y=False, f32_out=False, seed=0):
    rng = ref.rng_for("cuda-b", "dense", T, N, K, seed)
    x = ref.bf16_round(rng.standard_normal((T, K))).astype(np.float32)  # bf16-exact: no input rounding
    wb = ref.random_bf16(rng, (N, K), 0.05)
    w = ref.bf16_bits_to_f32(wb).astype(np.float64)
    b = rng.standard_normal(N).astype(np.float32) if bias else None
    y0 = rng.standard_normal((T, N)).astype(np.float32) if y else None
    out = ops.dense(x, wb, bias=b, y=y0, f32_out=f32_out, device="cuda")
    prod = x.astype(np.float64) @ w.T + (0 if b is None else b)
    exact = prod + (0 if y0 is None else y0)
    mag = np.abs(x.astype(np.float64)) @ np.abs(w).T + (0 if b is None else np.abs(b))
    bound = F32_ACC * mag + (F32_REL * np.abs(exact) if (y or f32_out) else BF16_OUT * np.abs(exact))
    ref.check(out, exact, bound, f"dense {dense_path(T, N, K)} T={T} N={N} K={K} bias={bias} acc={y} f32={f32_out}")
    return x, wb, b, y0, out


# T: GEMV with 1 and 2 token tiles (and partial ones), both GEMM tile sizes with partial tiles.
@pytest.mark.parametrize("T", [1, 3, 8, 9, 16, 17, 64, 65, 129])
@pytest.mark.parametrize("N,K", [(2880, 2880), (33, 96), (130, 32), (5120, 2880)])
def test_dense_paths(T, N, K):
    dense_case(T, N, K)


# N picks the GEMV's k split: KS = 1 (201088 rows), 2 (8200), 4 (5120), 8 (2880, and the router's 32).
@pytest.mark.parametrize("N,K", [(201088, 64), (8200, 256), (5120, 512), (2880, 4096), (32, 2880), (128, 2880)])
@pytest.mark.parametrize("T", [1, 12])
def test_dense_gemv_splits(T, N, K):
    dense_case(T, N, K, f32_out=True)


@pytest.mark.parametrize("T", [1, 5, 13, 40, 300])
def test_dense_accumulate_onto_residual(T):
    dense_case(T, 2880, 4096, bias=True, y=True)
    dense_case(T, 96, 160, bias=False, y=True)


@pytest.mark.parametrize("T", [1, 20, 2048])
def test_dense_prefill_2048_and_bf16_out(T):
    dense_case(T, 640, 2880, bias=True)


@pytest.mark.parametrize("T,N,K", [(1, 7, 100), (19, 33, 72), (3, 5, 8)])
def test_dense_generic_any_k(T, N, K):
    # K % 32 != 0: the exact fallback kernel (no gpt-oss layer has such a K).
    dense_case(T, N, K, y=True)


@pytest.mark.parametrize("T,N,K", [(1, 2880, 2880), (9, 33, 96), (100, 640, 2880)])
def test_dense_cuda_matches_cpu(T, N, K):
    x, wb, b, _, out = dense_case(T, N, K, f32_out=True)
    cpu = ops.dense(x, wb, bias=b, f32_out=True, device="cpu")
    w = ref.bf16_bits_to_f32(wb).astype(np.float64)
    mag = np.abs(x.astype(np.float64)) @ np.abs(w).T + np.abs(b)
    ref.check(out, cpu, (F32_ACC + F32_REL) * mag, f"dense cuda vs cpu {dense_path(T, N, K)} T={T} N={N} K={K}")


# The 20b router and output projection at batched-decode sizes: split-K over blocks in both regimes.
@pytest.mark.parametrize("T,N,K", [(1, 32, 2880), (8, 32, 2880), (64, 32, 2880), (64, 2880, 4096), (128, 2880, 4096),
                                   (100, 5120, 2880)])
def test_dense_split_k_decode_and_batched(T, N, K):
    dense_case(T, N, K, f32_out=True)
    dense_case(T, N, K, y=True)  # the accumulate epilogue after the split-K meeting


def test_dense_is_deterministic():
    x, wb, b, _, out = dense_case(65, 2880, 2880, f32_out=True)
    for _ in range(2):
        np.testing.assert_array_equal(ops.dense(x, wb, bias=b, f32_out=True, device="cuda"), out)
    x, wb, b, _, out = dense_case(3, 2880, 2880, f32_out=True)
    np.testing.assert_array_equal(ops.dense(x, wb, bias=b, f32_out=True, device="cuda"), out)
    # Split-K over blocks: the partial tiles are summed in block order, whichever block arrives last.
    for T in (1, 64):
        x, wb, b, _, out = dense_case(T, 32, 2880, f32_out=True)
        for _ in range(3):
            np.testing.assert_array_equal(ops.dense(x, wb, bias=b, f32_out=True, device="cuda"), out)


# The resident GEMV (cuda/dense_gemv_resident.cu, T <= 8 on sm_90): rows per block from 1 to the
# 24 of three full n8 tiles (N = 3168 = 24 x 132 SMs of an H200), K from one k32 block (most of the 16 warps idle) to
# 4096 (8 k32 blocks per warp), K = 96 (a row of 12 pieces, padded for the swizzle), and K = 4128
# just past it (the streaming GEMV).
@pytest.mark.parametrize("T", [1, 2, 8])
@pytest.mark.parametrize("N,K", [(2880, 4096), (3168, 1024), (17, 32), (1, 96), (1000, 4096), (131, 4128)])
def test_dense_resident_gemv_shapes(T, N, K):
    dense_case(T, N, K, f32_out=True)
    dense_case(T, N, K, y=True)
    dense_case(T, N, K, bias=False)


@pytest.mark.skipif(os.environ.get("GPT_OSS_C_GEMV_RESIDENT") is not None, reason="this is the streaming GEMV run")
def test_dense_streaming_gemv_in_a_child_process():
    # GPT_OSS_C_GEMV_RESIDENT=0 (read once per process) gives the T <= 8 calls back to the streaming
    # GEMV of dense_bf16.cu: a child reruns the dense tests with it.
    rerun_in_child({"GPT_OSS_C_GEMV_RESIDENT": "0"}, "test_dense and not child_process",
                   "dense with the streaming GEMV")


@pytest.mark.skipif(os.environ.get("GPT_OSS_C_DENSE_WGMMA") is not None, reason="this is the mma.sync run")
def test_dense_mma_sync_gemm_in_a_child_process():
    # On sm_90a, T > 128 takes the wgmma GEMM (dense_bf16_wgmma.cu); GPT_OSS_C_DENSE_WGMMA=0, read
    # once per process, puts the mma.sync GEMM back: a child reruns the dense tests with it.
    rerun_in_child({"GPT_OSS_C_DENSE_WGMMA": "0"}, "test_dense", "dense with the mma.sync GEMM")


# ---------------------------------------------------------------------------------------------
# MoE
# ---------------------------------------------------------------------------------------------


STREAM_MAX_SLOTS = 32  # moe_mxfp4_impl.cuh kStreamMaxSlots
STREAM_BATCH_MAX_SLOTS = 512  # moe_mxfp4_impl.cuh kStreamBatchMaxSlots


def moe_path(T, k, E):
    """The kernel path launch_moe_mxfp4 takes (moe_mxfp4.cu), for test names and messages."""
    S = T * k
    if S <= STREAM_MAX_SLOTS:
        return f"bf16_mxfp4w_moe_stream KS={4 if S <= 4 else 2} (streaming decode, fused combine)"
    if S <= STREAM_BATCH_MAX_SLOTS:
        return "expert route + bf16_mxfp4w_moe_stream_batch (16-row route tiles) + combine"
    avg = -(-S // E)
    bm = 32 if avg <= 24 else 64 if avg <= 64 else 128
    if os.environ.get("GPT_OSS_C_FORCE_PORTABLE") != "1":
        gemm = f"bf16_mxfp4w_moe_wgmma_rs BM=256 on sm_90a, else bf16_mxfp4w_moe_gemm BM={bm}"
    else:
        gemm = f"bf16_mxfp4w_moe_gemm BM={bm} (forced portable)"
    return f"expert route + {gemm} + combine"


def moe_inputs(T, E, k, H, I, *, expert_idx=None, seed=0):
    rng = ref.rng_for("cuda-b", "moe", T, E, k, H, I, seed)
    x = ref.bf16_round(rng.standard_normal((T, H))).astype(np.float32)  # bf16-exact
    if expert_idx is None:
        expert_idx = np.stack([rng.permutation(E)[:k] for _ in range(T)]).astype(np.int32)
    expert_w = rng.dirichlet(np.ones(k), T).astype(np.float32)
    # mlp1 outputs with rms ~7, so that both swiglu clamps are exercised (as in test_ops.py).
    e1 = int(np.round(np.log2(2.93 * np.sqrt(H) / 7)))
    e2 = int(np.round(np.log2(2.93 * np.sqrt(I) * 10)))
    w1b, w1s = ref.make_mxfp4(rng, (E, 2 * I), H, -e1)
    w2b, w2s = ref.make_mxfp4(rng, (E, H), I, -e2)
    b1 = rng.standard_normal((E, 2 * I)).astype(np.float32)
    b2 = rng.standard_normal((E, H)).astype(np.float32)
    y0 = rng.standard_normal((T, H)).astype(np.float32)
    return (x, expert_idx, expert_w, w1b, w1s, b1, w2b, w2s, b2), y0


def moe_case(T, E, k, H, I, *, expert_idx=None, seed=0, vs_cpu=False):
    args, y0 = moe_inputs(T, E, k, H, I, expert_idx=expert_idx, seed=seed)
    idx = args[1]
    what = f"moe {moe_path(T, idx.shape[1], E)} T={T} E={E} k={idx.shape[1]} H={H} I={I}"
    out = ops.moe(*args, y0, device="cuda")
    delta, mag, delta_sim = ref.moe_exact_and_rounded(*args, act_round=ref.bf16_round)
    exact = y0 + delta
    sim = y0 + delta_sim
    f32_bound = F32_REL * (mag.max(axis=1, keepdims=True) + np.abs(y0))
    err = np.abs(out.astype(np.float64) - exact).max()
    allowed = 2.0 * np.abs(sim - exact).max() + f32_bound.max()
    assert err <= allowed, f"{what}: max |err| {err:.3g} > 2 x bf16 reference error + f32 bound = {allowed:.3g}"
    if vs_cpu:
        cpu = ops.moe(*args, y0, device="cpu")
        d = np.abs(out.astype(np.float64) - cpu).max()
        allowed_cpu = allowed + np.abs(cpu - exact).max()
        assert d <= allowed_cpu, f"{what}: max |cuda - cpu| {d:.3g} > {allowed_cpu:.3g}"
    return args, y0, out


# Decode path: 1..3 tokens over 32 experts; odd H / I give half chunks (96 = 1.5 x 64, 160 = 2.5 x 64).
@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("H,I", [(96, 160), (160, 96), (32, 64), (2880, 2880)])
def test_moe_decode(T, H, I):
    moe_case(T, 32, 4, H, I)


# Batched decode over 16-row route tiles, several per expert: T=17 and 100 over 8 experts (~9 and
# ~50 rows per expert: 1 and ~4 tiles, the last partial), T=128 over 2 experts (128 rows each: 8 tiles).
@pytest.mark.parametrize("T,E,k", [(17, 8, 4), (100, 8, 4), (128, 2, 2)])
@pytest.mark.parametrize("H,I", [(96, 160), (160, 96)])
def test_moe_batch_route_tiles(T, E, k, H, I):
    moe_case(T, E, k, H, I)


# Routed GEMM tiles (T * k > 512): BM = 32 (T=160 over 64 experts -> 10 rows each), 64 (T=300 over
# 32 -> 38), 128 (T=129 over 4 -> 129).
@pytest.mark.parametrize("T,E", [(160, 64), (300, 32), (129, 4)])
@pytest.mark.parametrize("H,I", [(96, 160), (160, 96)])
def test_moe_tiles(T, E, H, I):
    moe_case(T, E, 4, H, I)


def test_moe_gpt_oss_20b_shapes_decode_and_prefill():
    moe_case(1, 32, 4, 2880, 2880, vs_cpu=True)     # decode: streaming decode, KS = 4
    moe_case(8, 32, 4, 2880, 2880)                   # batch-8 decode: streaming decode, KS = 2
    moe_case(64, 32, 4, 2880, 2880)                  # batch-64 decode: stream batch
    moe_case(128, 32, 4, 2880, 2880)                 # 512 slots: the last stream batch step
    moe_case(129, 32, 4, 2880, 2880, vs_cpu=True)    # 516 slots: the prefill GEMM


def test_moe_gpt_oss_120b_expert_count():
    moe_case(1, 128, 4, 2880, 2880)    # decode over 128 experts
    moe_case(64, 128, 4, 256, 512)     # batch-64: ~2 tokens per active expert


def test_moe_prefill_2048_hundreds_per_expert():
    moe_case(2048, 32, 4, 512, 256)   # ~256 rows per expert: wgmma 256-row tiles; mma.sync BM = 128, 2 tiles each
    moe_case(2048, 128, 4, 256, 512)  # 120b-like E: ~64 rows per expert; mma.sync BM = 64


# (300, 4, 2) and (257, 2, 2): prefill GEMM with few experts; (64, 128, 4): stream batch over 128
# experts; (5, 256, 8): 40 slots over 256 experts; (7, 4, 3) and (2, 16, 1): streaming decode with
# shared experts and k = 1; (10, 8, 3): k = 3.
@pytest.mark.parametrize("T,E,k", [(300, 4, 2), (257, 2, 2), (64, 128, 4), (5, 256, 8), (7, 4, 3), (2, 16, 1), (10, 8, 3)])
def test_moe_expert_counts(T, E, k):
    moe_case(T, E, k, 96, 96)


def test_moe_skewed_routing_multi_tile_experts():
    # Every token picks experts 0 and 1: one expert holds all T rows -> several passes over the
    # weights, the last partial: streaming decode (7 and 13 rows: one pass of 8 columns, and 8 + 5
    # re-streaming the tiles), stream batch (20 rows = 16 + 4 and 40 rows = 16 + 16 + 8 route tiles);
    # and 300 rows each on the prefill GEMM (600 slots over 8 experts: wgmma 256 + 44; mma.sync
    # BM = 128, 128 + 128 + 44).
    for T, E in ((7, 64), (13, 8), (20, 64), (40, 8), (300, 8)):
        idx = np.tile(np.array([[0, 1]], np.int32), (T, 1))
        moe_case(T, E, 2, 96, 160, expert_idx=idx)
    # Duplicates within a token are allowed by the op: both slots count.
    idx = np.array([[3, 3], [1, 3], [3, 0]], np.int32)
    moe_case(3, 4, 2, 96, 96, expert_idx=idx)


def test_moe_cuda_matches_cpu_small():
    moe_case(17, 8, 4, 96, 160, vs_cpu=True)
    moe_case(3, 32, 4, 160, 96, vs_cpu=True)


def test_moe_is_deterministic():
    # Streaming decode (the combine is done by whichever warp group of an output tile arrives last:
    # the arithmetic must not depend on which), stream batch over 32 experts, prefill GEMM.
    for T, E in ((3, 8), (64, 32), (129, 8)):
        args, y0, out = moe_case(T, E, 4, 96, 160)
        for _ in range(3):
            np.testing.assert_array_equal(ops.moe(*args, y0, device="cuda"), out)


# MoEParams::next_read (the decode mlp2 pulls the next layer's q/k/v weight into L2 with bulk
# prefetches) is a hint: results bit for bit as without, for byte counts that split into uneven
# per-warp pieces and end off a 16-byte boundary, on the resident (T = 1) and ring (T = 3) paths.
@pytest.mark.parametrize("T", [1, 3])
def test_moe_next_read_hint_changes_nothing(T):
    args, y0, out = moe_case(T, 32, 4, 2880, 2880)
    for nbytes in (1, 1000, 29_491_207):
        np.testing.assert_array_equal(ops.moe(*args, y0, next_read_bytes=nbytes, device="cuda"), out)


def scale_case(T, scale_bytes):
    # One block per mlp2 row (I = 32): output n of every token is 2^(s_n - 127) times an FP4 dot
    # product, with s_n cycling through scale_bytes. A per-element bound relative to that row's
    # own magnitude (2^-7: z's bf16 rounding may differ by one ulp, 2^-8, from the reference's)
    # checks the scale handling across 2^±127 regardless of the other rows' sizes.
    E, H, I = 2, 64, 32
    args, _ = moe_inputs(T, E, 1, H, I)
    x, _, _, w1b, w1s, b1, w2b, w2s, b2 = args
    idx = np.zeros((T, 1), np.int32)
    ew = np.ones((T, 1), np.float32)
    w2s = w2s.copy()
    w2s[:, :, 0] = np.resize(np.array(scale_bytes, np.uint8), H)
    b2 = np.zeros_like(b2)  # a bias would swamp the tiny rows
    args = (x, idx, ew, w1b, w1s, b1, w2b, w2s, b2)
    out = ops.moe(*args, np.zeros((T, H), np.float32), device="cuda")
    exact, mag, _ = ref.moe(*args, return_parts=True)
    ref.check(out, exact, 2.0**-7 * mag, f"moe {moe_path(T, 1, E)} scale bytes {scale_bytes}")


# Scale bytes >= 128 take dequant_steps' two-multiply path, the others one multiply by 2^(s-1):
# T = 1 (streaming decode), T = 40 (stream batch), T = 600 (prefill GEMM, 600 slots on one expert).
@pytest.mark.parametrize("T", [1, 40, 600])
def test_moe_scale_bytes_across_the_range(T):
    scale_case(T, [7, 20, 60, 100, 127, 150, 180, 200])


@pytest.mark.parametrize("T", [1, 40, 600])
def test_moe_subnormal_scales(T):
    # 2^-127 (byte 0) and 2^-126: on the tensor-core path the A operand is a bf16 subnormal.
    scale_case(T, [0, 1, 2, 3, 127])


@pytest.mark.skipif(os.environ.get("GPT_OSS_C_FORCE_PORTABLE") == "1", reason="this is the portable run")
def test_moe_portable_kernels_in_a_child_process():
    # GPT_OSS_C_FORCE_PORTABLE=1 is read once per process: a child reruns the MoE path tests with
    # the mma.sync GEMM instead of wgmma, and the streaming kernels without programmatic dependent launch.
    sel = ("moe_decode or moe_batch_route_tiles or moe_tiles or moe_expert_counts or moe_skewed or moe_scale"
           " or moe_subnormal or moe_is_det")
    rerun_in_child({"GPT_OSS_C_FORCE_PORTABLE": "1"}, sel, "portable MoE kernels")


@pytest.mark.skipif(os.environ.get("GPT_OSS_C_MOE_STREAM_KS") is not None, reason="this is a K-split run")
@pytest.mark.parametrize("ks", ["8", "2,4"])
def test_moe_stream_k_splits_in_a_child_process(ks):
    # The streaming decode kernel is compiled per K split (KS = 2, 4, 8 warps per tile); the defaults
    # take 4 (T * k <= 4) and 2. GPT_OSS_C_MOE_STREAM_KS is read once per process: a child reruns the
    # streaming decode tests with KS = 8 for both launches, and with 2 for mlp1 and 4 for mlp2 at
    # every T (small K: warps with no chunks; tiles not a multiple of the block's tile groups).
    sel = "moe_decode or moe_skewed or moe_is_det or moe_expert_counts or gpt_oss_20b"
    rerun_in_child({"GPT_OSS_C_MOE_STREAM_KS": ks}, sel, f"MoE with GPT_OSS_C_MOE_STREAM_KS={ks}")
