// radint batched peak-fitting kernel: one thread fits one (lineout, job). All arithmetic is in
// fit.cuh, which the CPU test suite compiles with g++ and checks against the Rust fitter
// (tests/gpu_harness/fit_harness.cpp); this file only maps threads to jobs.
//
// Jobs (ROIs and their peaks) are planned once on the host by the Rust planner
// (radint._core.fit_plan) and are the same for every lineout, so a launch fits
// n_curves × n_jobs independent problems straight from the integrated lineouts on the device.
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
                                       double* values, double* errors, rf_u8* status,
                                       rf_u32* iterations) {
    const unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (unsigned long long)n_curves * n_jobs) return;
    const rf_u32 curve = rf_u32(t / n_jobs), job = rf_u32(t % n_jobs);
    const rf_u32 p0 = peak_start[job];
    rf_u32 fidx[RF_MAX_ROI];
    RfWork w;
    const unsigned long long row = (unsigned long long)curve * n_slots;
    rf_fit_job(x, lineouts + (unsigned long long)curve * n_x, job_lo[job], job_hi[job],
               peak_slot + p0, peak_index + p0, peak_lo + p0, peak_hi + p0,
               int(peak_start[job + 1] - p0), bin, bin_average,
               max_iterations, max_peaks_per_job, ftol, xtol, fidx, w, values + row * RF_ROW,
               errors + row * RF_ROW, status + row, iterations + row);
}
