#!/usr/bin/env bash
# Profile the fourier kernel at 7B shapes (host time, torch profiler, ncu details, CUDA-graph timings).
# Text lands in $OUT/fourier_profile/. About 3 minutes on an H200:
#   [SHAPES="4096x4096 11008x4096"] [GRAPHS=0] bash scripts/device/profile_fourier.sh [TOKENS ...]
set -uo pipefail
export PYTHONPATH=$PWD/src
dir=$OUT/fourier_profile; mkdir -p "$dir"
cd scripts
sections="--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis --section InstructionStats --section MemoryWorkloadAnalysis --section SchedulerStats"
for t in "${@:-1 16 256}"; do
  python profile_fourier_kernel.py --tokens "$t" > "$dir/host_t$t.txt" 2>&1
  for shape in ${SHAPES:-4096x4096}; do
    # shellcheck disable=SC2086
    ncu --clock-control none -k 'regex:_fourier|polar_gemv|_weighted' --launch-skip 3 --launch-count 1 $sections \
      python profile_fourier_kernel.py --ncu --tokens "$t" --shape "$shape" > "$dir/ncu_t${t}_$shape.txt" 2>&1
  done
done
[ "${GRAPHS:-1}" = 0 ] || python bench_fourier_kernel.py --cudagraph --forms rfft --tokens "${@:-1 16 256}" --json "$dir/graph.json" > "$dir/graph.md" 2>&1
