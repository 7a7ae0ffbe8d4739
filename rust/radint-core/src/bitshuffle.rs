//! Bitshuffle/LZ4 chunks (HDF5 filter 32008, how Eiger/Dectris detectors store frames), decoded
//! with every length a chunk states checked against the chunk. The filter's own decoder trusts
//! the block sizes a chunk states: a damaged chunk made it read past the chunk's end and the
//! process died with a segfault, no file or frame named. Blocks decode in parallel, through the
//! C LZ4 library's bounds-checked `LZ4_decompress_safe`, and an SSE2 bit transpose on x86-64.

use crate::error::{Error, Result};
use rayon::prelude::*;
use std::os::raw::{c_char, c_int};

/// Bitshuffle works on blocks of a multiple of 8 elements; the last `n % 8` are stored as is.
const BLOCKED_MULT: usize = 8;

/// One block of a chunk: its LZ4 bytes and how many bytes they decode to.
struct Block<'a> {
    packed: &'a [u8],
    bytes: usize,
}

/// Decode one chunk into `out`, the raw bytes of its `out.len() / elem_size` elements.
///
/// The chunk is the filter's: a 12-byte big-endian header (the decoded size in bytes, the block
/// size in bytes), then per block a big-endian `u32` byte count and the LZ4 block of the block's
/// bit-transposed elements, then the last `n % 8` elements as they are.
pub fn decode_bitshuffle_lz4(chunk: &[u8], elem_size: usize, out: &mut [u8]) -> Result<()> {
    let damaged = |why: String| Error::Invalid(format!("damaged bitshuffle/LZ4 chunk: {why}"));
    if elem_size == 0 || !out.len().is_multiple_of(elem_size) {
        return Err(Error::Invalid(format!(
            "bitshuffle/LZ4: {} bytes are not whole elements of {elem_size} bytes",
            out.len()
        )));
    }
    let Some((total, block_bytes, mut rest)) = chunk
        .split_first_chunk::<8>()
        .and_then(|(total, after)| Some((total, after.split_first_chunk::<4>()?)))
        .map(|(total, (block, rest))| (total, block, rest))
    else {
        return Err(damaged(format!(
            "{} bytes, shorter than its 12-byte header",
            chunk.len()
        )));
    };
    let total = u64::from_be_bytes(*total);
    if total != out.len() as u64 {
        return Err(damaged(format!(
            "its header says {total} bytes, the frame has {}",
            out.len()
        )));
    }
    let mut block_bytes = u32::from_be_bytes(*block_bytes) as usize;
    if block_bytes == 0 {
        // bitshuffle's default block (bshuf_default_block_size), as its decoder takes a 0.
        block_bytes = (8192 / elem_size / BLOCKED_MULT * BLOCKED_MULT).max(128) * elem_size;
    }
    let block = block_bytes / elem_size;
    if block == 0 || !block_bytes.is_multiple_of(elem_size) || !block.is_multiple_of(BLOCKED_MULT) {
        return Err(damaged(format!(
            "block size {block_bytes} bytes is not a multiple of 8 elements of {elem_size} bytes"
        )));
    }
    let n = out.len() / elem_size;
    let tail = n % block - n % block % BLOCKED_MULT;
    let sizes = std::iter::repeat_n(block, n / block).chain((tail > 0).then_some(tail));
    let mut blocks = Vec::with_capacity(n / block + 1);
    for (k, size) in sizes.enumerate() {
        let Some((count, after)) = rest.split_first_chunk::<4>() else {
            return Err(damaged(format!("it ends before block {k}")));
        };
        let count = u32::from_be_bytes(*count) as usize;
        let Some((packed, after)) = after.split_at_checked(count) else {
            return Err(damaged(format!(
                "block {k} says {count} bytes, {} remain",
                after.len()
            )));
        };
        blocks.push(Block {
            packed,
            bytes: size * elem_size,
        });
        rest = after;
    }
    let (whole, left) = out.split_at_mut(out.len() - (n % BLOCKED_MULT) * elem_size);
    let Some(plain) = rest.get(..left.len()) else {
        return Err(damaged(format!(
            "its last {} bytes are missing ({} remain)",
            left.len(),
            rest.len()
        )));
    };
    left.copy_from_slice(plain);
    // No block is larger than the frame, whatever size the header states.
    let scratch = block_bytes.min(whole.len());
    whole
        .par_chunks_mut(block_bytes)
        .zip(blocks.par_iter())
        .enumerate()
        .try_for_each_init(
            || (vec![0u8; scratch], vec![0u8; scratch]),
            |(transposed, planes), (k, (dst, b))| {
                let got = lz4_decompress(b.packed, &mut transposed[..b.bytes]);
                if got != Some(b.bytes) {
                    return Err(damaged(match got {
                        None => format!("block {k} is not a valid LZ4 block"),
                        Some(got) => format!("block {k} holds {got} bytes, expected {}", b.bytes),
                    }));
                }
                untranspose_bits(
                    &transposed[..b.bytes],
                    dst,
                    elem_size,
                    &mut planes[..b.bytes],
                );
                Ok(())
            },
        )
}

/// `src` decoded into `dst` by the C library's `LZ4_decompress_safe`: the bytes written, or
/// None for a malformed block (or one larger than `dst`).
fn lz4_decompress(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    if src.len() > c_int::MAX as usize || dst.len() > c_int::MAX as usize {
        return None;
    }
    // SAFETY: LZ4_decompress_safe reads at most `src.len()` bytes of `src` and writes at most
    // `dst.len()` bytes into `dst`, whatever the input ("protected against malicious data",
    // lz4.h); both lengths are those of the slices passed.
    let n = unsafe {
        lz4_sys::LZ4_decompress_safe(
            src.as_ptr() as *const c_char,
            dst.as_mut_ptr() as *mut c_char,
            src.len() as c_int,
            dst.len() as c_int,
        )
    };
    usize::try_from(n).ok()
}

/// Decode `chunks` into the rows of `out` (`chunks.len()` rows of `row_bytes`) in parallel;
/// an error names the first chunk that fails.
pub fn decode_bitshuffle_lz4_many(
    chunks: &[&[u8]],
    elem_size: usize,
    out: &mut [u8],
    row_bytes: usize,
) -> Result<()> {
    if row_bytes == 0 || out.len() != chunks.len() * row_bytes {
        return Err(Error::Shape {
            what: "bitshuffle/LZ4 output".into(),
            expected: format!("{} rows of {row_bytes} bytes", chunks.len()),
            got: format!("{} bytes", out.len()),
        });
    }
    let failures: Vec<(usize, Error)> = out
        .par_chunks_mut(row_bytes)
        .zip(chunks.par_iter())
        .enumerate()
        .filter_map(|(k, (row, chunk))| {
            decode_bitshuffle_lz4(chunk, elem_size, row)
                .err()
                .map(|e| (k, e))
        })
        .collect();
    match failures.into_iter().min_by_key(|(k, _)| *k) {
        None => Ok(()),
        Some((k, e)) => Err(Error::Invalid(format!("chunk {k}: {e}"))),
    }
}

/// The inverse of bitshuffle's transpose of one block of `n` elements: `src` holds, for byte
/// `b` of the elements and bit `i`, a row of `n / 8` bytes whose byte `m` has in bit `j` bit
/// `i` of byte `b` of element `8m + j`. Each byte plane is transposed into `planes` (element
/// order), then the planes are interleaved into `dst`.
fn untranspose_bits(src: &[u8], dst: &mut [u8], elem_size: usize, planes: &mut [u8]) {
    let n = dst.len() / elem_size;
    if elem_size == 1 {
        untranspose_plane(src, dst);
        return;
    }
    for b in 0..elem_size {
        untranspose_plane(&src[b * n..(b + 1) * n], &mut planes[b * n..(b + 1) * n]);
    }
    interleave_planes(planes, dst, elem_size, n);
}

/// One byte plane: 8 rows of `n / 8` bytes (bit `i` of the elements' byte in row `i`) into the
/// `n` bytes in element order.
fn untranspose_plane(rows: &[u8], plane: &mut [u8]) {
    let row = plane.len() / 8;
    let mut m = 0;
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of x86-64; the loads and stores stay within `rows` and `plane`
        // (16 columns from m while m + 16 <= row).
        while m + 16 <= row {
            unsafe { sse2::untranspose_16(rows, plane, row, m) };
            m += 16;
        }
    }
    for m in m..row {
        let mut x = 0u64;
        for i in 0..8 {
            x |= (rows[i * row + m] as u64) << (8 * i);
        }
        plane[8 * m..8 * m + 8].copy_from_slice(&transpose_8x8(x).to_le_bytes());
    }
}

/// `dst[e * elem_size + b] = planes[b * n + e]`.
fn interleave_planes(planes: &[u8], dst: &mut [u8], elem_size: usize, n: usize) {
    let mut e = 0;
    #[cfg(target_arch = "x86_64")]
    if elem_size == 2 || elem_size == 4 {
        while e + 16 <= n {
            // SAFETY: SSE2 is part of x86-64; 16 elements from e lie within every plane and
            // `dst` (e + 16 <= n).
            unsafe { sse2::interleave_16(planes, dst, elem_size, n, e) };
            e += 16;
        }
    }
    for e in e..n {
        for b in 0..elem_size {
            dst[e * elem_size + b] = planes[b * n + e];
        }
    }
}

/// The 8 × 8 bit matrix `x` (row `r` its byte `r`, column `c` the byte's bit `c`) transposed.
fn transpose_8x8(mut x: u64) -> u64 {
    let t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x ^= t ^ (t << 7);
    let t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x ^= t ^ (t << 14);
    let t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^ t ^ (t << 28)
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    /// [`super::transpose_8x8`] on both 64-bit lanes.
    #[inline(always)]
    unsafe fn transpose_8x8_x2(mut x: __m128i) -> __m128i {
        let m1 = _mm_set1_epi64x(0x00AA_00AA_00AA_00AA);
        let m2 = _mm_set1_epi64x(0x0000_CCCC_0000_CCCC);
        let m3 = _mm_set1_epi64x(0x0000_0000_F0F0_F0F0);
        let t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64(x, 7)), m1);
        x = _mm_xor_si128(x, _mm_xor_si128(t, _mm_slli_epi64(t, 7)));
        let t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64(x, 14)), m2);
        x = _mm_xor_si128(x, _mm_xor_si128(t, _mm_slli_epi64(t, 14)));
        let t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64(x, 28)), m3);
        _mm_xor_si128(x, _mm_xor_si128(t, _mm_slli_epi64(t, 28)))
    }

    /// Columns `m .. m + 16` of the 8 rows (of `row` bytes) into elements `8m .. 8m + 128`:
    /// the bytes of a column gathered by a byte transpose (three rounds of unpacks), then each
    /// column's 8 × 8 bits transposed.
    ///
    /// # Safety
    /// `m + 16 <= row`, `rows.len() >= 8 * row`, `plane.len() >= 8 * row`.
    pub(super) unsafe fn untranspose_16(rows: &[u8], plane: &mut [u8], row: usize, m: usize) {
        let r = |i: usize| _mm_loadu_si128(rows.as_ptr().add(i * row + m) as *const __m128i);
        let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
        let (r4, r5, r6, r7) = (r(4), r(5), r(6), r(7));
        let a = [
            _mm_unpacklo_epi8(r0, r1),
            _mm_unpackhi_epi8(r0, r1),
            _mm_unpacklo_epi8(r2, r3),
            _mm_unpackhi_epi8(r2, r3),
            _mm_unpacklo_epi8(r4, r5),
            _mm_unpackhi_epi8(r4, r5),
            _mm_unpacklo_epi8(r6, r7),
            _mm_unpackhi_epi8(r6, r7),
        ];
        let b = [
            _mm_unpacklo_epi16(a[0], a[2]),
            _mm_unpackhi_epi16(a[0], a[2]),
            _mm_unpacklo_epi16(a[1], a[3]),
            _mm_unpackhi_epi16(a[1], a[3]),
            _mm_unpacklo_epi16(a[4], a[6]),
            _mm_unpackhi_epi16(a[4], a[6]),
            _mm_unpacklo_epi16(a[5], a[7]),
            _mm_unpackhi_epi16(a[5], a[7]),
        ];
        let out = plane.as_mut_ptr().add(8 * m) as *mut __m128i;
        for k in 0..4 {
            let lo = _mm_unpacklo_epi32(b[k], b[k + 4]); // columns m + 4k, m + 4k + 1
            let hi = _mm_unpackhi_epi32(b[k], b[k + 4]); // columns m + 4k + 2, m + 4k + 3
            _mm_storeu_si128(out.add(2 * k), transpose_8x8_x2(lo));
            _mm_storeu_si128(out.add(2 * k + 1), transpose_8x8_x2(hi));
        }
    }

    /// Elements `e .. e + 16` of 2 or 4 byte planes (of `n` bytes) interleaved into `dst`.
    ///
    /// # Safety
    /// `elem_size` is 2 or 4, `e + 16 <= n`, `planes.len() >= elem_size * n`,
    /// `dst.len() >= elem_size * n`.
    pub(super) unsafe fn interleave_16(
        planes: &[u8],
        dst: &mut [u8],
        elem_size: usize,
        n: usize,
        e: usize,
    ) {
        let p = |b: usize| _mm_loadu_si128(planes.as_ptr().add(b * n + e) as *const __m128i);
        let out = dst.as_mut_ptr().add(e * elem_size) as *mut __m128i;
        let (p0, p1) = (p(0), p(1));
        let lo = _mm_unpacklo_epi8(p0, p1);
        let hi = _mm_unpackhi_epi8(p0, p1);
        if elem_size == 2 {
            _mm_storeu_si128(out, lo);
            _mm_storeu_si128(out.add(1), hi);
            return;
        }
        let (p2, p3) = (p(2), p(3));
        let lo23 = _mm_unpacklo_epi8(p2, p3);
        let hi23 = _mm_unpackhi_epi8(p2, p3);
        _mm_storeu_si128(out, _mm_unpacklo_epi16(lo, lo23));
        _mm_storeu_si128(out.add(1), _mm_unpackhi_epi16(lo, lo23));
        _mm_storeu_si128(out.add(2), _mm_unpacklo_epi16(hi, hi23));
        _mm_storeu_si128(out.add(3), _mm_unpackhi_epi16(hi, hi23));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bit(x: u64, r: usize, c: usize) -> u64 {
        (x >> (8 * r + c)) & 1
    }

    #[test]
    fn transpose_8x8_swaps_rows_and_columns() {
        let mut x = 0x0123_4567_89AB_CDEFu64;
        for _ in 0..64 {
            let y = transpose_8x8(x);
            for r in 0..8 {
                for c in 0..8 {
                    assert_eq!(bit(y, r, c), bit(x, c, r));
                }
            }
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
        }
    }

    /// bitshuffle's transpose, written from its definition, to encode test chunks.
    fn transpose_bits(src: &[u8], elem_size: usize) -> Vec<u8> {
        let n = src.len() / elem_size;
        let row = n / 8;
        let mut out = vec![0u8; src.len()];
        for e in 0..n {
            for b in 0..elem_size {
                for i in 0..8 {
                    let v = (src[e * elem_size + b] >> i) & 1;
                    out[(b * 8 + i) * row + e / 8] |= v << (e % 8);
                }
            }
        }
        out
    }

    fn encode(data: &[u8], elem_size: usize, block: usize) -> Vec<u8> {
        encode_with_header(data, elem_size, block, block * elem_size)
    }

    /// A chunk of blocks of `block` elements whose header states `header_bytes` per block.
    fn encode_with_header(
        data: &[u8],
        elem_size: usize,
        block: usize,
        header_bytes: usize,
    ) -> Vec<u8> {
        let n = data.len() / elem_size;
        let mut chunk = (data.len() as u64).to_be_bytes().to_vec();
        chunk.extend((header_bytes as u32).to_be_bytes());
        let tail = n % block - n % block % 8;
        let sizes = std::iter::repeat_n(block, n / block).chain((tail > 0).then_some(tail));
        let mut at = 0;
        for size in sizes {
            let bytes = size * elem_size;
            let packed =
                lz4_flex::block::compress(&transpose_bits(&data[at..at + bytes], elem_size));
            chunk.extend((packed.len() as u32).to_be_bytes());
            chunk.extend(packed);
            at += bytes;
        }
        chunk.extend(&data[at..]);
        chunk
    }

    #[test]
    fn round_trips_whole_and_partial_blocks() {
        // Blocks of 512 (rows of 64 bytes: the SSE2 path), 520 (a scalar column after it), 8.
        for elem_size in [1, 2, 3, 4, 8] {
            for block in [512, 520, 8] {
                for n in [0, 5, 8, 64, 1000, 4099] {
                    let data: Vec<u8> = (0..n * elem_size)
                        .map(|k| ((k * 2654435761) >> 7) as u8)
                        .collect();
                    let chunk = encode(&data, elem_size, block);
                    let mut out = vec![0u8; data.len()];
                    decode_bitshuffle_lz4(&chunk, elem_size, &mut out).unwrap();
                    assert_eq!(out, data, "elem_size {elem_size}, block {block}, n {n}");
                }
            }
        }
    }

    #[test]
    fn a_block_size_of_0_is_bitshuffles_default() {
        for (elem_size, default) in [(1, 8192), (2, 4096), (4, 2048), (8, 1024), (128, 128)] {
            let data: Vec<u8> = (0..5000 * elem_size).map(|k| (k % 253) as u8).collect();
            let chunk = encode_with_header(&data, elem_size, default, 0);
            let mut out = vec![0u8; data.len()];
            decode_bitshuffle_lz4(&chunk, elem_size, &mut out).unwrap();
            assert_eq!(out, data, "elem_size {elem_size}");
        }
    }

    #[test]
    fn a_block_larger_than_the_frame_is_one_block_without_its_size_in_memory() {
        // Review: a header stating 2^31 − 32 bytes a block made two scratch buffers of that
        // size per thread (an abort under a memory limit); 2^32 − 8 was refused as no multiple.
        for (elem_size, header) in [(4usize, (1usize << 31) - 32), (1, (1 << 32) - 8)] {
            let data: Vec<u8> = (0..5003 * elem_size).map(|k| (k % 251) as u8).collect();
            let chunk = encode_with_header(&data, elem_size, header / elem_size, header);
            let mut out = vec![0u8; data.len()];
            decode_bitshuffle_lz4(&chunk, elem_size, &mut out).unwrap();
            assert_eq!(out, data, "elem_size {elem_size}");
        }
    }

    #[test]
    fn damaged_chunks_are_errors() {
        let data: Vec<u8> = (0..4096u32)
            .flat_map(|k| ((k * 7) as u16).to_le_bytes())
            .collect();
        let chunk = encode(&data, 2, 1024);
        let mut out = vec![0u8; data.len()];
        let mut huge = chunk.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_be_bytes()); // a block past the end
        let mut garbled = chunk.clone();
        for byte in &mut garbled[20..60] {
            *byte ^= 0x5A;
        }
        for (name, bad) in [
            ("huge", huge),
            ("cut", chunk[..chunk.len() / 2].to_vec()),
            ("header", chunk[..7].to_vec()),
            ("garbled", garbled),
        ] {
            let e = decode_bitshuffle_lz4(&bad, 2, &mut out);
            // A garbled LZ4 stream may still decode to the right length: wrong values, no crash.
            if name != "garbled" {
                assert!(e.unwrap_err().to_string().contains("damaged"), "{name}");
            }
        }
        let e = decode_bitshuffle_lz4(&chunk, 2, &mut out[..100]).unwrap_err();
        assert!(e
            .to_string()
            .contains("header says 8192 bytes, the frame has 100"));
    }
}
