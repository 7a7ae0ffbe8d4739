#!/usr/bin/env bash
# Every GPU check of issues 8 and 9 in one call on a GPU machine (the `device` tool's `run`:
# device time is scarce and each call pays the machine's start): environment, the GPU tests,
# each kernel's registers / local memory, benches/gpu.py, benches/gpu_profile.py (plain and under
# Nsight Compute), the CLI, compute-sanitizer (the fitter also for shared-memory races), Nsight
# Compute on the fitter, and the CUDA stream benchmark. Each step has its
# own time limit and appends to $OUT/steps.log, so a slow step never loses the others.
#
# The machine has Python 3.12 with CuPy, torch, h5py, tifffile, rich and pytest, no Rust and no
# network. Prepare here first (see benches/README.md, "GPU integration"):
#   bash benches/gpu_device.sh --prepare      # abi3 wheel + zarr and midas-integrate into .whl/
# then call run(command="bash benches/gpu_device.sh", carry=[".whl"], timeout_s=420).
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
    rm -rf .whl && mkdir .whl
    maturin build --release -q -o .whl || exit 1
    # hdf5plugin (46 MB) stays behind: radint and midas-integrate import it only when needed.
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl zarr==3.1.6 numcodecs==0.16.6 \
        donfig==0.8.1.post1 google-crc32c==1.9.0 midas-integrate==0.9.0 \
        midas-distortion==0.2.0 midas-params==0.14.0 || exit 1
    du -sh .whl
    exit 0
fi

OUT=${OUT:-/tmp/radint-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# Few files come back from the device tool: every step appends to one log.
LOG=$OUT/steps.log

step() {  # step NAME SECONDS COMMAND...: run with a limit, append to $LOG
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit} s)" | tee -a "$LOG"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "=== $name: rc ${PIPESTATUS[0]}, $((SECONDS - t0)) s" | tee -a "$LOG"
}

step env 90 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total \
    --format=csv; python3 -c "
import cupy, radint
from radint.gpu import cuda_available
print(\"radint\", radint.__version__, radint.__file__)
print(\"cupy\", cupy.__version__, \"cuda_available:\", cuda_available())
import time
from radint.gpu import _module, cupy_nvrtc_options
print(\"nvrtc options:\", cupy_nvrtc_options())
for name, kernel in ((\"integrate\", \"ri_lineout\"), (\"fit\", \"rf_fit_jobs\")):
    t = time.perf_counter()
    _module(0, name).get_function(kernel)
    print(name, \"compiled and loaded in\", round(time.perf_counter() - t, 1), \"s\")"'

step pytest-gpu 150 python3 -m pytest -q -p no:cacheprovider --import-mode=importlib -rs \
    --timeout 90 tests/test_gpu.py tests/test_gpu_fit.py \
    tests/test_azimuthal_error.py::test_cuda_spread_equals_the_cpu

step bench-gpu 150 python3 benches/gpu.py --markdown --frames 64 --reps 5

step profile 90 python3 benches/gpu_profile.py

# Per-kernel device time and DRAM bytes (Nsight Compute reads the counters on this machine).
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
step ncu 120 "$NCU" --clock-control none --csv --log-file "$OUT/ncu.csv" --metrics \
    gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
    python3 benches/gpu_profile.py --kernels-only
step ncu-summary 20 python3 benches/ncu_summary.py "$OUT/ncu.csv"
# Why the CSR kernels run below the memory limit: occupancy, stall reasons, memory traffic (the
# warm-up pass skipped; then one frame, 8 frames interleaved + in lanes, 8 frames lane-split).
step ncu-csr 150 "$NCU" --clock-control none -k regex:'ri_csr|ri_interleave' --launch-skip 2 --launch-count 4 \
    --section SpeedOfLight --section Occupancy --section SchedulerStats \
    --section WarpStateStats --section MemoryWorkloadAnalysis \
    python3 benches/gpu_profile.py --kernels-only

# The CLI end to end on the bundled frames, CUDA against CPU (every float dataset compared).
step cli-cuda 60 bash -c 'for b in cpu cuda; do python3 -c "import sys; from radint.cli import main; \
    sys.exit(main())" integrate examples/parameters.txt examples/ceo2_pilatus.tif -o /tmp/cli-$b \
    --backend $b --format nexus,xy --compression gzip || exit 1; done'
step cli-compare 30 python3 - <<'PYEOF'
import h5py
import numpy as np

def datasets(b):
    out = {}
    with h5py.File(f"/tmp/cli-{b}/ceo2_pilatus.h5") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset)
                     and o.dtype.kind == "f" and o.size > 1 else None)
    return out

c, g = datasets("cpu"), datasets("cuda")
for k in sorted(c):
    if k in g and c[k].shape == g[k].shape:
        a, b = c[k], g[k]
        both = np.isfinite(a) & np.isfinite(b)
        rel = (np.abs(a[both] - b[both]).max() / max(np.abs(a[both]).max(), 1e-300)
               if both.any() else 0.0)
        bad = int((np.isfinite(a) != np.isfinite(b)).sum())
        print(f"{k:60} nan-mismatch {bad:5}  max rel {rel:.2e}")
PYEOF

# Out-of-bounds and uninitialised accesses in the kernels, on small maps.
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
    /opt/nvidia/*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
step sanitizer 90 "$SAN" --tool memcheck --error-exitcode 9 python3 -m pytest -q -x \
    -p no:cacheprovider --import-mode=importlib tests/test_gpu.py -k "rules_on_random or staging"

# The fitting kernel (a warp per job, its scratch in shared memory): out-of-bounds accesses,
# shared-memory races between a warp's lanes, __syncwarp misuse; then its occupancy and stalls.
step sanitize-fit 90 bash -c "for tool in memcheck racecheck synccheck; do echo \"-- \$tool\"; \
    '$SAN' --tool \$tool --error-exitcode 9 python3 benches/gpu_fit_small.py --lineouts 50 \
    || exit \$?; done"
step ncu-fit 60 "$NCU" --clock-control none -k regex:rf_fit --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats \
    --section WarpStateStats python3 benches/gpu_fit_small.py --lineouts 1000

step bench-stream-cuda 60 python3 benches/stream.py --backend cuda --frames 300 --rounds 2
# The same over 4 sender connections (one connection's receive copy may cap the stream).
step bench-stream-cuda-4 60 python3 benches/stream.py --backend cuda --frames 300 --rounds 2 \
    --connections 4
step tcp-receive 60 bash -c 'for n in 1 2 4 8; do python3 benches/tcp_receive.py --frames 400 \
    --connections $n; done'

# Per-thread local memory times resident threads is what the driver reserves on first launch.
step kernel-attrs 40 python3 - <<'PYEOF'
import cupy
from radint.gpu import _module

names = [f"ri_csr{k}_{t}_{a}" for k in ("", "_lanes")
         for t in ("u8", "u16", "u32", "i32", "i64", "f32", "f64")
         for a in ("f64", "f32")] + ["ri_interleave_u32", "ri_cross_u32", "ri_lineout"]
dev = cupy.cuda.Device(0)
resident = dev.attributes["MultiProcessorCount"] * dev.attributes["MaxThreadsPerMultiProcessor"]
for module, kernels in (("integrate", names), ("fit", ["rf_fit_jobs"])):
    mod = _module(0, module)
    for name in kernels:
        a = mod.get_function(name).attributes
        local = a["local_size_bytes"]
        print(f"{name:24} regs {a['num_regs']:3}  local {local:6} B  shared "
              f"{a['shared_size_bytes']:6} B  max threads/block {a['max_threads_per_block']:4}  "
              f"local reservation {local * resident / 2**30:.2f} GiB")
free, total = cupy.cuda.runtime.memGetInfo()
print(f"device memory after loading both modules: {(total - free) / 2**30:.2f} GiB in use")
PYEOF
ls -la "$OUT"
