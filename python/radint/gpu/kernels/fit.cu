// radint batched peak-fitting kernel: one warp fits one (lineout, job). All arithmetic is in
// fit.cuh, which the CPU test suite compiles with g++ and checks against the Rust fitter
// (tests/gpu_harness/fit_harness.cpp, a team of one thread); this file only maps warps to jobs
// and hands each warp its slice of the block's dynamic shared memory (rf_scratch_bytes each).
//
// Jobs (ROIs and their peaks) are planned once on the host by the Rust planner
// (radint._core.fit_plan) and are the same for every lineout, so a launch fits
// n_curves × n_jobs independent problems straight from the integrated lineouts on the device.
// Why a warp per job: a thread per job left the device nearly idle (10 000 fits are 313 warps
// on 132 SMs), its lanes diverged with their fits' iteration counts, and each thread kept ~19 KB
// of normal equations in local memory.
#include "fit.cuh"

extern "C" __global__ void rf_fit_jobs(const double* __restrict__ x,
                                       const double* __restrict__ lineouts, rf_u32 n_x,
                                       rf_u32 n_curves, const rf_u32* __restrict__ job_lo,
                                       const rf_u32* __restrict__ job_hi,
                                       const rf_u32* __restrict__ peak_start,
                                       const rf_u32* __restrict__ peak_slot,
                                       const rf_u32* __restrict__ peak_index,
                                       const rf_u32* __restrict__ peak_lo,
                                       const rf_u32* __restrict__ peak_hi, rf_u32 n_jobs,
                                       rf_u32 n_slots, double bin, int bin_average, int max_iterations,
                                       int max_peaks_per_job, double ftol, double xtol,
                                       int max_params, int max_roi,
                                       unsigned long long scratch_bytes, double* values,
                                       double* errors, rf_u8* status, rf_u32* iterations) {
    extern __shared__ double rf_shared[];
    const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const unsigned long long t = (unsigned long long)blockIdx.x * (blockDim.x / 32) + warp;
    if (t >= (unsigned long long)n_curves * n_jobs) return;  // the whole warp
    const rf_u32 curve = rf_u32(t / n_jobs), job = rf_u32(t % n_jobs);
    const rf_u32 p0 = peak_start[job];
    const int n_peaks = int(peak_start[job + 1] - p0);
    const unsigned long long row = (unsigned long long)curve * n_slots;
    if (rf_scratch_bytes(max_params, max_roi, RF_TEAM) > scratch_bytes ||
        max_params > RF_MAX_PARAMS || max_roi > RF_MAX_ROI) {
        // The launcher sized the scratch for another layout: the CPU fits these jobs.
        for (int k = lane; k < n_peaks; k += 32) {
            status[row + peak_slot[p0 + k]] = RF_CPU_FALLBACK;
            iterations[row + peak_slot[p0 + k]] = 0;
        }
        return;
    }
    const RfScratch s = rf_scratch(reinterpret_cast<unsigned char*>(rf_shared) + warp * scratch_bytes,
                                   max_params, int(lane));
    rf_fit_job(x, lineouts + (unsigned long long)curve * n_x, job_lo[job], job_hi[job],
               peak_slot + p0, peak_index + p0, peak_lo + p0, peak_hi + p0, n_peaks, bin,
               bin_average, max_iterations, max_peaks_per_job, ftol, xtol, max_roi, s,
               values + row * RF_ROW, errors + row * RF_ROW, status + row, iterations + row);
}
