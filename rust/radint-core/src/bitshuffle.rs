//! Bitshuffle/LZ4 chunks (HDF5 filter 32008, how Eiger/Dectris detectors store frames), decoded
//! with every length a chunk states checked against the chunk. The filter's own decoder trusts
//! the block sizes a chunk states: a damaged chunk made it read past the chunk's end and the
//! process died with a segfault, no file or frame named.

use crate::error::{Error, Result};
use rayon::prelude::*;

/// Bitshuffle works on blocks of a multiple of 8 elements; the last `n % 8` are stored as is.
const BLOCKED_MULT: usize = 8;

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
    let Some((header, mut rest)) = chunk.split_at_checked(12) else {
        return Err(damaged(format!(
            "{} bytes, shorter than its 12-byte header",
            chunk.len()
        )));
    };
    let total = u64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
    if total != out.len() as u64 {
        return Err(damaged(format!(
            "its header says {total} bytes, the frame has {}",
            out.len()
        )));
    }
    let block_bytes = u32::from_be_bytes(header[8..].try_into().expect("4 bytes")) as usize;
    let block = block_bytes / elem_size;
    if block == 0 || !block_bytes.is_multiple_of(elem_size) || !block.is_multiple_of(BLOCKED_MULT) {
        return Err(damaged(format!(
            "block size {block_bytes} bytes is not a multiple of 8 elements of {elem_size} bytes"
        )));
    }
    let n = out.len() / elem_size;
    let tail = n % block - n % block % BLOCKED_MULT;
    let sizes = std::iter::repeat_n(block, n / block).chain((tail > 0).then_some(tail));
    let mut transposed = vec![0u8; block * elem_size];
    let mut at = 0;
    for (k, size) in sizes.enumerate() {
        let bytes = size * elem_size;
        let Some((count, after)) = rest.split_at_checked(4) else {
            return Err(damaged(format!("it ends before block {k}")));
        };
        let count = u32::from_be_bytes(count.try_into().expect("4 bytes")) as usize;
        let Some((packed, after)) = after.split_at_checked(count) else {
            return Err(damaged(format!(
                "block {k} says {count} bytes, {} remain",
                after.len()
            )));
        };
        let unpacked = lz4_flex::block::decompress_into(packed, &mut transposed[..bytes])
            .map_err(|e| damaged(format!("block {k}: {e}")))?;
        if unpacked != bytes {
            return Err(damaged(format!(
                "block {k} holds {unpacked} bytes, expected {bytes}"
            )));
        }
        untranspose_bits(&transposed[..bytes], &mut out[at..at + bytes], elem_size);
        at += bytes;
        rest = after;
    }
    let left = out.len() - at;
    let Some(plain) = rest.get(..left) else {
        return Err(damaged(format!(
            "its last {left} bytes are missing ({} remain)",
            rest.len()
        )));
    };
    out[at..].copy_from_slice(plain);
    Ok(())
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

/// The inverse of bitshuffle's transpose of one block: `src` holds, for byte `b` of the elements
/// and bit `i`, a row of `n / 8` bytes whose byte `m` has in bit `j` bit `i` of byte `b` of
/// element `8m + j`.
fn untranspose_bits(src: &[u8], dst: &mut [u8], elem_size: usize) {
    let n = dst.len() / elem_size;
    let row = n / 8;
    for b in 0..elem_size {
        let rows = &src[b * 8 * row..(b + 1) * 8 * row];
        for m in 0..row {
            let mut x = 0u64;
            for i in 0..8 {
                x |= (rows[i * row + m] as u64) << (8 * i);
            }
            let y = transpose_8x8(x);
            for j in 0..8 {
                dst[(8 * m + j) * elem_size + b] = (y >> (8 * j)) as u8;
            }
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
        let n = data.len() / elem_size;
        let mut chunk = (data.len() as u64).to_be_bytes().to_vec();
        chunk.extend(((block * elem_size) as u32).to_be_bytes());
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
        for elem_size in [1, 2, 4, 8] {
            for n in [0, 5, 8, 64, 1000, 4099] {
                let data: Vec<u8> = (0..n * elem_size).map(|k| (k * 37 % 251) as u8).collect();
                let chunk = encode(&data, elem_size, 512);
                let mut out = vec![0u8; data.len()];
                decode_bitshuffle_lz4(&chunk, elem_size, &mut out).unwrap();
                assert_eq!(out, data, "elem_size {elem_size}, n {n}");
            }
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
