//! MIDAS `Map.bin` / `nMap.bin` / `maskMap.bin` (spec §4): header, C parameter hash, read, write.
//!
//! A C map stores, per entry, a fractional raw-image position, a signal weight `frac` (with the
//! corrections folded in) and the geometric `areaWeight`. Reading one gives a [`DetectorMap`] whose
//! entries are the bilinear pieces of those positions (the C CPU integrator's sampling, spec §5.2)
//! with `weight = frac·w_k`, so integrating it reproduces the C numbers.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::bins;
use crate::error::{Error, Result};
use crate::map::DetectorMap;
use crate::params::{Params, RadialMode};

pub const MAGIC: u32 = 0x3050_414D;
pub const VERSION: u32 = 3;
pub const HEADER_SIZE: usize = 64;
pub const RECORD_SIZE: usize = 24;

/// The optional 64-byte header shared by the three files.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapHeader {
    pub param_hash: [u8; 32],
    pub q_mode: u8,
    pub gradient_mode: u8,
    pub wavelength_angstrom: f64,
}

impl MapHeader {
    pub fn for_params(params: &Params) -> MapHeader {
        MapHeader {
            param_hash: param_hash(params),
            q_mode: u8::from(params.radial_mode() == RadialMode::Q),
            gradient_mode: u8::from(params.gradient_correction),
            wavelength_angstrom: params.wavelength_angstrom,
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..40].copy_from_slice(&self.param_hash);
        b[40] = self.q_mode;
        b[41] = self.gradient_mode;
        b[48..56].copy_from_slice(&self.wavelength_angstrom.to_le_bytes());
        b
    }

    /// Parse a header if `bytes` starts with the magic; `None` for a legacy (header-less) file.
    pub fn parse(bytes: &[u8]) -> Option<MapHeader> {
        if bytes.len() < HEADER_SIZE || u32_at(bytes, 0) != MAGIC {
            return None;
        }
        let mut param_hash = [0u8; 32];
        param_hash.copy_from_slice(&bytes[8..40]);
        Some(MapHeader {
            param_hash,
            q_mode: bytes[40],
            gradient_mode: bytes[41],
            wavelength_angstrom: f64_at(bytes, 48),
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    u32_at(b, at) as i32
}
fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_bits(u32_at(b, at))
}
fn f64_at(b: &[u8], at: usize) -> f64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    f64::from_le_bytes(a)
}

/// The C hash string (spec §4.3). In Q mode RMin/RMax are what DetectorMapper.c derives from
/// QMin/QMax, each only when positive (else the file's RMin/RMax), with the C expression, so
/// the hash matches even where the last bin edge is not R(QMax).
pub fn param_hash_string(p: &Params) -> String {
    let (mut r_min, mut r_max) = (p.r_min_px, p.r_max_px);
    if p.radial_mode() == RadialMode::Q {
        let radius = |q: f64| {
            (p.lsd_um / p.pixel_size_y_um)
                * (2.0 * (q * p.wavelength_angstrom / (4.0 * std::f64::consts::PI)).asin()).tan()
        };
        if p.q_min > 0.0 {
            r_min = radius(p.q_min);
        }
        if p.q_max > 0.0 {
            r_max = radius(p.q_max);
        }
    }
    let mut s = format!(
        "BC={:.6},{:.6}|EtaBinSize={:.6}|EtaMax={:.6}|EtaMin={:.6}|Lsd={:.6}|NrPixelsY={}|NrPixelsZ={}|RBinSize={:.6}|RMax={:.6}|RMin={:.6}|RhoD={:.6}|TransOpt={}",
        p.bc_y_px,
        p.bc_z_px,
        p.eta_bin_deg,
        p.eta_max_deg,
        p.eta_min_deg,
        p.lsd_um,
        p.n_pixels_y,
        p.n_pixels_z,
        p.r_bin_px,
        r_max,
        r_min,
        p.rho_d_um,
        p.im_trans_opt.len()
    );
    for op in &p.im_trans_opt {
        s.push_str(&format!(",{op}"));
    }
    for i in [0usize, 1, 2, 3, 4, 6] {
        s.push_str(&format!("|p{i}={:.6}", p.distortion[i]));
    }
    s.push_str(&format!(
        "|pxY={:.6}|pxZ={:.6}|tx={:.6}|ty={:.6}|tz={:.6}",
        p.pixel_size_y_um, p.pixel_size_z_um, p.tx_deg, p.ty_deg, p.tz_deg
    ));
    if p.radial_mode() == RadialMode::Q {
        s.push_str(&format!("|qMode=1|Wavelength={:.8}", p.wavelength_angstrom));
    }
    push_pixel_shape(&mut s, p);
    s
}

/// radint's `PixelShape rectangular` (no MIDAS program builds such maps): in the hash, so a
/// map of either shape read with the other's parameters is told apart.
fn push_pixel_shape(s: &mut String, p: &Params) {
    if p.rectangular_pixels() {
        s.push_str("|PixelShape=rectangular");
    }
}

pub fn param_hash(p: &Params) -> [u8; 32] {
    Sha256::digest(param_hash_string(p).as_bytes()).into()
}

/// The hash midas-integrate (the Python port) writes into its Map.bin headers: the C string
/// with `Parallax` and `Wavelength` always and all fifteen distortion terms, so that a map it
/// built for these parameters is not taken for another geometry's.
pub fn param_hash_string_midas_integrate(p: &Params) -> String {
    let c = param_hash_string(p);
    // Its alphabetised head is the C one with Parallax after NrPixelsZ and Wavelength after
    // TransOpt's count (and its transforms); its tail holds every p term.
    let c = c.trim_end_matches("|PixelShape=rectangular");
    let (head, _) = c.split_once("|p0=").unwrap_or((c, ""));
    let (before_rbin, from_rbin) = head.split_once("|RBinSize=").unwrap_or((head, ""));
    let (from_rbin, transforms) = match from_rbin.split_once("|TransOpt=") {
        Some((a, b)) => (a, b),
        None => (from_rbin, ""),
    };
    let (count, ops) = transforms.split_once(',').unwrap_or((transforms, ""));
    let mut s = format!(
        "{before_rbin}|Parallax={:.6}|RBinSize={from_rbin}|TransOpt={count}|Wavelength={:.8}",
        p.parallax_um, p.wavelength_angstrom
    );
    if !ops.is_empty() {
        s.push(',');
        s.push_str(ops);
    }
    for (i, term) in p.distortion.iter().enumerate() {
        s.push_str(&format!("|p{i}={term:.6}"));
    }
    s.push_str(&format!(
        "|pxY={:.6}|pxZ={:.6}|tx={:.6}|ty={:.6}|tz={:.6}",
        p.pixel_size_y_um, p.pixel_size_z_um, p.tx_deg, p.ty_deg, p.tz_deg
    ));
    if p.radial_mode() == RadialMode::Q {
        s.push_str("|qMode=1");
    }
    push_pixel_shape(&mut s, p);
    s
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Paths of the three files in a directory.
pub fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("Map.bin"),
        dir.join("nMap.bin"),
        dir.join("maskMap.bin"),
    )
}

/// Write `Map.bin`, `nMap.bin` and (when a bin is flagged) `maskMap.bin` into `dir`.
///
/// `frac_factor[p]` multiplies each entry's area into `frac` (C corrections); `None` = 1. Entries of
/// a map that carries its own weights keep them. Positions are pixel centres (raw image).
pub fn write(
    map: &DetectorMap,
    dir: &Path,
    header: &MapHeader,
    frac_factor: Option<&[f64]>,
) -> Result<()> {
    map.check()?;
    let nnz = map.n_entries();
    if nnz > i32::MAX as usize {
        return Err(Error::Invalid(format!(
            "{nnz} map entries exceed the 2^31-1 that nMap.bin's int32 offsets can address"
        )));
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
    let header_bytes = header.to_bytes();
    let mut records = Vec::with_capacity(HEADER_SIZE + nnz * RECORD_SIZE);
    records.extend_from_slice(&header_bytes);
    for k in 0..nnz {
        let pixel = map.pixel[k] as usize;
        let (y, z) = ((pixel % map.n_y) as f32, (pixel / map.n_y) as f32);
        let frac = match &map.weight {
            Some(w) => w[k],
            None => map.area[k] as f64 * frac_factor.map_or(1.0, |f| f[pixel]),
        };
        records.extend_from_slice(&y.to_le_bytes());
        records.extend_from_slice(&z.to_le_bytes());
        records.extend_from_slice(&frac.to_le_bytes());
        records.extend_from_slice(&map.delta_r[k].to_le_bytes());
        records.extend_from_slice(&map.area[k].to_le_bytes());
    }
    let mut nmap = Vec::with_capacity(HEADER_SIZE + map.n_bins() * 8);
    nmap.extend_from_slice(&header_bytes);
    for w in map.indptr.windows(2) {
        nmap.extend_from_slice(&((w[1] - w[0]) as i32).to_le_bytes());
        nmap.extend_from_slice(&(w[0] as i32).to_le_bytes());
    }
    let (map_path, nmap_path, mask_path) = paths(dir);
    let mut files = vec![(map_path, records), (nmap_path, nmap)];
    let masked = map.mask_hit.iter().any(|&m| m != 0);
    if masked {
        let mut mask = Vec::with_capacity(HEADER_SIZE + map.n_bins() * 4);
        mask.extend_from_slice(&header_bytes);
        for &m in &map.mask_hit {
            mask.extend_from_slice(&(m as i32).to_le_bytes());
        }
        files.push((mask_path.clone(), mask));
    }
    write_together(&files)?;
    if !masked && mask_path.exists() {
        // A stale mask map next to a new map would NaN the wrong bins.
        fs::remove_file(&mask_path).map_err(|e| Error::io(mask_path.display().to_string(), e))?;
    }
    Ok(())
}

/// Write every file under a hidden temporary name first and rename them only once all are
/// written: a failure (a full disk, a folder in the way) leaves the previous set whole, never
/// a new Map.bin beside an old nMap.bin, and no temporary behind.
fn write_together(files: &[(PathBuf, Vec<u8>)]) -> Result<()> {
    let temporaries: Vec<PathBuf> = files.iter().map(|(path, _)| hidden_partial(path)).collect();
    let written = files
        .iter()
        .zip(&temporaries)
        .try_for_each(|((_, bytes), tmp)| {
            fs::write(tmp, bytes).map_err(|e| Error::io(tmp.display().to_string(), e))
        });
    // A folder in the way fails every rename after the first: found before any.
    let clear = written.and_then(|()| {
        files.iter().try_for_each(|(path, _)| {
            if path.is_dir() {
                Err(Error::Invalid(format!(
                    "{}: a folder is in the way of the map file",
                    path.display()
                )))
            } else {
                Ok(())
            }
        })
    });
    let renamed = clear.and_then(|()| {
        files
            .iter()
            .zip(&temporaries)
            .try_for_each(|((path, _), tmp)| {
                fs::rename(tmp, path).map_err(|e| Error::io(path.display().to_string(), e))
            })
    });
    if renamed.is_err() {
        for tmp in &temporaries {
            let _ = fs::remove_file(tmp);
        }
    }
    renamed
}

fn hidden_partial(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.partial"))
}

/// What a map read from MIDAS files carried besides the entries.
#[derive(Debug, Clone)]
pub struct ReadInfo {
    pub header: Option<MapHeader>,
    pub hash_matches: Option<bool>,
    pub n_records: usize,
}

/// How a C entry's fractional position is turned into pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// C CPU integrator: bilinear over up to 4 pixels, edge-clamped (spec §5.2).
    Bilinear,
    /// C GPU integrator: the pixel `(int)z·NY + (int)y` (truncation).
    Floor,
}

/// Bilinear pieces of a position as the C CPU integrator samples it (spec §5.2).
pub fn bilinear_pieces(y: f64, z: f64, n_y: usize, n_z: usize) -> [(usize, f64); 4] {
    let axis = |x: f64, n: usize| -> (usize, f64) {
        // C floors in single precision (`floorf`): a position a hair below an integer
        // rounds up to it, leaving a fraction of about -1e-7.
        let mut i = (x as f32).floor() as f64;
        let mut f = x - i;
        if i < 0.0 {
            i = 0.0;
            f = 0.0;
        }
        if n < 2 {
            return (0, 0.0);
        }
        if i >= (n - 1) as f64 {
            i = (n - 2) as f64;
            f = 1.0;
        }
        (i as usize, f)
    };
    let (iy, fy) = axis(y, n_y);
    let (iz, fz) = axis(z, n_z);
    let iy1 = (iy + 1).min(n_y - 1);
    let iz1 = (iz + 1).min(n_z - 1);
    [
        (iz * n_y + iy, (1.0 - fy) * (1.0 - fz)),
        (iz * n_y + iy1, fy * (1.0 - fz)),
        (iz1 * n_y + iy, (1.0 - fy) * fz),
        (iz1 * n_y + iy1, fy * fz),
    ]
}

/// Gradient correction of a position (spec §5.2): move it by −δ (px of pxY) along the direction
/// from (bc_y, bc_z), measured on the detector: `aspect` = pxZ / pxY (1 for square pixels, as C),
/// so a step along Z is δ / aspect rows.
pub fn gradient_shift(
    y: f64,
    z: f64,
    delta_r: f64,
    (bc_y, bc_z): (f64, f64),
    aspect: f64,
) -> (f64, f64) {
    let (dy, dz) = (y - bc_y, z - bc_z);
    let rho = (dy * dy + dz * dz * aspect * aspect).sqrt();
    if delta_r != 0.0 && rho > 1.0 {
        (y - delta_r * dy / rho, z - delta_r * dz / rho)
    } else {
        (y, z)
    }
}

/// Options for reading C maps.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    pub sampling: Sampling,
    /// Beam centre (y, z) for gradient correction; `None` = no correction.
    pub gradient_centre: Option<(f64, f64)>,
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io(path.display().to_string(), e))
}

fn strip_header(bytes: &[u8]) -> (Option<MapHeader>, &[u8]) {
    match MapHeader::parse(bytes) {
        Some(h) => (Some(h), &bytes[HEADER_SIZE..]),
        None => (None, bytes),
    }
}

/// Read `Map.bin`, `nMap.bin` and the optional `maskMap.bin` from `dir` for `params`.
pub fn read(dir: &Path, params: &Params, opts: ReadOptions) -> Result<(DetectorMap, ReadInfo)> {
    params.validate()?;
    let (map_path, nmap_path, mask_path) = paths(dir);
    let map_bytes = read_file(&map_path)?;
    let nmap_bytes = read_file(&nmap_path)?;
    let map_name = map_path.display().to_string();
    let nmap_name = nmap_path.display().to_string();
    let (header, records) = strip_header(&map_bytes);
    let (_, pairs) = strip_header(&nmap_bytes);
    if records.len() % RECORD_SIZE != 0 {
        return Err(Error::format(
            &map_name,
            format!(
                "size after the {} header must be a multiple of {RECORD_SIZE} bytes (y, z, frac, deltaR, areaWeight records), got {} bytes",
                if header.is_some() { "64-byte" } else { "(absent)" },
                records.len()
            ),
        ));
    }
    let r_edges = bins::radial_edges(params)?;
    let eta_edges = bins::eta_edges(params)?;
    let n_bins = (r_edges.len() - 1) * (eta_edges.len() - 1);
    if pairs.len() != n_bins * 8 {
        return Err(Error::format(
            &nmap_name,
            format!(
                "holds {} bins ({} bytes of (count, offset) pairs) but the parameters give {} R bins x {} eta bins = {n_bins}",
                pairs.len() as f64 / 8.0,
                pairs.len(),
                r_edges.len() - 1,
                eta_edges.len() - 1
            ),
        ));
    }
    let n_records = records.len() / RECORD_SIZE;
    let (n_y, n_z) = (params.n_pixels_y, params.n_pixels_z);
    let mut indptr = Vec::with_capacity(n_bins + 1);
    indptr.push(0u64);
    let mut pixel = Vec::new();
    let mut area = Vec::new();
    let mut delta_r = Vec::new();
    let mut weight = Vec::new();
    for b in 0..n_bins {
        let count = i32_at(pairs, 8 * b);
        let offset = i32_at(pairs, 8 * b + 4);
        if count < 0 || offset < 0 || offset as usize + count as usize > n_records {
            return Err(Error::format(
                &nmap_name,
                format!("bin {b}: entries {offset}..{offset}+{count} lie outside Map.bin's {n_records} records"),
            ));
        }
        for k in offset as usize..offset as usize + count as usize {
            let rec = &records[k * RECORD_SIZE..(k + 1) * RECORD_SIZE];
            let (y, z) = (f32_at(rec, 0) as f64, f32_at(rec, 4) as f64);
            let frac = f64_at(rec, 8);
            let dr = f32_at(rec, 16);
            let a = f32_at(rec, 20);
            if !(y.is_finite() && z.is_finite() && frac.is_finite()) {
                return Err(Error::format(
                    &map_name,
                    format!("record {k} holds a non-finite position or weight"),
                ));
            }
            // C writes pixel centres of the image: a position outside it means a map for
            // another detector. Gradient correction may then move it out, which C clamps.
            if !(y > -1.0 && z > -1.0 && y < n_y as f64 && z < n_z as f64) {
                return Err(Error::format(
                    &map_name,
                    format!("record {k}: position ({y}, {z}) is outside the {n_y}x{n_z} image"),
                ));
            }
            let (y, z) = match opts.gradient_centre {
                Some(bc) => gradient_shift(y, z, dr as f64, bc, params.pixel_aspect()),
                None => (y, z),
            };
            let mut first = true;
            let mut push = |p: usize, w: f64| {
                pixel.push(p as u32);
                // The geometric area is counted once per C entry, on its first piece.
                area.push(if first { a } else { 0.0 });
                first = false;
                delta_r.push(dr);
                weight.push(frac * w);
            };
            match opts.sampling {
                Sampling::Floor if opts.gradient_centre.is_none() => {
                    let (iy, iz) = (y as i64, z as i64);
                    if iy < 0 || iz < 0 || iy as usize >= n_y || iz as usize >= n_z {
                        return Err(Error::format(
                            &map_name,
                            format!(
                                "record {k}: position ({y}, {z}) is outside the {n_y}x{n_z} image"
                            ),
                        ));
                    }
                    push(iz as usize * n_y + iy as usize, 1.0);
                }
                _ => {
                    for (p, w) in bilinear_pieces(y, z, n_y, n_z) {
                        if w != 0.0 {
                            push(p, w);
                        }
                    }
                }
            }
        }
        indptr.push(pixel.len() as u64);
    }
    let mask_hit = if mask_path.exists() {
        let bytes = read_file(&mask_path)?;
        let (_, flags) = strip_header(&bytes);
        if flags.len() != n_bins * 4 {
            return Err(Error::format(
                mask_path.display().to_string(),
                format!(
                    "holds {} bytes; expected {n_bins} int32 flags ({} bytes)",
                    flags.len(),
                    n_bins * 4
                ),
            ));
        }
        (0..n_bins)
            .map(|b| u8::from(i32_at(flags, 4 * b) != 0))
            .collect()
    } else {
        vec![0u8; n_bins]
    };
    let mut map = DetectorMap {
        n_y,
        n_z,
        r_edges,
        eta_edges,
        indptr: indptr.into(),
        pixel: pixel.into(),
        area: area.into(),
        delta_r: delta_r.into(),
        weight: Some(weight.into()),
        weights_in_any_order: false,
        mask_hit,
        bin_geometric_area: Vec::new(),
        derived: Default::default(),
    };
    map.bin_geometric_area = map.bin_area();
    map.pool_shared_pixel_weights();
    let hash_matches = header.map(|h| {
        h.param_hash == param_hash(params)
            || h.param_hash
                == <[u8; 32]>::from(Sha256::digest(
                    param_hash_string_midas_integrate(params).as_bytes(),
                ))
    });
    Ok((
        map,
        ReadInfo {
            header,
            hash_matches,
            n_records,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_hash_test_vector() {
        let text = "NrPixelsY 1475\nNrPixelsZ 1679\npx 172\nLsd 657436.895687981043\nBC 685.485459654125 921.034377043941\ntx 0\nty 0.200888234849\ntz 0.446902376310\nRhoD 219964.42411013643\np0 0.000230535992\np1 0.000172564332\np2 -0.000542224078\np3 -13.773706892191\np4 0.001909017437\nRMin 10\nRMax 1200\nRBinSize 0.25\nEtaMin -180\nEtaMax 180\nEtaBinSize 1\nImTransOpt 2\nWavelength 0.172973\n";
        let p = Params::parse(text, "t").unwrap();
        // The spec's string has TransOpt=1,2: one op, value 2.
        let want = "BC=685.485460,921.034377|EtaBinSize=1.000000|EtaMax=180.000000|EtaMin=-180.000000|Lsd=657436.895688|NrPixelsY=1475|NrPixelsZ=1679|RBinSize=0.250000|RMax=1200.000000|RMin=10.000000|RhoD=219964.424110|TransOpt=1,2|p0=0.000231|p1=0.000173|p2=-0.000542|p3=-13.773707|p4=0.001909|p6=0.000000|pxY=172.000000|pxZ=172.000000|tx=0.000000|ty=0.200888|tz=0.446902";
        assert_eq!(param_hash_string(&p), want);
        assert_eq!(
            hex(&param_hash(&p)),
            "a5a7a3c749267634cb19aeb6b071cfbdc4138e9caa8e1ad2a466b78fdbe5be79"
        );
    }

    #[test]
    fn a_rectangular_map_hashes_apart_from_a_square_one() {
        let mut p = Params::parse("NrPixels 10\npx 100\npxZ 250\n", "t").unwrap();
        let square = (param_hash(&p), param_hash_string_midas_integrate(&p));
        p.pixel_shape = "rectangular".into();
        assert!(param_hash_string(&p).ends_with(
            "|pxZ=250.000000|tx=0.000000|ty=0.000000|tz=0.000000|PixelShape=rectangular"
        ));
        assert!(param_hash_string_midas_integrate(&p).ends_with("|PixelShape=rectangular"));
        assert_eq!(
            param_hash_string_midas_integrate(&p)
                .matches("PixelShape")
                .count(),
            1
        );
        assert_ne!(param_hash(&p), square.0);
        assert_ne!(param_hash_string_midas_integrate(&p), square.1);
    }

    #[test]
    fn gradient_shift_steps_along_the_detector_in_px_of_py() {
        // 10 rows above the centre; rows 4× as high: a step of 1 px (pxY) is a quarter row.
        let (y, z) = gradient_shift(5.0, 30.0, 1.0, (5.0, 20.0), 4.0);
        assert!(
            (y - 5.0).abs() < 1e-15 && (z - 29.75).abs() < 1e-15,
            "{y} {z}"
        );
        let (y, z) = gradient_shift(15.0, 20.0, 1.0, (5.0, 20.0), 4.0);
        assert!(
            (y - 14.0).abs() < 1e-15 && (z - 20.0).abs() < 1e-15,
            "{y} {z}"
        );
        assert_eq!(
            gradient_shift(5.0, 30.0, 1.0, (5.0, 20.0), 1.0),
            (5.0, 29.0)
        );
    }

    #[test]
    fn the_map_files_are_replaced_together_or_not_at_all() {
        let dir =
            std::env::temp_dir().join(format!("radint-write-together-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("nMap.bin")).unwrap(); // a folder in nMap.bin's way
        fs::write(dir.join("Map.bin"), b"old map").unwrap();
        let files = vec![
            (dir.join("Map.bin"), b"new map".to_vec()),
            (dir.join("nMap.bin"), b"new nmap".to_vec()),
        ];
        assert!(write_together(&files).is_err());
        assert_eq!(fs::read(dir.join("Map.bin")).unwrap(), b"old map");
        let mut left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["Map.bin", "nMap.bin"]); // no temporary behind
        fs::remove_dir_all(dir.join("nMap.bin")).unwrap();
        write_together(&files).unwrap();
        assert_eq!(fs::read(dir.join("nMap.bin")).unwrap(), b"new nmap");
        assert_eq!(fs::read(dir.join("Map.bin")).unwrap(), b"new map");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bilinear_is_identity_on_integers_and_clamps() {
        let p = bilinear_pieces(3.0, 2.0, 10, 5);
        assert_eq!(p[0], (23, 1.0));
        assert!(p[1..].iter().all(|x| x.1 == 0.0));
        let edge = bilinear_pieces(9.0, 4.0, 10, 5);
        let total: f64 = edge.iter().map(|x| x.1).sum();
        assert!((total - 1.0).abs() < 1e-15);
        assert!(edge.iter().any(|&(p, w)| p == 49 && w == 1.0));
    }
}
