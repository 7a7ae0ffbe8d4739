//! The pixels each radial row shares between η bins ([`EtaCross`]): the lineout's variance
//! needs their covariance.

use rayon::prelude::*;

use super::DetectorMap;

/// Pixels split across several η bins of one radial row, with the weight of their covariance
/// in that row's lineout: a pixel's pieces share its one value, so the variance of Σ_η signal is
/// Σ_p (Σ_e w_pe)²·var_p, not Σ_e Σ_p w_pe²·var_p; `weight` = (Σ_e w_pe)² − Σ_e w_pe² adds the
/// difference (w = the entry's signal weight: MIDAS weight or area).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EtaCross {
    /// Per radial row (`n_r + 1`).
    pub indptr: Vec<u64>,
    pub pixel: Vec<u32>,
    pub weight: Vec<f64>,
}

impl DetectorMap {
    /// The pixels each radial row shares between η bins ([`EtaCross`]), built on first use.
    pub fn eta_cross(&self) -> &EtaCross {
        self.derived.eta_cross.get_or_init(|| {
            let n_eta = self.n_eta();
            let n_r = self.n_r();
            let weight = |e: usize| match &self.weight {
                Some(w) => w[e],
                None => self.area[e] as f64,
            };
            let n_bits = self
                .n_pixels()
                .max(self.max_pixel().map_or(0, |p| p as usize + 1));
            // Rows in contiguous chunks, each with two pixel bitsets of its own (seen in this
            // row, seen twice), allocated once per chunk.
            let n_chunks = (4 * rayon::current_num_threads()).clamp(1, n_r.max(1));
            let rows: Vec<Vec<(u32, f64)>> = (0..n_chunks)
                .into_par_iter()
                .flat_map_iter(|c| {
                    let mut seen = vec![0u64; n_bits.div_ceil(64)];
                    let mut twice = vec![0u64; n_bits.div_ceil(64)];
                    let rows = n_r * c / n_chunks..n_r * (c + 1) / n_chunks;
                    rows.map(move |r| {
                        let lo = self.indptr[r * n_eta] as usize;
                        let hi = self.indptr[(r + 1) * n_eta] as usize;
                        let pixels = &self.pixel[lo..hi];
                        // Most pixels lie in one η bin of a row: only those met twice are
                        // sorted (a pixel's entries sorted by (pixel, entry) before).
                        let mut any = false;
                        for &p in pixels {
                            let (word, bit) = (p as usize / 64, 1u64 << (p % 64));
                            if seen[word] & bit != 0 {
                                twice[word] |= bit;
                                any = true;
                            }
                            seen[word] |= bit;
                        }
                        // The entry's offset in the low half finds its weight again.
                        let mut keys: Vec<u64> = Vec::new();
                        if any {
                            for (k, &p) in pixels.iter().enumerate() {
                                if twice[p as usize / 64] & (1u64 << (p % 64)) != 0 {
                                    keys.push((u64::from(p) << 32) | k as u64);
                                }
                            }
                        }
                        for &p in pixels {
                            seen[p as usize / 64] = 0;
                            twice[p as usize / 64] = 0;
                        }
                        keys.sort_unstable();
                        let mut shared = Vec::new();
                        for group in keys.chunk_by(|a, b| a >> 32 == b >> 32) {
                            // (Σw)² − Σw² as 2·Σ_{i<j} w_i·w_j: the difference cancels for a
                            // pixel split very unevenly (relative error ~1e-9 seen).
                            let (mut pairs, mut before) = (0.0, 0.0);
                            for &k in group {
                                let x = weight(lo + (k & 0xffff_ffff) as usize);
                                pairs += x * before;
                                before += x;
                            }
                            shared.push(((group[0] >> 32) as u32, 2.0 * pairs));
                        }
                        shared
                    })
                })
                .collect();
            let mut cross = EtaCross {
                indptr: Vec::with_capacity(rows.len() + 1),
                ..EtaCross::default()
            };
            cross.indptr.push(0);
            for row in rows {
                for (p, w) in row {
                    cross.pixel.push(p);
                    cross.weight.push(w);
                }
                cross.indptr.push(cross.pixel.len() as u64);
            }
            cross
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`DetectorMap::eta_cross`] as defined: per row, every pixel with more than one entry,
    /// in pixel order, with 2·Σ_{i<j} w_i·w_j over its entries in map order.
    fn eta_cross_by_definition(map: &DetectorMap) -> EtaCross {
        let n_eta = map.n_eta();
        let mut cross = EtaCross {
            indptr: vec![0],
            ..EtaCross::default()
        };
        for r in 0..map.n_r() {
            let mut by_pixel: std::collections::BTreeMap<u32, Vec<f64>> = Default::default();
            for e in map.indptr[r * n_eta] as usize..map.indptr[(r + 1) * n_eta] as usize {
                let w = map.weight.as_ref().map_or(map.area[e] as f64, |w| w[e]);
                by_pixel.entry(map.pixel[e]).or_default().push(w);
            }
            for (p, ws) in by_pixel.into_iter().filter(|(_, ws)| ws.len() > 1) {
                let (mut pairs, mut before) = (0.0, 0.0);
                for x in ws {
                    pairs += x * before;
                    before += x;
                }
                cross.pixel.push(p);
                cross.weight.push(2.0 * pairs);
            }
            cross.indptr.push(cross.pixel.len() as u64);
        }
        cross
    }

    #[test]
    fn eta_cross_finds_every_pixel_a_row_holds_more_than_once() {
        let mut next = crate::test_rng(7u64);
        // Small images (pixels met often, in one bin or several) and a large one (rarely);
        // pixels near the end of a 64-bit word and at the image's last index.
        for (n_y, n_z, n_r, n_eta, max_len, weighted) in [
            (5, 4, 3, 4, 12, false),
            (9, 7, 17, 8, 9, true),
            (64, 2, 40, 3, 30, false),
            (301, 211, 25, 72, 20, true),
            (1, 1, 4, 2, 3, false),
        ] {
            let n_pixels = n_y * n_z;
            let mut indptr = vec![0u64];
            let mut pixel = Vec::new();
            for _ in 0..n_r * n_eta {
                for _ in 0..next() % (max_len as u64 + 1) {
                    let p = match next() % 8 {
                        0 => n_pixels - 1,
                        1 => (63 % n_pixels) as u64 as usize,
                        _ => (next() % n_pixels as u64) as usize,
                    };
                    pixel.push(p as u32);
                }
                indptr.push(pixel.len() as u64);
            }
            let n = pixel.len();
            let area: Vec<f32> = (0..n).map(|_| (next() % 1000) as f32 / 999.0).collect();
            let weight = weighted.then(|| (0..n).map(|_| (next() % 997) as f64 / 13.0).collect());
            let map = DetectorMap {
                n_y,
                n_z,
                r_edges: (0..=n_r).map(|r| r as f64).collect(),
                eta_edges: (0..=n_eta).map(|e| e as f64).collect(),
                indptr: indptr.into(),
                pixel: pixel.into(),
                area: area.into(),
                weight,
                ..DetectorMap::default()
            };
            let want = eta_cross_by_definition(&map);
            assert!(!want.pixel.is_empty() || n_pixels > 1000);
            assert_eq!(map.eta_cross(), &want, "{n_y}x{n_z}, {n_r}x{n_eta}");
        }
    }
}
