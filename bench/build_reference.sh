#!/usr/bin/env bash
# Build the reference's native extensions on the GPU machine, FOR MEASUREMENT ONLY (issues #16, #19).
#
# Run from the repo root on the device. Unpacks .refkit/reference_src.tar.xz (bench/reference_kit.py pack) to
# $REFSRC and installs FlexGEMM, CuMesh (+cubvh, xatlas) and nvdiffrast into $REFSITE with pip (no index, no
# build isolation, no deps), plus o-voxel's python package as plain files (its to_glb needs no o_voxel._C; the
# bench loads o_voxel/postprocess.py by path so o_voxel/__init__'s _C imports never run).
# The three builds run side by side; one failing does not stop the others. One line per package at the end.
# Logs: $OUT/build_<name>.log (or $REFSRC/logs when OUT is unset). Re-running skips packages already built.
#
#   bash bench/build_reference.sh            # all
#   bash bench/build_reference.sh flexgemm   # some
set -u

KIT=${KIT:-.refkit/reference_src.tar.xz}
REFSRC=${REFSRC:-/tmp/refsrc}
REFSITE=${REFSITE:-/tmp/refsite}
LOGS=${OUT:-$REFSRC/logs}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-540}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export BUILD_TARGET=cuda
export FLEX_GEMM_AUTOSAVE_AUTOTUNE_CACHE=0
PY=${PYTHON:-python3}
PACKAGES=("$@")
[ ${#PACKAGES[@]} -gt 0 ] || PACKAGES=(flexgemm cumesh nvdiffrast o_voxel)

mkdir -p "$REFSRC" "$REFSITE" "$LOGS"
if [ ! -f "$REFSRC/SOURCES.json" ]; then
  tar -xJf "$KIT" -C "$REFSRC" || { echo "build_reference: cannot unpack $KIT"; exit 2; }
fi
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
echo "# $(nvcc --version | tail -2 | head -1); $($PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1); arch $TORCH_CUDA_ARCH_LIST, MAX_JOBS $MAX_JOBS"

patch_sources() {
  # CCCL 3 (CUDA 13) dropped cub::Sum/Max/Min; CuMesh already guards its one use with CUDART_VERSION >= 12090.
  # Any other use left in a future snapshot gets the documented replacements.
  grep -rlE 'cub::(Sum|Max|Min)\(\)' "$REFSRC/cumesh/src" 2>/dev/null | while read -r f; do
    grep -q 'CUDART_VERSION >= 12090' "$f" && continue
    sed -i -e 's/cub::Sum()/::cuda::std::plus<>()/g' -e 's/cub::Max()/::cuda::maximum<>()/g' \
           -e 's/cub::Min()/::cuda::minimum<>()/g' -e '1i #include <cuda/functional>\n#include <cuda/std/functional>' "$f"
    echo "patched (cub functors): $f"
  done
  # FlexGEMM's setup.py merges its autotune cache into ~/.flex_gemm; keep that (released behaviour).
  # nvdiffrast builds with -lineinfo only; nothing to patch.
  :
}

build_one() {  # name dir
  local name=$1 dir=$2 log="$LOGS/build_$1.log" start=$SECONDS rc
  if [ -f "$REFSITE/.ok_$name" ]; then echo "$name ok (already built) 0"; return 0; fi
  ( cd "$dir" && timeout "$BUILD_TIMEOUT" $PY -m pip install -v --no-build-isolation --no-deps --no-index \
      --no-cache-dir --target "$REFSITE.$name" . ) >"$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    cp -a "$REFSITE.$name"/. "$REFSITE"/ && rm -rf "$REFSITE.$name" && touch "$REFSITE/.ok_$name"
    echo "$name ok $((SECONDS - start))"
  else
    echo "$name failed(rc=$rc) $((SECONDS - start)) -- $(grep -m1 -E 'error:|Error|error ' "$log" | cut -c1-200)"
  fi
}

build_cumesh() {  # CuMesh; if it fails inside the pinned Eigen, once more with the kit's Eigen master
  local line
  line=$(build_one cumesh "$REFSRC/cumesh")
  if [[ $line == "cumesh failed"* ]] && grep -q "third_party/eigen/Eigen" "$LOGS/build_cumesh.log" \
     && [ -d "$REFSRC/eigen-master/Eigen" ]; then
    echo "$line" | sed 's/^cumesh /cumesh(pinned-eigen) /'
    local eig="$REFSRC/cumesh/third_party/cubvh/third_party/eigen"
    mv "$eig" "$eig.pinned" && cp -a "$REFSRC/eigen-master" "$eig" && rm -rf "$REFSRC/cumesh/build"
    mv "$LOGS/build_cumesh.log" "$LOGS/build_cumesh_pinned_eigen.log"
    line=$(build_one cumesh "$REFSRC/cumesh")
    line="${line/cumesh /cumesh(eigen-master) }"
  fi
  echo "$line"
}

patch_sources
declare -A DIRS=([flexgemm]=$REFSRC/flexgemm [cumesh]=$REFSRC/cumesh [nvdiffrast]=$REFSRC/nvdiffrast)
RESULTS=$(mktemp)
for name in "${PACKAGES[@]}"; do
  case $name in
    o_voxel)
      start=$SECONDS
      rm -rf "$REFSITE/o_voxel" && cp -a "$REFSRC/trellis2/o-voxel/o_voxel" "$REFSITE/o_voxel" \
        && echo "o_voxel ok(python files only; _C not built) $((SECONDS - start))" >>"$RESULTS" \
        || echo "o_voxel failed $((SECONDS - start))" >>"$RESULTS" ;;
    cumesh)
      build_cumesh >>"$RESULTS" & ;;
    flexgemm|nvdiffrast)
      build_one "$name" "${DIRS[$name]}" >>"$RESULTS" & ;;
    *) echo "unknown package $name" >>"$RESULTS" ;;
  esac
done
wait
echo "## reference builds (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST) -> $REFSITE"
sort "$RESULTS"   # name, status, seconds[, first error line]
# Import check: each package loads its compiled module.
PYTHONPATH=$REFSITE${PYTHONPATH:+:$PYTHONPATH} $PY - <<'EOF'
import importlib
for mod in ("flex_gemm", "flex_gemm.ops.grid_sample", "cumesh", "nvdiffrast.torch"):
    try:
        importlib.import_module(mod)
        print(f"import {mod}: ok")
    except Exception as error:  # report, do not stop
        print(f"import {mod}: FAILED {type(error).__name__}: {str(error)[:200]}")
EOF
rm -f "$RESULTS"
