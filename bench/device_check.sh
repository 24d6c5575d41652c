#!/usr/bin/env bash
# The GPU checks and measurements still owed (written 2026-12-07 when the session's device time ran out), one
# part per device call (each fits the 600 s limit). Run from the repo root on the GPU machine, with
# carry [".refkit/wheels", ".shared", "bench/.pipeline_data"] (+ ".shared_extra" for `tests`; + ".refkit/ray",
# ".refkit/rayroot" for `bench` and `verify`,
# + ".refkit/reference_src.tar.xz" for `sparse`); results and logs under $OUT.
#
#   bash bench/device_check.sh tests    # every GPU test (gpu-marked and skipif-CUDA), most recently changed first
#   bash bench/device_check.sh bench    # image -> GLB (issue 16), budgets + DINOv3 8-bit (23), Ray on one GPU (24)
#   bash bench/device_check.sh sparse   # the new sparse-conv kernels against FlexGEMM (19)
#   bash bench/device_check.sh verify   # after the first three: e2e, GPU tests of what changed since, Ray
#   bash bench/device_check.sh reference  # the reference's to_glb built and timed beside ours (see the mode)
#   bash bench/device_check.sh final    # GPU tests of the changes after 19:42 on 2026-12-07, sparse bench, e2e
#
# Helpers' uncommitted work travels with the working tree: run from a snapshot of HEAD, e.g. here
#   git archive HEAD omnivox tests bench | tar -x -C .headsnap   (an ignored folder; carry it)
# and start the device command with
#   cp -r .headsnap/omnivox/. omnivox/ && cp -r .headsnap/tests/. tests/ && cp -r .headsnap/bench/. bench/
#
# Recreate the ignored inputs here first if they are gone: python bench/reference_kit.py wheels|ray|pack|shared,
# python bench/bench_pipelines.py prepare, python bench/bench_data_ray.py prepare --root .refkit/rayroot --under mesh.
set -u
T0=$(date +%s)
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .refkit/wheels/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p ../shared && cp -r .shared/* ../shared/ && { [ ! -d .shared_extra ] || cp -r .shared_extra/* ../shared/; }
step() { echo "$1 rc=$2 t=$(( $(date +%s) - T0 ))" | tee -a "$OUT/steps.log"; }
# A pytest -k expression selecting the GPU tests of these files: the `gpu` marker, or a skip without CUDA.
gpu_tests() {
  echo "gpu or $(grep -rn -A2 "skipif(not torch.cuda.is_available()" "$@" --include=*.py | grep "def test" \
    | sed 's/.*def \(test[a-z0-9_]*\).*/\1/' | sort -u | paste -sd' ' | sed 's/ / or /g')"
}

case "${1:-tests}" in
tests)
  # Most recently changed first, so a call cut by its time limit has run those.
  files="tests/ovoxel/test_collapse.py tests/ovoxel/test_export.py tests/ovoxel/test_distance_kernel.py
    tests/sparse/kernels/test_sparse_submconv_kernels.py tests/pipelines/test_pipelines_gpu.py tests/ovoxel/test_game.py
    tests/pipelines/test_memory.py tests/pipelines/test_multiview.py tests/models/test_quantize.py
    tests/models/test_block_kernels.py tests/models/test_flow_fused.py tests/models/test_flow_fast.py
    tests/models/test_models_gpu.py tests/ovoxel/test_gpu.py tests/ovoxel/test_atlas.py tests/ovoxel/test_materials.py
    tests/ovoxel/test_serialize.py tests/ovoxel/test_reference_parity.py tests/render/test_rasterize.py
    tests/test_preview.py tests/data/test_gpu.py tests/train/test_trainer_gpu.py"
  timeout 560 python -m pytest -v -rs -p no:cacheprovider $files -k "$(gpu_tests tests)" > "$OUT/gputests.log" 2>&1
  step gputests $?
  grep -E "FAILED|ERROR" "$OUT/gputests.log" | head -30
  echo "passed $(grep -c ' PASSED' "$OUT/gputests.log"), skipped $(grep -c ' SKIPPED' "$OUT/gputests.log")"
  tail -2 "$OUT/gputests.log"
  ;;
bench)
  timeout 150 python bench/bench_end_to_end.py run --out "$OUT/e2e" --types 512 1024_cascade --repeats 2 \
    --skip-own > "$OUT/e2e.log" 2>&1
  step e2e $?
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout 150 python bench/bench_memory.py run --out "$OUT/mem" \
    --sections encoder budgets --configs int8:512:6GB int8:1024_cascade:8GB > "$OUT/mem.log" 2>&1
  step memory $?
  tar -xJf .refkit/ray/ray_core.tar.xz -C /tmp/site \
    && chmod +x /tmp/site/ray/core/src/ray/gcs/gcs_server /tmp/site/ray/core/src/ray/raylet/raylet \
    && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .refkit/ray/*.whl >/dev/null 2>&1
  timeout 200 python bench/bench_data_ray.py gpu --root .refkit/rayroot --views 8 --out "$OUT/ray_gpu.json" \
    > "$OUT/ray.log" 2>&1
  step ray $?
  grep -E "summary" "$OUT/e2e.log" | cut -c1-400
  grep -E "budgets|image_cond" "$OUT/mem.log" | cut -c1-400
  grep -E "engine|Error" "$OUT/ray.log" | tail -14
  ;;
sparse)
  (MAX_JOBS=12 timeout 200 bash bench/build_reference.sh flexgemm > "$OUT/build.log" 2>&1; step build $?) &
  TRITON_CACHE_DIR=/tmp/tc_tests timeout 170 python -m pytest -q -p no:cacheprovider tests/sparse -m gpu -rs \
    > "$OUT/sparse_tests.log" 2>&1
  step sparse_tests $?
  wait
  left=$(( 560 - ($(date +%s) - T0) ))
  PYTHONPATH=/tmp/refsite:$PYTHONPATH TRITON_CACHE_DIR=/tmp/tc_bench timeout $left python bench/bench_sparse.py \
    --vs-flexgemm --levels 3 --sweep --time-budget $(( left - 80 )) --out "$OUT/vs_flexgemm.md" > "$OUT/bench.log" 2>&1
  step sparse_bench $?
  tail -4 "$OUT/sparse_tests.log"
  grep -E '^\|' "$OUT/vs_flexgemm.md"
  ;;
verify)
  # The changes made after the 16:15-16:41 runs, in one call (carry wheels, .shared, pipeline_data; + .refkit/ray,
  # .refkit/rayroot for the Ray step, which runs last on what is left of VERIFY_BUDGET, default 480 s).
  # image -> GLB twice in two processes: the second one's first image is "a fresh process, disk caches warm".
  left() { echo $(( ${VERIFY_BUDGET:-480} - ($(date +%s) - T0) )); }
  for run in 1 2; do
    timeout 90 python bench/bench_end_to_end.py run --out "$OUT/e2e$run" --types 512 1024_cascade --repeats 2 \
      --skip-own > "$OUT/e2e$run.log" 2>&1
    step e2e$run $?
    grep -E "summary" "$OUT/e2e$run.log" | cut -c1-420
  done
  timeout 200 python bench/bench_end_to_end.py run --out "$OUT/e2e1536" --types 1536_cascade --repeats 2 \
    --skip-own > "$OUT/e2e1536.log" 2>&1
  step e2e1536 $?
  grep -E "summary" "$OUT/e2e1536.log" | cut -c1-420
  timeout 100 python -m pytest -q -p no:cacheprovider -rs -m gpu tests/ovoxel/test_collapse.py \
    tests/ovoxel/test_export.py "tests/pipelines/test_pipelines_gpu.py::test_cuda_run_matches_cpu_run" \
    > "$OUT/verify_tests.log" 2>&1
  step tests $?
  grep -E "FAILED|ERROR" "$OUT/verify_tests.log" | head; tail -1 "$OUT/verify_tests.log"
  [ -d .refkit/ray ] && [ "$(left)" -gt 30 ] || exit 0
  tar -xJf .refkit/ray/ray_core.tar.xz -C /tmp/site \
    && chmod +x /tmp/site/ray/core/src/ray/gcs/gcs_server /tmp/site/ray/core/src/ray/raylet/raylet \
    && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .refkit/ray/*.whl >/dev/null 2>&1
  timeout $(left) python bench/bench_data_ray.py gpu --root .refkit/rayroot --views 8 --out "$OUT/ray_gpu.json" \
    > "$OUT/ray.log" 2>&1
  step ray $?
  grep -E "engine|Error" "$OUT/ray.log" | tail -14 | cut -c1-200
  ;;
final)
  # The session's last call (carry wheels, .shared, .shared_extra, pipeline_data): GPU tests of what changed after
  # the 19:24-19:42 runs (pipeline budget, the sparse backward, the CPU clean-up kernels the GPU path shares), the
  # sparse bench (ours; FlexGEMM's first calls take 24-69 s per level, more than this call has), image -> GLB again.
  files="tests/pipelines/test_memory.py tests/pipelines/test_pipelines_gpu.py tests/ovoxel/test_export.py
    tests/ovoxel/test_collapse.py tests/ovoxel/test_atlas.py"
  TRITON_CACHE_DIR=/tmp/tc_tests timeout 150 python -m pytest -q -p no:cacheprovider -rs tests/sparse -m gpu \
    > "$OUT/sparse_tests.log" 2>&1
  step sparse_tests $?
  timeout 120 python -m pytest -q -p no:cacheprovider -rs $files -k "$(gpu_tests $files)" > "$OUT/gputests.log" 2>&1
  step gputests $?
  for log in sparse_tests gputests; do grep -E "FAILED|ERROR" "$OUT/$log.log" | head -10; tail -1 "$OUT/$log.log"; done
  TRITON_CACHE_DIR=/tmp/tc_bench timeout 100 python bench/bench_sparse.py --vs-flexgemm --levels 5 \
    --out "$OUT/bwd_overhead.md" > "$OUT/sparse_bench.log" 2>&1
  step sparse_bench $?
  grep -E '^\|' "$OUT/bwd_overhead.md" | cut -c1-400
  timeout 110 python bench/bench_end_to_end.py run --out "$OUT/e2e" --types 512 1024_cascade --repeats 4 \
    --skip-own > "$OUT/e2e.log" 2>&1
  step e2e $?
  grep -E "summary" "$OUT/e2e.log" | cut -c1-420
  ;;
reference)
  # The reference's to_glb against ours on the same 1024^3 (then 512^3) surface, same run (carry wheels, .shared,
  # .shared_extra, .refkit/reference_src.tar.xz, .refkit/inputs). The GPU tests of code changed since the last
  # full test call run while the reference builds (nvcc keeps the CPUs busy: no timing is taken then).
  (BUILD_TIMEOUT=460 bash bench/build_reference.sh flexgemm cumesh nvdiffrast o_voxel > "$OUT/build.log" 2>&1
   step build $?) &
  files="tests/train/test_trainer_gpu.py tests/models/test_flow_fast.py tests/pipelines/test_memory.py
    tests/ovoxel/test_distance_kernel.py tests/ovoxel/test_atlas.py tests/ovoxel/test_game.py tests/models/test_models_gpu.py"
  timeout 420 python -m pytest -q -p no:cacheprovider -rs $files -k "$(gpu_tests $files)" > "$OUT/gputests.log" 2>&1
  step gputests $?
  grep -E "FAILED|ERROR" "$OUT/gputests.log" | head -20; tail -1 "$OUT/gputests.log"
  wait
  grep -E " ok | failed|import " "$OUT/build.log"
  left=$(( 585 - ($(date +%s) - T0) ))
  PYTHONPATH=/tmp/refsite:$PYTHONPATH timeout $left python bench/bench_reference_export.py --out "$OUT" \
    --assets spot_1024 spot_512 --configs ours ref-ovox2glb ref-app --repeats 1 --budget-s $(( left - 150 )) \
    > "$OUT/reference_export.log" 2>&1
  step reference_export $?
  grep -E '^\||^#' "$OUT/reference_export.log" | cut -c1-400
  ;;
*)
  echo "usage: bash bench/device_check.sh tests|bench|sparse|verify|reference|final" >&2
  exit 2
  ;;
esac
