//! radint-core: the numerical heart of radint, free of Python.
//!
//! MIDAS parameter files ([`params`]), detector geometry ([`geometry`]), exact pixel splitting into
//! a CSR [`map::DetectorMap`], MIDAS `Map.bin` files ([`midas_files`]), CSR integration
//! ([`integrate`]), peak fitting, a parallel byte copy for GPU staging ([`copy`]) and marker-value counts ([`scan`]); [`tiles`] lays a map out for the gather kernels.

// `!(x > 0.0)` is deliberate: it is true for NaN too. Index loops mirror the CSR formulas.
#![allow(clippy::neg_cmp_op_on_partial_ord, clippy::needless_range_loop)]
// Test vectors are quoted with all the digits their sources give.
#![cfg_attr(test, allow(clippy::excessive_precision))]

pub mod bins;
pub mod bitshuffle;
pub mod copy;
pub mod error;
pub mod fit;
pub mod gather;
pub mod geometry;
pub mod integrate;
pub mod map;
pub mod midas_files;
pub mod panels;
pub mod params;
pub mod polygon;
pub mod runs;
pub mod scan;
pub mod storage;
pub mod tiles;

pub use error::{Error, Result};

/// A small deterministic generator for the unit tests (Knuth's MMIX LCG, high bits).
#[cfg(test)]
pub(crate) fn test_rng(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    }
}
