//! Key tables: how many values a key reads, the `pN` distortion keys, the keys DetectorMapper
//! reads (and how), and the canonical name of each alias.

/// How many values a known key reads: the rest of its line is ignored (as by MIDAS's sscanf).
/// `None` for keys that read every value (PeakLocation, PanelGapsY/Z) and for
/// DistortionOrder, which nothing reads.
pub(super) fn values_read(key: &str) -> Option<usize> {
    match key {
        "PeakLocation" | "PanelGapsY" | "PanelGapsZ" | "DistortionOrder" => None,
        "BC" => Some(2),
        "ModuleGaps" => Some(4),
        _ => Some(1),
    }
}

/// `pN` for N in 0..15, spelled as DetectorMapper matches it (`p01`, `p+4` are other keys).
pub(super) fn distortion_index(key: &str) -> Option<usize> {
    let digits = key.strip_prefix('p')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    let index: usize = digits.parse().ok()?;
    (index < 15).then_some(index)
}

/// The keys DetectorMapper's text mode reads (DetectorMapper.c), each matched as `"Key "` at
/// the very start of a line.
#[rustfmt::skip]
const DETECTOR_MAPPER_KEYS: [&str; 56] = [
    "tx", "ty", "tz", "pxY", "pxZ", "NPanelsY", "NPanelsZ", "PanelSizeY", "PanelSizeZ",
    "PanelShiftsFile", "PanelGapsY", "PanelGapsZ", "px", "BC", "Lsd", "RhoD", "MaxRingRad",
    "p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10", "p11", "p12", "p13",
    "p14", "DistortionOrder", "EtaBinSize", "RBinSize", "RMax", "RMin", "EtaMax", "EtaMin",
    "QBinSize", "SubPixelLevel", "SubPixelCardinalWidth", "QMin", "QMax", "Wavelength",
    "NrPixelsY", "NrPixelsZ", "NrPixels", "DistortionFile", "ImTransOpt", "MaskFile",
    "Parallax", "SolidAngleCorrection", "PolarizationCorrection", "PolarizationFraction",
    "ResidualCorrectionMap",
];

/// Whether DetectorMapper passes over a line radint reads as `key`: it has leading blanks or
/// another separator than a space after the key (`RMin\t5`).
pub(super) fn detector_mapper_skips(raw: &str, key: &str) -> bool {
    DETECTOR_MAPPER_KEYS.contains(&key)
        && !raw
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with(' '))
}

/// Aliases radint reads (from other MIDAS tools) that DetectorMapper's text mode does not know.
pub(super) fn detector_mapper_ignores(key: &str) -> bool {
    matches!(
        key,
        "DetDist"
            | "PixelSize"
            | "YPixelSize"
            | "ZPixelSize"
            | "PixelSizeY"
            | "PixelSizeZ"
            | "MinEta"
            | "MaxEta"
            | "MaskFN"
            | "DistortionFN"
    )
}

/// The name validation messages use for a key and its aliases.
pub(super) fn canonical_key(key: &str) -> &str {
    match key {
        "DetDist" => "Lsd",
        "PixelSize" => "px",
        "YPixelSize" | "PixelSizeY" => "pxY",
        "ZPixelSize" | "PixelSizeZ" => "pxZ",
        "MaxRingRad" => "RhoD",
        "MinEta" => "EtaMin",
        "MaxEta" => "EtaMax",
        "MaskFN" => "MaskFile",
        "DistortionFN" => "DistortionFile",
        "OmegaFirstFile" => "OmegaStart",
        "NrPixels" => "NrPixelsY",
        other => other,
    }
}
