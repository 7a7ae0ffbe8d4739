// Host C++ driver for python/radint/gpu/kernels/fit.cuh: runs rf_fit_job for every
// (lineout, job) as the rf_fit_jobs kernel's warps do, with a team of one thread (RF_TEAM 1,
// the same sums in the same order), so tests/test_gpu_fit.py can compare the GPU fitter's
// arithmetic with the Rust fitter without a GPU. Built by the test with g++ into a shared
// library and called through ctypes.
#include <vector>

#include "fit.cuh"

extern "C" int rf_fit_jobs_host(const double* x, const double* lineouts, rf_u32 n_x,
                                rf_u32 n_curves, const rf_u32* job_lo, const rf_u32* job_hi,
                                const rf_u32* peak_start, const rf_u32* peak_slot,
                                const rf_u32* peak_index, const rf_u32* peak_lo,
                                const rf_u32* peak_hi, rf_u32 n_jobs, rf_u32 n_slots,
                                double bin, int bin_average, int max_iterations, int max_peaks_per_job,
                                double ftol, double xtol, double* values, double* errors,
                                rf_u8* status, rf_u32* iterations) {
    static thread_local std::vector<double> scratch(
        rf_scratch_bytes(RF_MAX_PARAMS, RF_MAX_ROI, RF_TEAM) / sizeof(double));
    const RfScratch s = rf_scratch(scratch.data(), RF_MAX_PARAMS, 0);
    for (rf_u32 curve = 0; curve < n_curves; ++curve) {
        for (rf_u32 job = 0; job < n_jobs; ++job) {
            const rf_u32 p0 = peak_start[job];
            const unsigned long long row = (unsigned long long)curve * n_slots;
            rf_fit_job(x, lineouts + (unsigned long long)curve * n_x, job_lo[job], job_hi[job],
                       peak_slot + p0, peak_index + p0, peak_lo + p0, peak_hi + p0,
                       int(peak_start[job + 1] - p0), bin, bin_average, max_iterations,
                       max_peaks_per_job, ftol, xtol, RF_MAX_ROI, s, values + row * RF_ROW,
                       errors + row * RF_ROW, status + row, iterations + row);
        }
    }
    return 0;
}

// The scratch a warp's job needs, for tests/test_gpu_fit.py to check the launcher's formula.
extern "C" unsigned long long rf_scratch_bytes_host(int max_params, int max_roi, int team) {
    return rf_scratch_bytes(max_params, max_roi, team);
}
