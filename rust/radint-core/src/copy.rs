//! Parallel byte copy, for staging frames into page-locked (pinned) host buffers before their
//! DMA to a GPU: one thread copies a few GB/s, well under a host→device link's ~50 GB/s, so the
//! CUDA backend's upload would otherwise be bound by a single-threaded `memcpy`.

use rayon::prelude::*;

/// Bytes per rayon task: large enough that task overhead is negligible, small enough that a
/// Pilatus frame (10 MB) spreads over a machine's cores.
const CHUNK: usize = 256 * 1024;

/// Copy `src` into `dst` (equal lengths) on the current rayon pool.
///
/// # Panics
/// If the lengths differ (the binding checks them first).
pub fn copy_parallel(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy_parallel: lengths differ");
    if src.len() <= CHUNK {
        dst.copy_from_slice(src);
        return;
    }
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_byte_at_any_length() {
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let src: Vec<u8> = (0..n).map(|i| (i * 131 % 251) as u8).collect();
            let mut dst = vec![0xAA; n];
            copy_parallel(&mut dst, &src);
            assert_eq!(dst, src, "length {n}");
        }
    }
}
