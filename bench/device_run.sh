#!/usr/bin/env bash
# One batched call on a lent GPU machine (no network there): install the carried wheels from .whl/
# (our cp312 wheel built here, openai-harmony, gpt-oss, and the o200k vocabulary file), then run the
# requested stages, logging each under $OUT (bench/build_device.sh builds .whl/ here first). Usage:
# bench/device_run.sh [tests] [e2e] [bench20b] [sanitize] ... (the case labels below)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gptoss-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1; cat "$OUT/gpu.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site GPT_OSS_C_VOCAB=$PWD/.whl/o200k_base.tiktoken.gz
python3 -c "import gpt_oss_c, gpt_oss_c._core as c; print(gpt_oss_c.build_info(), 'cuda_available', c.cuda_available())" || exit 1

# The kernel micro-benchmark binary built here and carried in .whl/bench, where bench/cuda_kernels.py
# and the stages below expect it (touched: newer than its sources, so the script does not rebuild it).
use_bench_binary() { mkdir -p build/bench && cp .whl/bench/cuda_kernels build/bench/ && touch build/bench/cuda_kernels; }

# Runs "$@" with the A/B setting $1 added to the environment ("-": the defaults), e.g.
# with_env GPT_OSS_C_DENSE_WGMMA=0 cmd args.
with_env() { local ab=$1; shift; if [ "$ab" = - ]; then "$@"; else env "$ab" "$@"; fi; }

# The synthetic 20b checkpoint the whole-model stages load (written once per machine, in /dev/shm).
synthetic_20b() { python3 -c "from gpt_oss_c.bench import scratch_checkpoint; scratch_checkpoint('20b', 'hf', None)" 2>&1 | tail -1; }

for stage in "$@"; do
  case "$stage" in
    tests|portable)
      # portable: the same kernel tests with the sm_80 (mma.sync) paths forced on this sm_90 card.
      [ "$stage" = portable ] && export GPT_OSS_C_FORCE_PORTABLE=1
      for f in ${TEST_FILES:-test_cuda_backend test_cuda_moe_dense test_fused_ops test_cuda_engine_replay test_ops}; do
        with_env "${TEST_ENV:--}" timeout ${TEST_TIMEOUT:-400} python3 -m pytest -q -ra --maxfail=10 -p no:cacheprovider "tests/python/$f.py" -k cuda \
          > "$OUT/${stage}_$f.log" 2>&1
        echo "== $stage $f: $(tail -n 1 "$OUT/${stage}_$f.log")"
        grep -E "^(FAILED|ERROR)" "$OUT/${stage}_$f.log" | head -12
      done
      unset GPT_OSS_C_FORCE_PORTABLE ;;
    moetests|densetests)
      # One half of test_cuda_moe_dense (the whole file takes ~5 min), by test-name prefix (a bare "moe" or
      # "dense" also matches the file's name, i.e. every test), with TEST_ENV (e.g. "GPT_OSS_C_GEMV_PRELOAD=2"
      # or "-") added to the environment, for a knob's variant.
      sel="test_moe and not portable"; [ "$stage" = densetests ] && sel="test_dense"
      with_env "${TEST_ENV:--}" timeout 280 python3 -m pytest -q -ra --maxfail=10 -p no:cacheprovider \
        tests/python/test_cuda_moe_dense.py -k "cuda and ($sel)" > "$OUT/$stage.log" 2>&1
      echo "== $stage (${TEST_ENV:--}): $(tail -n 1 "$OUT/$stage.log")"; grep -E "^(FAILED|ERROR)" "$OUT/$stage.log" | head -12 ;;
    e2e)
      timeout 240 python3 -m pytest -q -ra --maxfail=10 -p no:cacheprovider tests/python/test_engine.py \
        tests/python/test_oracle.py tests/python/test_oracle_hf.py tests/python/test_generate.py tests/python/test_errors.py -k "cuda" > "$OUT/e2e.log" 2>&1
      echo "== e2e: $(tail -n 1 "$OUT/e2e.log")"; grep -E "^(FAILED|ERROR)" "$OUT/e2e.log" | head -12 ;;
    bench20b)
      timeout 300 python3 -m gpt_oss_c.bench --size 20b --quick --out "$OUT/bench20b.json" > "$OUT/bench20b.log" 2>&1
      tail -n 30 "$OUT/bench20b.log" ;;
    ctest)
      for t in .whl/ctest/*; do echo "== $t"; timeout 120 "$t" > "$OUT/$(basename "$t").log" 2>&1; echo "rc=$?"; tail -n 3 "$OUT/$(basename "$t").log"; done ;;
    profile)
      synthetic_20b
      for w in decode prefill batch; do
        GPT_OSS_C_PROFILE=1 GPT_OSS_C_NO_GRAPHS=1 GPT_OSS_C_NO_PDL=1 timeout 200 python3 bench/profile_ops.py /dev/shm/gpt_oss_c-bench-20b-hf $w \
          > "$OUT/profile_$w.log" 2>&1; echo "== profile $w"; head -n 14 "$OUT/profile_$w.log" | cut -c1-90
      done ;;
    bench20b_full|bench20b_hf)
      # bench20b_hf adds Hugging Face transformers' GptOss (bf16, same weights) to the same run; the
      # JSON is rewritten after every stage, so a run cut short by BENCH_TIMEOUT keeps what it measured.
      hf=; [ "$stage" = bench20b_hf ] && hf=--compare-hf
      timeout ${BENCH_TIMEOUT:-400} python3 -m gpt_oss_c.bench --size 20b $hf --out "$OUT/bench20b.json" > "$OUT/bench20b.log" 2>&1
      echo "== $stage rc=$?"; tail -n 40 "$OUT/bench20b.log" ;;
    big)
      df -h /dev/shm /tmp | tail -n 2; free -g | head -n 2
      rm -rf /dev/shm/gpt_oss_c-bench-*
      timeout 500 python3 bench/big_models.py 20b 120b > "$OUT/big_models.log" 2>&1; tail -n 6 "$OUT/big_models.log" ;;
    kcheck|kbench)
      use_bench_binary
      if [ "$stage" = kcheck ]; then
        timeout 150 python3 bench/cuda_kernels.py --check > "$OUT/kcheck.log" 2>&1; echo "== kcheck rc=$?"
        grep -E "FAIL" "$OUT/kcheck.log" | head -20; tail -n 2 "$OUT/kcheck.log"
        GPT_OSS_C_FORCE_PORTABLE=1 timeout 150 python3 bench/cuda_kernels.py --check > "$OUT/kcheck_portable.log" 2>&1
        echo "== kcheck portable rc=$?"; grep -E "FAIL" "$OUT/kcheck_portable.log" | head -10
      else
        timeout 300 python3 bench/cuda_kernels.py --out "$OUT" > "$OUT/kbench.log" 2>&1; echo "== kbench rc=$?"
        cat "$OUT/kbench.log" | cut -c1-110 | head -60
      fi ;;
    sanitize)
      # memcheck over the kernel tests (minus the deliberate out-of-memory test, whose failed cudaMalloc
      # the tool counts as an error), racecheck over the small-shape tests of the shared-memory kernels.
      # Neither runs the tests that rerun others in a child process (knob variants): under the tool
      # they ran past the time limit (session 6).
      timeout 200 compute-sanitizer --tool memcheck --print-limit 20 python3 -m pytest -q -p no:cacheprovider \
        tests/python/test_cuda_backend.py tests/python/test_cuda_moe_dense.py tests/python/test_fused_ops.py \
        -k "cuda and not out_of_memory and not child_process" > "$OUT/sanitize_memcheck.log" 2>&1
      echo "== memcheck rc=$?: $(grep -E 'ERROR SUMMARY|passed|failed' "$OUT/sanitize_memcheck.log" | tail -n 2 | tr '\n' ' ')"
      timeout 150 compute-sanitizer --tool racecheck --print-limit 20 python3 -m pytest -q -p no:cacheprovider \
        tests/python/test_cuda_moe_dense.py tests/python/test_fused_ops.py \
        -k "cuda and moe and not 20b and not 120b and not 2048 and not 2880 and not 600 and not child_process" > "$OUT/sanitize_racecheck.log" 2>&1
      echo "== racecheck rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|passed|failed' "$OUT/sanitize_racecheck.log" | tail -n 2 | tr '\n' ' ')" ;;
    opcost)
      # What each op costs inside the graph-replayed decode step (bench/op_cost.py: decode with one op
      # family skipped at a time), at batch 1 and 64.
      synthetic_20b
      timeout 200 python3 bench/op_cost.py /dev/shm/gpt_oss_c-bench-20b-hf > "$OUT/opcost_b1.log" 2>&1
      echo "== opcost batch 1 rc=$?"; cat "$OUT/opcost_b1.log" | tail -n 14
      timeout 240 python3 bench/op_cost.py /dev/shm/gpt_oss_c-bench-20b-hf --batch 64 --runs 2 > "$OUT/opcost_b64.log" 2>&1
      echo "== opcost batch 64 rc=$?"; cat "$OUT/opcost_b64.log" | tail -n 16 ;;
    kab)
      # Kernel-bench A/B: KAB_ARGS are the cuda_kernels arguments ("10 dense", "20 moe:1"), KAB_AB lists
      # environment settings, one run each ("-": the defaults), e.g. KAB_AB="- GPT_OSS_C_DENSE_WGMMA=0".
      use_bench_binary
      for ab in ${KAB_AB:--}; do
        echo "== kab $ab: ${KAB_ARGS:-20 moe:1}"
        with_env "$ab" timeout 120 build/bench/cuda_kernels ${KAB_ARGS:-20 moe:1} 2>&1 | tee -a "$OUT/kab.log" |
          grep -v '"device"' | cut -c1-150
      done ;;
    quick)
      # Whole-model numbers in a minute (decode at batch 1 three times, at 8K context, batch 8 and 64,
      # prefill of 2048 tokens),
      # for an A/B: QUICK_AB lists environment settings, one run each ("-": the defaults).
      synthetic_20b
      for ab in ${QUICK_AB:--}; do
        with_env "$ab" timeout 90 python3 -c "
import gpt_oss_c
from gpt_oss_c.bench import bench_batch, bench_decode, bench_prefill
m = gpt_oss_c.load('/dev/shm/gpt_oss_c-bench-20b-hf', device='cuda', max_context=8192 + 512, max_batch=64)
print('$ab decode', [round(bench_decode(m, 128, 256), 1) for _ in range(3)], '8K', round(bench_decode(m, 8192, 128, seed=3), 1),
      'batch8', round(bench_batch(m, 8), 1), 'batch64', round(bench_batch(m, 64), 1), 'prefill2048', round(bench_prefill(m, 2048)))
" 2>&1 | tail -n 1
      done ;;
    ncu_step)
      # Every kernel of a few graph-free decode steps (batch 1, then batch 64) under Nsight Compute,
      # one metric (its duration): where a step's time goes, kernel by kernel.
      synthetic_20b
      for w in decode batch; do
        GPT_OSS_C_NO_GRAPHS=1 timeout 200 ncu --csv --print-units base --clock-control none --cache-control none --metrics gpu__time_duration.sum --launch-skip 3000 --launch-count 700 \
          python3 bench/profile_ops.py /dev/shm/gpt_oss_c-bench-20b-hf $w > "$OUT/ncu_step_$w.csv" 2> "$OUT/ncu_step_$w.err"
        echo "== ncu_step $w rc=$?"
        python3 bench/ncu_step_summary.py "$OUT/ncu_step_$w.csv" | tee "$OUT/ncu_step_$w.txt" | head -n 24
        gzip -f "$OUT/ncu_step_$w.csv"
      done ;;
    ncu_src)
      # One kernel family of the kernel bench under ncu --set full with SASS source counters
      # (bench/ncu_source_summary.py: instructions by execution count, the most stalled lines).
      # NCU_KERNEL: kernel-name regex; NCU_ARGS: the kernel-bench arguments (caches flushed per kernel).
      use_bench_binary
      timeout 240 ncu --clock-control none --set full -k "regex:${NCU_KERNEL:-moe_stream}" --launch-count ${NCU_COUNT:-2} \
        -o "$OUT/ncu_src" build/bench/cuda_kernels ${NCU_ARGS:-1 moe:1} > "$OUT/ncu_src_run.log" 2>&1
      echo "== ncu_src rc=$?"
      ncu --import "$OUT/ncu_src.ncu-rep" --page details > "$OUT/ncu_src_details.txt" 2>&1
      ncu --import "$OUT/ncu_src.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu_src.csv" 2>> "$OUT/ncu_src_run.log"
      python3 bench/ncu_source_summary.py "$OUT/ncu_src.csv" --top 10 | tee "$OUT/ncu_src_summary.txt" | head -n 60
      gzip -f "$OUT/ncu_src.csv"; rm -f "$OUT/ncu_src.ncu-rep" ;;
    ncu_prefill)
      # The prefill MoE (T = 2048, 20b shapes: the register-operand wgmma GEMM) under Nsight Compute:
      # is it tensor-, L2- or issue-bound? (kernel bench: 1155 us per layer on the H200.)
      use_bench_binary
      timeout 150 ncu --clock-control none -k regex:moe_wgmma_rs --launch-count 2 --section SpeedOfLight \
        --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section Occupancy --section SchedulerStats \
        --section WarpStateStats --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio \
        build/bench/cuda_kernels 1 moe:2048 > "$OUT/ncu_prefill.log" 2>&1
      echo "== ncu prefill rc=$?"; grep -E "moe_wgmma|Duration|DRAM Throughput|L2 Cache Throughput|L1/TEX Cache|Compute \(SM\)|Issued Warp|Tensor|Achieved Occupancy" "$OUT/ncu_prefill.log" | head -30
      grep stalled "$OUT/ncu_prefill.log" | awk '$NF+0 > 0.3' | head -20 ;;
  esac
done
# At most 8 files come back from a call: pack the logs into one archive, named after this run's
# stages and numbered when the same stage list ran before in this call (it would overwrite it).
# A run whose stages wrote no log (quick) leaves no archive, and that is not a failure.
pack_logs() {
  cd "$OUT" && ls *.log >/dev/null 2>&1 || return 0
  local name="logs_$(IFS=_; echo "$*")" n=""
  while [ -e "$name$n.tgz" ]; do n=$((${n:-1} + 1)); done
  tar czf "$name$n.tgz" *.log && rm -f *.log
}
(pack_logs "$@")
