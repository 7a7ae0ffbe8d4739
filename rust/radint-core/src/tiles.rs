//! A second layout of a map's entries for the AVX-512 gather kernels ([`Tiles`]): the bins
//! walked tile by tile instead of ring by ring, with a prefetch schedule.
//!
//! Why: walking the CSR ring by ring sends every bin's pixel loads around the whole image, so a
//! frame's cache lines are fetched again for each ring that crosses them, and the kernels spent
//! most of their time issuing a software prefetch for every entry. Walked wedge by wedge (or
//! image block by image block), neighbouring bins share their lines while these are still in
//! the first-level cache, and the lines a walk needs anew are few (a Pilatus 2M 1 px × 5° cake:
//! 0.55 per 16 entries against ~6 distinct ones), so they are listed once, when the layout is
//! built, and the kernels prefetch only those. Measured on the session-23 Zen 5 VM at 2 threads
//! (benches/compare.py's maps): a Pilatus 2M 1 px × 5° cake 1.82 → ~1.5 ms per frame, a
//! 3000-bin lineout 2.80 → ~2.3 ms (a standalone harness timing the kernel alone: 1.61 → 1.17
//! and 2.70 → 2.1 ms). Walked wedge by wedge with a prefetch for every entry, the cake took
//! 1.39 ms there: the order alone gives a third of the gain, the schedule the rest.

use rayon::prelude::*;

use crate::map::DetectorMap;

/// Wedges (η bins, or η bins cut into image blocks) a layout aims at, at least: fewer leave
/// each walk spread over too much of the image (a lineout's one "wedge" is the whole ring).
const MIN_WEDGES: usize = 16;

/// Prefetch slots per 16 entries ([`Tiles::prefetch_slots`]): at least this many, and twice
/// the map's mean of lines fetched anew, so bursts fit; at most one per entry.
const MIN_PREFETCH_SLOTS: usize = 2;
const MAX_PREFETCH_SLOTS: usize = 16;

/// Groups of 16 entries between a prefetch and the first load it serves.
pub(crate) const PREFETCH_LEAD_GROUPS: usize = 32;

/// A line touched within this many entries counts as still cached (the second-level cache
/// holds far more than 8192 entries' lines; the first level holds fewer, but refetching from the
/// second level is quick and the gathers' out-of-order window covers it).
const REUSE_WINDOW: usize = 8192;

/// The entries of a [`DetectorMap`] as pieces of bins, walked tile by tile: piece k holds
/// entries `indptr[k]..indptr[k+1]` of `pixel`/`area` and belongs to bin `bin[k]`. In maps
/// with at least [`MIN_WEDGES`] η bins, the pieces are the bins themselves (wedge by wedge, R
/// outward, each bin's entries in their map order); with fewer, each bin is cut into the image
/// blocks its pixels fall in, and a bin's sum is the sum of its pieces.
///
/// The fields are read-only outside this crate, and only [`Tiles::build`] and
/// [`Tiles::in_order`] make a layout, so the invariants the kernels' unchecked loads rely on
/// hold for its whole life: `indptr` starts at 0 and never decreases, its last value is at most
/// the entry count, `weight` is empty or one per entry, every `bin` is below the bin count and
/// `prefetch` holds `prefetch_slots` per 16 entries.
#[derive(Debug, Clone, Default)]
pub struct Tiles {
    pub(crate) indptr: Vec<u64>,
    pub(crate) pixel: Vec<u32>,
    pub(crate) area: Vec<f32>,
    /// The map's signal weights in walk order, where it has them (a folded map, see
    /// [`DetectorMap::weights_in_any_order`]); empty where the weights are the areas.
    pub(crate) weight: Vec<f64>,
    pub(crate) bin: Vec<u32>,
    /// Bin → its pieces (`bin_pieces[bin_indptr[b]..bin_indptr[b+1]]`, in walk order).
    pub(crate) bin_indptr: Vec<u64>,
    pub(crate) bin_pieces: Vec<u32>,
    /// Whether every bin has at most one piece (then a piece's sums are its bin's).
    pub(crate) one_piece_per_bin: bool,
    /// `prefetch_slots` (S) per 16 entries: slot `g·S + j` holds the first pixel of a 16-pixel
    /// group whose lines the entries of group `g + PREFETCH_LEAD_GROUPS` and later load first
    /// (placed as late as that allows). Kernels prefetch that pixel and the group's last one, so
    /// both lines of a group that straddles two are asked for, whatever the frame's alignment.
    pub(crate) prefetch: Vec<u32>,
    pub(crate) prefetch_slots: usize,
}

impl Tiles {
    /// Whether memory can take `map`'s layout now: room for twice its arrays (the copies of
    /// the entries, and what building them holds meanwhile) can be reserved. A failed
    /// allocation aborts a Rust process, so [`DetectorMap::tiles`] asks first (under a memory
    /// limit the first frame of a 16M detector's 1° cake aborted building it).
    pub fn fits_in_memory(map: &DetectorMap) -> bool {
        let entries = map.pixel.len();
        let per_entry = 4 + 4 + 1 + 16 + if map.weight.is_some() { 8 } else { 0 };
        let bytes = 2 * (entries * per_entry + (map.n_bins() + 1) * 3 * 8);
        Vec::<u8>::new().try_reserve_exact(bytes).is_ok()
    }

    /// The layout of `map` (the caller keeps maps with MIDAS weights out: their kernel keeps
    /// the C order).
    pub fn build(map: &DetectorMap) -> Tiles {
        let n_eta = map.n_eta().max(1);
        let n_r = map.n_r();
        let side = if n_eta >= MIN_WEDGES {
            1
        } else {
            (MIN_WEDGES as f64 / n_eta as f64).sqrt().ceil() as usize
        };
        let n_blocks = side * side;
        let block_of: Vec<u8> = if n_blocks > 1 {
            let n_y = map.n_y.max(1);
            let n_z = map.n_z.max(1);
            map.pixel
                .par_iter()
                .map(|&p| {
                    let (z, y) = (p as usize / n_y, p as usize % n_y);
                    ((z * side / n_z).min(side - 1) * side + (y * side / n_y).min(side - 1)) as u8
                })
                .collect()
        } else {
            Vec::new()
        };
        let block = |k: usize| block_of.get(k).map_or(0, |&b| b as usize);
        let entries = |r: usize, e: usize| {
            let b = r * n_eta + e;
            map.indptr[b] as usize..map.indptr[b + 1] as usize
        };
        let mut tiles = Tiles {
            indptr: vec![0],
            pixel: vec![0; map.pixel.len()],
            area: vec![0.0; map.area.len()],
            weight: vec![0.0; map.weight.as_ref().map_or(0, |w| w.len())],
            ..Tiles::default()
        };
        // Wedge after wedge in walk order: each wedge's entries are one run of the layout, so
        // the wedges are laid out in parallel, each into its own run.
        let wedge_len: Vec<usize> = (0..n_eta)
            .map(|e| (0..n_r).map(|r| entries(r, e).len()).sum())
            .collect();
        let weighted = map.weight.is_some();
        let weight_len: Vec<usize> = wedge_len
            .iter()
            .map(|&n| if weighted { n } else { 0 })
            .collect();
        let runs = split_runs(&mut tiles.pixel, &wedge_len)
            .into_iter()
            .zip(split_runs(&mut tiles.area, &wedge_len))
            .zip(split_runs(&mut tiles.weight, &weight_len))
            .enumerate()
            .collect::<Vec<_>>();
        // Per wedge: its pieces (entry count, bin) in (block, R) order, each bin's entries
        // keeping their order.
        let pieces: Vec<Vec<(usize, u32)>> = runs
            .into_par_iter()
            .map(|(e, ((pixel, area), weight))| {
                let mut start = vec![0usize; n_blocks * n_r];
                for r in 0..n_r {
                    for k in entries(r, e) {
                        start[block(k) * n_r + r] += 1;
                    }
                }
                let mut pieces = Vec::new();
                let mut filled = 0;
                for (slot, at) in start.iter_mut().enumerate() {
                    let size = *at;
                    *at = filled;
                    if size > 0 {
                        filled += size;
                        pieces.push((size, ((slot % n_r) * n_eta + e) as u32));
                    }
                }
                for r in 0..n_r {
                    for k in entries(r, e) {
                        let at = &mut start[block(k) * n_r + r];
                        pixel[*at] = map.pixel[k];
                        area[*at] = map.area[k];
                        if let Some(w) = &map.weight {
                            weight[*at] = w[k];
                        }
                        *at += 1;
                    }
                }
                pieces
            })
            .collect();
        let mut filled = 0;
        for (size, bin) in pieces.into_iter().flatten() {
            filled += size;
            tiles.indptr.push(filled as u64);
            tiles.bin.push(bin);
        }
        tiles.index_bins(map.n_bins());
        (tiles.prefetch, tiles.prefetch_slots) = prefetch_schedule(&tiles.pixel, map.n_pixels());
        tiles
    }

    /// The layout that walks the bins of a CSR (`indptr`, `pixel`, `area`, frames of
    /// `n_pixels`) in their own order, one piece per bin, with its prefetch schedule.
    ///
    /// # Panics
    /// If `indptr` does not start at 0, decreases, or ends past `pixel` or `area`.
    pub fn in_order(indptr: &[u64], pixel: &[u32], area: &[f32], n_pixels: usize) -> Tiles {
        assert!(
            indptr.first() == Some(&0)
                && indptr.windows(2).all(|w| w[0] <= w[1])
                && indptr[indptr.len() - 1] as usize <= pixel.len().min(area.len()),
            "indptr must rise from 0 to at most the entry count"
        );
        let n_bins = indptr.len().saturating_sub(1);
        let mut tiles = Tiles {
            indptr: indptr.to_vec(),
            pixel: pixel.to_vec(),
            area: area.to_vec(),
            bin: (0..n_bins as u32).collect(),
            ..Tiles::default()
        };
        tiles.index_bins(n_bins);
        (tiles.prefetch, tiles.prefetch_slots) = prefetch_schedule(pixel, n_pixels);
        tiles
    }

    /// This layout with signal weights of its own, one per entry in walk order, read by the
    /// kernels in place of the areas (as a folded map's are).
    ///
    /// # Panics
    /// If `weight` does not hold one value per entry.
    pub fn with_weights(mut self, weight: Vec<f64>) -> Tiles {
        assert_eq!(weight.len(), self.pixel.len(), "one weight per entry");
        self.weight = weight;
        self
    }

    /// `bin_indptr`, `bin_pieces` and `one_piece_per_bin` from `bin`.
    fn index_bins(&mut self, n_bins: usize) {
        let mut count = vec![0u64; n_bins + 1];
        for &b in &self.bin {
            count[b as usize + 1] += 1;
        }
        for b in 0..n_bins {
            count[b + 1] += count[b];
        }
        let mut next = count.clone();
        self.bin_pieces = vec![0; self.bin.len()];
        for (k, &b) in self.bin.iter().enumerate() {
            self.bin_pieces[next[b as usize] as usize] = k as u32;
            next[b as usize] += 1;
        }
        self.one_piece_per_bin = count.windows(2).all(|w| w[1] - w[0] <= 1);
        self.bin_indptr = count;
    }

    pub fn n_pieces(&self) -> usize {
        self.bin.len()
    }

    pub fn n_bins(&self) -> usize {
        self.bin_indptr.len().saturating_sub(1)
    }

    /// Whether every bin has at most one piece (then a piece's sums are its bin's).
    pub fn one_piece_per_bin(&self) -> bool {
        self.one_piece_per_bin
    }

    /// Piece ranges each holding about `1/n_parts` of the entries.
    pub fn partition(&self, n_parts: usize) -> Vec<(usize, usize)> {
        let n = self.n_pieces();
        let total = self.pixel.len().max(1) as u64;
        let n_parts = n_parts.max(1) as u64;
        let mut parts = Vec::with_capacity(n_parts as usize);
        let mut lo = 0;
        for k in 1..=n_parts {
            let target = total * k / n_parts;
            let hi = if k == n_parts {
                n
            } else {
                self.indptr.partition_point(|&x| x < target).min(n).max(lo)
            };
            if hi > lo {
                parts.push((lo, hi));
            }
            lo = hi;
        }
        parts
    }
}

/// `values` cut into consecutive runs of `lengths` (what is left after them is not handed out).
pub(crate) fn split_runs<'a, T>(mut values: &'a mut [T], lengths: &[usize]) -> Vec<&'a mut [T]> {
    let mut runs = Vec::with_capacity(lengths.len());
    for &len in lengths {
        let (run, rest) = std::mem::take(&mut values).split_at_mut(len);
        runs.push(run);
        values = rest;
    }
    runs
}

/// [`Tiles::prefetch`] and its slots per 16 entries for entries `pixel` (in walk order) of an
/// image of `n_pixels`.
fn prefetch_schedule(pixel: &[u32], n_pixels: usize) -> (Vec<u32>, usize) {
    let n_groups = pixel.len().div_ceil(16);
    let n_lines = n_pixels.max(pixel.iter().map(|&p| p as usize + 1).max().unwrap_or(0)) / 16 + 1;
    let n_runs = rayon::current_num_threads().clamp(1, (pixel.len() >> 20).max(1));
    let needs = lines_fetched_anew(pixel, n_lines, n_runs);
    let per_group = (2 * needs.len())
        .div_ceil(n_groups.max(1))
        .clamp(MIN_PREFETCH_SLOTS, MAX_PREFETCH_SLOTS);
    let mut slots = vec![u32::MAX; n_groups * per_group];
    // As late as the lead allows, filled from the end: a burst of new lines takes earlier slots.
    let mut free = slots.len() as isize - 1;
    for &(group, first) in needs.iter().rev() {
        let latest = (group as isize - PREFETCH_LEAD_GROUPS as isize + 1) * per_group as isize - 1;
        let slot = latest.min(free);
        if slot < 0 {
            continue; // needed before the lead's worth of entries: left to the hardware
        }
        slots[slot as usize] = first;
        free = slot - 1;
    }
    // Empty slots repeat their predecessor (a line already asked for: a cheap no-op).
    let mut previous = pixel.first().map_or(0, |&p| p / 16 * 16);
    for slot in slots.iter_mut() {
        if *slot == u32::MAX {
            *slot = previous;
        } else {
            previous = *slot;
        }
    }
    (slots, per_group)
}

/// (group of first use, first pixel) of each 16-pixel line that entries `pixel` (in walk
/// order) fetch anew: first used, or not used in the REUSE_WINDOW entries before; in walk order.
/// Found in parallel over `n_runs` runs of entries: a run first replays the REUSE_WINDOW entries
/// before it, which hold every use that can keep one of its lines cached, so it decides as one
/// pass over all entries would.
fn lines_fetched_anew(pixel: &[u32], n_lines: usize, n_runs: usize) -> Vec<(usize, u32)> {
    let n_runs = n_runs.max(1);
    (0..n_runs)
        .into_par_iter()
        .flat_map_iter(|run| {
            let lo = pixel.len() * run / n_runs;
            let hi = pixel.len() * (run + 1) / n_runs;
            let mut last_use = vec![usize::MAX; n_lines];
            let replay = lo.saturating_sub(REUSE_WINDOW);
            for (e, &p) in pixel.iter().enumerate().take(lo).skip(replay) {
                last_use[p as usize / 16] = e;
            }
            let mut needs = Vec::new();
            for (e, &p) in pixel.iter().enumerate().take(hi).skip(lo) {
                let group = p as usize / 16;
                let last = last_use[group];
                if last == usize::MAX || e - last > REUSE_WINDOW {
                    needs.push((e / 16, (group * 16) as u32));
                }
                last_use[group] = e;
            }
            needs
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map of `n_r × n_eta` bins over a `n_y × n_z` image: random pixels, sorted per bin as
    /// the mapper leaves them, some bins empty.
    fn random_map(n_y: usize, n_z: usize, n_r: usize, n_eta: usize, seed: u64) -> DetectorMap {
        let mut next = crate::test_rng(seed);
        let mut indptr = vec![0u64];
        let (mut pixel, mut area) = (Vec::new(), Vec::new());
        for b in 0..n_r * n_eta {
            let len = if b % 5 == 0 {
                0
            } else {
                (next() % 60) as usize
            };
            let mut bin: Vec<u32> = (0..len)
                .map(|_| (next() % (n_y * n_z) as u64) as u32)
                .collect();
            bin.sort_unstable();
            for p in bin {
                pixel.push(p);
                area.push((next() % 1000) as f32 / 1000.0);
            }
            indptr.push(pixel.len() as u64);
        }
        DetectorMap {
            n_y,
            n_z,
            r_edges: (0..=n_r).map(|r| r as f64).collect(),
            eta_edges: (0..=n_eta)
                .map(|e| -180.0 + 360.0 * e as f64 / n_eta as f64)
                .collect(),
            indptr: indptr.into(),
            pixel: pixel.into(),
            area: area.into(),
            ..DetectorMap::default()
        }
    }

    #[test]
    fn pieces_hold_each_bins_entries_in_order_wedge_by_wedge() {
        for (n_eta, seed) in [(1, 1), (3, 2), (15, 3), (16, 4), (40, 5)] {
            let map = random_map(37, 29, 23, n_eta, seed);
            let tiles = Tiles::build(&map);
            assert_eq!(
                tiles.one_piece_per_bin,
                n_eta >= MIN_WEDGES,
                "n_eta {n_eta}"
            );
            assert_eq!(tiles.pixel.len(), map.pixel.len());
            // Walk order: wedge by wedge, each wedge's pieces by (image block, R).
            let side = if n_eta >= MIN_WEDGES {
                1
            } else {
                (MIN_WEDGES as f64 / n_eta as f64).sqrt().ceil() as usize
            };
            let order: Vec<(u32, usize, u32)> = (0..tiles.n_pieces())
                .map(|k| {
                    let p = tiles.pixel[tiles.indptr[k] as usize] as usize;
                    let (z, y) = (p / map.n_y, p % map.n_y);
                    let block = (z * side / map.n_z).min(side - 1) * side
                        + (y * side / map.n_y).min(side - 1);
                    let b = tiles.bin[k];
                    (b % n_eta as u32, block, b / n_eta as u32)
                })
                .collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "n_eta {n_eta}");
            for b in 0..map.n_bins() {
                let want: Vec<(u32, u32)> = (map.indptr[b] as usize..map.indptr[b + 1] as usize)
                    .map(|k| (map.pixel[k], map.area[k].to_bits()))
                    .collect();
                let pieces = &tiles.bin_pieces
                    [tiles.bin_indptr[b] as usize..tiles.bin_indptr[b + 1] as usize];
                let mut got = Vec::new();
                for &k in pieces {
                    assert_eq!(tiles.bin[k as usize] as usize, b);
                    let entries =
                        tiles.indptr[k as usize] as usize..tiles.indptr[k as usize + 1] as usize;
                    assert!(!entries.is_empty(), "empty piece {k}");
                    let piece: Vec<(u32, u32)> = entries
                        .map(|e| (tiles.pixel[e], tiles.area[e].to_bits()))
                        .collect();
                    // Each piece keeps the bin's order (a subsequence of it).
                    let mut rest = want.iter();
                    assert!(
                        piece.iter().all(|x| rest.any(|y| y == x)),
                        "bin {b} piece order"
                    );
                    got.extend(piece);
                }
                got.sort_unstable();
                let mut want = want;
                want.sort_unstable();
                assert_eq!(got, want, "bin {b} of n_eta {n_eta}");
            }
        }
    }

    #[test]
    fn every_line_fetched_anew_is_prefetched_a_lead_ahead() {
        let map = random_map(300, 200, 40, 3, 9);
        let tiles = Tiles::build(&map);
        let (slots, per_group) = (&tiles.prefetch, tiles.prefetch_slots);
        assert_eq!(slots.len(), tiles.pixel.len().div_ceil(16) * per_group);
        let mut last_use: std::collections::HashMap<u32, usize> = Default::default();
        for (e, &p) in tiles.pixel.iter().enumerate() {
            let group = p / 16;
            let fresh = last_use
                .get(&group)
                .is_none_or(|&last| e - last > REUSE_WINDOW);
            last_use.insert(group, e);
            // Slot group g − lead is issued when the walk reaches group g − lead.
            let latest = (e / 16).checked_sub(PREFETCH_LEAD_GROUPS);
            if let (true, Some(latest)) = (fresh, latest) {
                let asked = &slots[..((latest + 1) * per_group).min(slots.len())];
                assert!(
                    asked.contains(&(group * 16)),
                    "entry {e}: pixel {p} not prefetched"
                );
            }
        }
    }

    #[test]
    fn lines_fetched_anew_are_the_same_found_in_parallel_runs() {
        // A walk with locality (lines come back within and past the reuse window), long
        // enough for runs of a few windows each.
        let mut next = crate::test_rng(3u64);
        let mut at = 0u64;
        let pixel: Vec<u32> = (0..5 * REUSE_WINDOW + 123)
            .map(|_| {
                at = match next() % 100 {
                    0 => next() % 40_000,
                    1..=9 => at.saturating_sub(next() % 3000),
                    _ => (at + next() % 20) % 40_000,
                };
                at as u32
            })
            .collect();
        let one_pass = lines_fetched_anew(&pixel, 40_000 / 16 + 1, 1);
        assert!(one_pass.len() > 100);
        for n_runs in [2, 3, 7, 64] {
            assert_eq!(
                lines_fetched_anew(&pixel, 40_000 / 16 + 1, n_runs),
                one_pass,
                "{n_runs} runs"
            );
        }
    }

    #[test]
    fn a_folded_maps_weights_follow_their_entries() {
        let mut map = random_map(40, 30, 12, 3, 6);
        map.weight = Some(map.area.iter().map(|&a| 2.0 * a as f64 + 0.25).collect());
        map.weights_in_any_order = true;
        let tiles = map.tiles().expect("weights in any order are tiled");
        assert_eq!(tiles.weight.len(), tiles.pixel.len());
        for (w, a) in tiles.weight.iter().zip(&tiles.area) {
            assert_eq!(*w, 2.0 * *a as f64 + 0.25);
        }
        map.weights_in_any_order = false;
        let midas = DetectorMap {
            derived: Default::default(),
            ..map
        };
        assert!(midas.tiles().is_none(), "MIDAS weights keep the C order");
    }

    #[test]
    #[should_panic(expected = "indptr must rise")]
    fn a_csr_whose_indptr_falls_is_refused() {
        Tiles::in_order(&[0, 3, 2, 4], &[0; 4], &[1.0; 4], 8);
    }

    #[test]
    #[should_panic(expected = "indptr must rise")]
    fn a_csr_whose_indptr_ends_past_its_entries_is_refused() {
        Tiles::in_order(&[0, 3, 5], &[0; 4], &[1.0; 4], 8);
    }

    #[test]
    fn a_map_without_entries_has_no_pieces() {
        let mut map = random_map(8, 8, 3, 2, 1);
        map.indptr = vec![0; 7].into();
        map.pixel = Vec::new().into();
        map.area = Vec::new().into();
        let tiles = Tiles::build(&map);
        assert_eq!(tiles.n_pieces(), 0);
        assert!(tiles.partition(4).is_empty() && tiles.prefetch.is_empty());
        assert_eq!(tiles.bin_indptr, vec![0; 7]);
    }

    #[test]
    fn partition_covers_the_pieces_in_balanced_ranges() {
        let map = random_map(50, 40, 60, 20, 11);
        let tiles = Tiles::build(&map);
        for n_parts in [1, 2, 7, 16, 10_000] {
            let parts = tiles.partition(n_parts);
            assert_eq!(parts.first().map(|p| p.0), Some(0));
            assert_eq!(parts.last().map(|p| p.1), Some(tiles.n_pieces()));
            assert!(parts
                .windows(2)
                .all(|w| w[0].1 == w[1].0 && w[0].0 < w[0].1));
            let most = parts
                .iter()
                .map(|&(lo, hi)| tiles.indptr[hi] - tiles.indptr[lo])
                .max()
                .unwrap();
            // No part holds much more than its share (plus one piece).
            assert!(most as usize <= tiles.pixel.len() / n_parts.min(tiles.n_pieces()) + 60);
        }
    }
}
