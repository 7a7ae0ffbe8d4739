"""radint's exact map against maps written by MIDAS's own C DetectorMapper.

The references (tests/data/midas_c/<case>/c_map.npz, made by make_reference.py next to them as
tests/data/PROVENANCE.md says) hold every (bin, raw pixel) pair of the C map with its Σ
areaWeight, deltaR and record count, the per-bin sums, maskMap.bin and the header hash. Nine
64 × 48 geometries (px 172 µm) that no issue or example uses:

=============  ===========================================================================
flat           Lsd 250 mm, BC (30.3, 20.7) inside, 1 px × 10°
tilted_seam    tx/ty/tz 1.2/0.6/−0.9°, BC (10.4, 35.2), η −190…170° (seam inside), 1.5 px × 7.5°
distorted      ty/tz 0.3/0.4°, p0–p7 ≠ 0, RhoD 80 mm, 1 px × 10°
subpixel       SubPixelLevel 2, SubPixelCardinalWidth 6°, 0.8 px × 5°
transopt_mask  Lsd 850 mm, ImTransOpt 1 + 2, tilts, p0–p3 (D up to ~1.02), a raw-frame mask
               (1 = masked; 2 and 255 are not), 1.25 px × 6°
subpixel_seam  Lsd 420 mm, SubPixelLevel 3 (width 8°), ImTransOpt 2, tilts, BC on a pixel edge
               (Y = 21.5), η −200…160°, 1.5 px × 8°
far_partial    Lsd 900 mm, ty 2°, BC (−12.4, 60.7) off the detector, R 20–90 px and η 110–160°
               cutting through pixels, 2 px × 5°
q_mode         Q bins: QMin 0 (C then hashes the file's RMin), QMax 1.05 not a multiple of
               QBinSize 0.04 Å⁻¹ (C hashes R(QMax), not the last edge), ty/tz, p0–p3, 12° η
eta_over_turn  η −180…200° in 15° bins (more than a turn: the last 30° bin again the first
               pixels, as C does; radint once refused the range), tilts, p0–p3, 1.5 px bins
=============  ===========================================================================

What was measured (radint areas were also checked pair by pair against an independent shapely
clip of the same corner quads: |radint − exact| ≤ 6e-8 px² on all 57,276 pairs of the first six
cases):

* Pairs both maps hold have the same area to the float32 bit for SubPixelLevel 1, and differ by
  ≤ 2.3e-5 px² with sub-pixels away from the η = ±180° seam. deltaR is bit-identical for
  SubPixelLevel 1 (with sub-pixels, area-weighted means that differ by ≤ 4e-3 px).
* The C map never holds a pair radint lacks. The pairs only radint holds are the C defects of
  spec §3.6/§10.2: (a) C skips pieces with A < 1e-5 px² (per sub-pixel record); (b) in a pixel
  that straddles the ±180° seam C's candidate η interval [ηmax, 360 + ηmin] keeps only the inner
  part of the pixel's η extent, losing up to a whole piece (0.51 px² in tilted_seam, bin 96,
  pixel 1931; shapely gives radint's 0.50724284); (c) a straight (sub-)pixel edge that crosses a
  bin circle twice is integrated as the arc, or, when its corners all lie outside the circle, the
  sliver inside goes to the outer bin: an error of at most the circular segment ℓ³/(12 R) per
  circle (ℓ = edge length), e.g. 2.3e-5 px² at R = 10 px in subpixel_seam.
* Hence per bin, away from seam pixels: |ΔA| ≤ 9.9e-6 px² (7.1e-6 relative) for SubPixelLevel 1
  (exactly C's dropped slivers), ≤ 2.5e-5 px² (3.7e-5 relative) with sub-pixels; bins touched by
  seam pixels lose area in C, up to 0.51 px² (54 %) at R = 4 px. Per pixel likewise (≤ 2.8e-5
  px² away from the seam, up to 0.76 px² in seam pixels).
* far_partial found a radint defect, now fixed (regression test below): a pixel straddling
  EtaMin or EtaMax of a partial η range whose only in-range candidate η bin is the edge bin was
  credited whole to that bin (93 pixels, 140 pairs, +48.3 px² in the 38 edge bins; worst bin
  100, R 40–42 px, η 110–115°: radint 8.9286 px², C and shapely 7.1558). C agrees with shapely
  there to 8e-6, and so does radint now.

A randomized comparison with the C programs (80 geometries, tests/data/PROVENANCE.md) found,
besides the above, C behaviours radint does not copy: with RMin 0 and the beam centre on a pixel
corner or edge C drops the pieces that touch the centre (atan2(±0, ±0) fails its η check: R 0–1
px held 0.35 of π px²); with SubPixelLevel > 1 C flags only the first sub-pixel's bins in
maskMap.bin; C's TIFF reader reads uint8 frames as a 0/1 mask, int16 as uint16 and uint32 ≥ 2³¹
as negative int32 (radint reads the stored dtype). A later round (1 100 geometries, session 12)
added one: a piece that already has four vertices (two pixel corners in the bin, two bin corners
in the pixel) skips C's intersection search (``if (nEdges < 4)`` in MapperCore.c), losing the
vertex where a pixel edge crosses an η ray: 0.0033 px² of one pixel (C 0.697971, radint
0.701307, dense sampling of the quad 0.701272).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from radint import DetectorMap, IntegrationConfig, Integrator, _core
from radint.exceptions import InvalidInputError

DATA = Path(__file__).resolve().parent / "data" / "midas_c"
CASES = [
    "flat",
    "tilted_seam",
    "distorted",
    "subpixel",
    "transopt_mask",
    "subpixel_seam",
    "far_partial",
    "q_mode",
    "eta_over_turn",
]


# -------------------------------------------------------------------- independent geometry
def corner_polar(cfg: IntegrationConfig) -> tuple[np.ndarray, np.ndarray]:
    """R (px) and η (deg) of every pixel corner of the transformed frame, shape
    (n_pixels_z + 1, n_pixels_y + 1), corner (j, i) at (y, z) = (i − ½, j − ½).

    Spec §2.2–2.4 written out here, independently of radint (no panels, parallax or maps: the
    cases use none)."""
    y = np.arange(cfg.n_pixels_y + 1) - 0.5
    z = np.arange(cfg.n_pixels_z + 1) - 0.5
    yy, zz = np.meshgrid(y, z)
    cx, cy, cz = np.cos(np.radians([cfg.tx_deg, cfg.ty_deg, cfg.tz_deg]))
    sx, sy, sz = np.sin(np.radians([cfg.tx_deg, cfg.ty_deg, cfg.tz_deg]))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    t = rx @ ry @ rz
    px, lsd = cfg.pixel_size_y_um, cfg.lsd_um
    yc, zc = (cfg.bc_y_px - yy) * px, (zz - cfg.bc_z_px) * px
    a, b, c = (t[k, 1] * yc + t[k, 2] * zc for k in range(3))
    rad = lsd / (lsd + a) * np.hypot(b, c)
    eta = np.degrees(np.arctan2(-b, c))
    rho, et, p = rad / cfg.rho_d_um, np.radians(90 - eta), cfg.distortion
    d = (
        1
        + p[0] * rho**2 * np.cos(2 * et + np.radians(p[6]))
        + p[1] * rho**4 * np.cos(4 * et + np.radians(p[3]))
        + p[2] * rho**2
        + p[4] * rho**6
        + p[5] * rho**4
        + p[7] * rho**4 * np.cos(et + np.radians(p[8]))
        + p[9] * rho**3 * np.cos(3 * et + np.radians(p[10]))
        + p[11] * rho**5 * np.cos(5 * et + np.radians(p[12]))
        + p[13] * rho**6 * np.cos(6 * et + np.radians(p[14]))
    )
    return rad * d / px, eta


def pixel_quads(cfg: IntegrationConfig) -> dict[str, np.ndarray]:
    """Per raw pixel (z·NY + y): corrected-plane quad (n, 4, 2), corner η (n, 4), quad area,
    longest edge, and the nearest distance of the quad to the beam centre."""
    r, eta = corner_polar(cfg)
    e = np.radians(eta)
    xy = np.stack([r * np.cos(e), r * np.sin(e)], axis=-1)
    ids = ((0, 0), (0, 1), (1, 1), (1, 0))  # (dz, dy) walked around the pixel
    nz, ny = cfg.n_pixels_z, cfg.n_pixels_y
    quad = np.stack([xy[dz : dz + nz, dy : dy + ny] for dz, dy in ids], axis=2)
    ceta = np.stack([eta[dz : dz + nz, dy : dy + ny] for dz, dy in ids], axis=2)
    # Transformed pixel (j, i) shows raw pixel raw_of[j, i] (ImTransOpt ops in list order).
    raw_of = np.arange(nz * ny).reshape(nz, ny)
    for op in cfg.im_trans_opt:
        raw_of = {1: raw_of[:, ::-1], 2: raw_of[::-1], 3: raw_of.T}.get(op, raw_of)
    order = np.argsort(raw_of.ravel())
    quad, ceta = quad.reshape(-1, 4, 2)[order], ceta.reshape(-1, 4)[order]
    x, y = quad[..., 0], quad[..., 1]
    area = 0.5 * np.abs(np.sum(x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y, axis=1))
    p, q = quad, np.roll(quad, -1, 1)
    edge = q - p
    length = np.linalg.norm(edge, axis=-1)
    t = np.clip(-np.sum(p * edge, axis=-1) / length**2, 0, 1)
    nearest = np.linalg.norm(p + t[..., None] * edge, axis=-1).min(axis=1)
    cross = x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y  # origin inside ⇔ all of one sign
    holds_centre = np.all(cross > 0, axis=1) | np.all(cross < 0, axis=1)
    nearest[holds_centre] = 0.0
    return {
        "quad": quad,
        "eta": ceta,
        "area": area,
        "edge": length.max(axis=1),
        "nearest": nearest,
        "far": np.linalg.norm(quad, axis=-1).max(axis=1),
    }


# ------------------------------------------------------------------------- the two maps
@dataclasses.dataclass
class Case:
    cfg: IntegrationConfig
    m: DetectorMap
    c: dict[str, np.ndarray]
    geo: dict[str, np.ndarray]
    bin: np.ndarray  # union of the two maps' (bin, pixel) pairs, sorted
    pixel: np.ndarray
    a_r: np.ndarray  # radint area of the pair (0 = not in radint's map)
    a_c: np.ndarray  # Σ C areaWeight of the pair (0 = not in the C map)
    dr_r: np.ndarray
    dr_c: np.ndarray
    seam: np.ndarray  # per pair: the pixel straddles η = ±180° (C's unwrap path)

    @property
    def n_pixels(self) -> int:
        return self.cfg.n_pixels_y * self.cfg.n_pixels_z

    @property
    def r_lo(self) -> np.ndarray:
        return self.m.r_edges_px[self.bin // self.m.n_eta]

    def bound(self) -> np.ndarray:
        """Per pair: how far the C area may lie from the exact one without a C defect other
        than those of the module docstring (seam pixels excluded): float32 rounding, up to
        n² dropped sub-pixel records of < 1e-5 px², and one circular segment ℓ³/(12 R) on each
        of the bin's two circles (ℓ = the pixel's longest edge, R ≥ R_lo)."""
        n = self.cfg.sub_pixel_level
        ell = self.geo["edge"][self.pixel]
        with np.errstate(divide="ignore"):  # a bin from R = 0 has no bound
            return 1e-6 * np.maximum(self.a_r, self.a_c) + n * n * 1e-5 + ell**3 / (6 * self.r_lo)


def measured(case: str, what: str) -> float:
    """Thresholds just above the measured C-vs-radint area differences away from the seam,
    (all within ``Case.bound``): C's dropped or moved slivers. In q_mode (ty/tz tilts and
    distortion, 1.6 px bins) they reach 8.6e-5 px² per piece, 1.7e-4 per pixel."""
    sub = load(case).cfg.sub_pixel_level > 1
    if case == "q_mode":
        return {"piece": 1e-4, "pixel": 2e-4, "bin": 1e-4, "bin_relative": 3e-5}[what]
    return {"piece": 5e-5 if sub else 1e-5, "pixel": 5e-5, "bin": 3e-5,
            "bin_relative": 5e-5 if sub else 1e-5}[what]  # fmt: skip


@functools.cache
def load(case: str) -> Case:
    cfg = IntegrationConfig.from_midas_params(DATA / case / "params.txt")
    c = dict(np.load(DATA / case / "c_map.npz"))
    m = DetectorMap.build(cfg, n_threads=1)
    n_px = cfg.n_pixels_y * cfg.n_pixels_z
    b_r = np.repeat(np.arange(m.n_bins), np.diff(m.indptr.astype(np.int64)))
    key_r = b_r * n_px + m.pixel
    key_c = c["bin"].astype(np.int64) * n_px + c["pixel"]
    assert len(np.unique(key_r)) == len(key_r)  # radint: one entry per (bin, pixel)
    key = np.union1d(key_r, key_c)
    ir, ic = np.searchsorted(key, key_r), np.searchsorted(key, key_c)

    def scatter(idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        out = np.zeros(len(key))
        out[idx] = values
        return out

    geo = pixel_quads(cfg)
    eta = geo["eta"]
    pixel = key % n_px
    return Case(
        cfg=cfg,
        m=m,
        c=c,
        geo=geo,
        bin=key // n_px,
        pixel=pixel,
        a_r=scatter(ir, m.area),
        a_c=scatter(ic, c["area"]),
        dr_r=scatter(ir, m.delta_r),
        dr_c=scatter(ic, c["delta_r"]),
        # Spans of 180° ± rounding (numpy versions round such a corner either way) count too.
        seam=(eta.max(axis=1) - eta.min(axis=1) > 180 - 1e-9)[pixel],
    )


# ---------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", CASES)
def test_c_header_hash_equals_radints(case):
    k = load(case)
    assert bytes(k.c["header_hash"]).hex() == _core.param_hash(k.cfg.core_dict())[1]


@pytest.mark.parametrize("case", CASES)
def test_geometry_helper_agrees_with_radint(case):
    """The test's own spec §2 geometry (used below for seams and quad areas) matches radint:
    pixels wholly inside the binned R range and η range hold exactly their quad's area."""
    k = load(case)
    cfg, geo = k.cfg, k.geo
    lo, hi = cfg.eta_min_deg, cfg.eta_max_deg
    turns, most = np.ones(k.n_pixels), np.ones(k.n_pixels)
    if hi - lo > 360:  # η past lo + 360 (to the last bin's edge) is binned again, as in C
        again = np.mod(geo["eta"] - lo, 360) <= k.m.n_eta * cfg.eta_bin_deg - 360
        eta_inside = again.all(axis=1) | ~again.any(axis=1)
        turns += again.all(axis=1)
        most += again.any(axis=1)
    elif hi - lo == 360:
        eta_inside = np.ones(k.n_pixels, bool)
    else:  # a wedge < 180° is convex: corners inside ⇒ quad inside (no seam in these cases)
        eta_inside = np.all((geo["eta"] >= lo) & (geo["eta"] <= hi), axis=1)
    inside = (geo["nearest"] >= cfg.r_min_px) & (geo["far"] <= cfg.r_max_px) & eta_inside
    per_pixel = np.bincount(k.m.pixel, k.m.area.astype(np.float64), k.n_pixels)
    masked = per_pixel == 0 if cfg.mask_file else np.zeros(k.n_pixels, bool)
    sel = inside & ~masked
    assert sel.sum() > 0.5 * k.n_pixels
    np.testing.assert_allclose(per_pixel[sel], (turns * geo["area"])[sel], rtol=2e-6)
    assert np.all(per_pixel <= most * geo["area"] * (1 + 2e-6))


# Without tilt or distortion the detector plane is the corrected plane, so sectors are exact.
@pytest.mark.parametrize("case", ["flat", "subpixel"])
def test_bins_inside_the_detector_hold_the_exact_sector(case):
    """Bins that lie wholly on the detector must hold ½(R₂² − R₁²)·Δη exactly; near the beam
    centre the C map does not (it loses up to half a bin at the seam), radint does."""
    k = load(case)
    cfg, m = k.cfg, k.m
    assert not (cfg.tx_deg or cfg.ty_deg or cfg.tz_deg or any(cfg.distortion))
    inscribed = min(cfg.bc_y_px + 0.5, cfg.n_pixels_y - 0.5 - cfg.bc_y_px,
                    cfg.bc_z_px + 0.5, cfg.n_pixels_z - 0.5 - cfg.bc_z_px)  # fmt: skip
    edges = m.r_edges_px
    sector = 0.5 * (edges[1:] ** 2 - edges[:-1] ** 2) * np.deg2rad(cfg.eta_bin_deg)
    full = np.repeat(edges[1:] < inscribed, m.n_eta)
    want = np.repeat(sector, m.n_eta)[full]
    np.testing.assert_allclose(m.bin_geometric_area[full], want, rtol=1e-6)
    assert (np.abs(k.c["bin_area"][full] - want) / want).max() > 1e-3  # the C defect


@pytest.mark.parametrize("case", CASES)
def test_every_c_pair_is_in_radints_map(case):
    k = load(case)
    assert not np.any((k.a_c > 0) & (k.a_r == 0))


@pytest.mark.parametrize("case", CASES)
def test_shared_pairs_agree_within_the_c_defect_bound(case):
    """Per (bin, pixel) held by both maps, seam pixels aside: |ΔA| ≤ the bound of
    ``Case.bound``. Measured: bit-identical for SubPixelLevel 1; ≤ 2.3e-5 px² with sub-pixels
    (C's chord-as-arc / sliver reassignment, C's dropped sub-pixel slivers)."""
    k = load(case)
    both = (k.a_r > 0) & (k.a_c > 0) & ~k.seam
    diff = np.abs(k.a_c - k.a_r)
    assert np.all(diff[both] <= k.bound()[both])
    if case == "q_mode":  # two pairs at R 11–14 px trade a 1.3e-5 px² sliver (C's chord-as-arc)
        limit = 2e-5
    else:
        limit = 1e-6 * k.a_r[both] if k.cfg.sub_pixel_level == 1 else 5e-5
    assert np.all(diff[both] <= limit)


@pytest.mark.parametrize("case", CASES)
def test_pairs_only_radint_holds_are_c_dropped_pieces(case):
    """Away from the seam, a pair the C map lacks is a piece C skipped (A < 1e-5 px² per
    record, or a sliver it moved to the next R bin): within ``Case.bound``; measured ≤ 2.3e-5 px²
    (sub-pixels), < 1e-5 px² otherwise. In seam pixels C loses whole pieces (up to 0.51 px²)."""
    k = load(case)
    only = (k.a_r > 0) & (k.a_c == 0)
    away = only & ~k.seam
    assert np.all(k.a_r[away] <= k.bound()[away])
    assert np.all(k.a_r[away] < measured(case, "piece"))
    worst_seam = {"flat": 0.150224, "tilted_seam": 0.507243, "transopt_mask": 0.112213}
    if case in worst_seam:  # the pieces C's seam unwrap loses (shapely agrees with radint)
        assert k.a_r[only & k.seam].max() == pytest.approx(worst_seam[case], abs=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_per_pixel_area(case):
    """Σ area per pixel: radint's is the quad area inside the binned region (see
    test_geometry_helper_agrees_with_radint); C's differs by what the pair tests allow, away
    from the seam (measured ≤ 2.3e-5 px²); seam pixels lose up to 0.76 px² in C."""
    k = load(case)
    pr = np.bincount(k.pixel, k.a_r, k.n_pixels)
    pc = np.bincount(k.pixel, k.a_c, k.n_pixels)
    bound = np.bincount(k.pixel, k.bound(), k.n_pixels)
    seam_px = np.zeros(k.n_pixels, bool)
    seam_px[k.pixel[k.seam]] = True
    diff = np.abs(pr - pc)
    assert np.all(diff[~seam_px] <= bound[~seam_px])
    assert diff[~seam_px].max() < measured(case, "pixel")
    assert np.all(pc[seam_px] <= pr[seam_px] + 1e-5)  # C only loses area in seam pixels


@pytest.mark.parametrize("case", CASES)
def test_per_bin_area(case):
    """Σ area per bin (unmasked pixels): the same bins are reached; bins no seam pixel touches
    agree within the summed pair bounds, measured ≤ 9.9e-6 px² and 7.1e-6 relative (bins of
    ≥ 0.2 px²) for SubPixelLevel 1, ≤ 2.5e-5 px² and 3.7e-5 relative with sub-pixels; bins
    touched by seam pixels only lose area in C (up to 54 % at R < 6 px)."""
    k = load(case)
    n = k.m.n_bins
    br = np.bincount(k.bin, k.a_r, n)
    bc = k.c["bin_area"]
    np.testing.assert_allclose(np.bincount(k.bin, k.a_c, n), bc, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(br > 0, bc > 0)
    seam_bin = np.zeros(n, bool)
    seam_bin[k.bin[k.seam]] = True
    diff = np.abs(br - bc)
    assert np.all(diff[~seam_bin] <= np.bincount(k.bin, k.bound(), n)[~seam_bin])
    # Bins starting within 5 px of the beam centre (q_mode's first Q bins, from R = 0): C's
    # chord-for-arc error ℓ³/(12 R) is large there (up to 0.15 px² at R < 1.6 px).
    far = ~seam_bin & (k.m.r_edges_px[np.arange(n) // k.m.n_eta] >= 5)
    assert diff[far].max() < measured(case, "bin")
    big = far & (br > 0.2)
    assert (diff[big] / br[big]).max() < measured(case, "bin_relative")
    assert np.all(bc[seam_bin] <= br[seam_bin] + 1e-5)


@pytest.mark.parametrize("case", CASES)
def test_delta_r_agrees(case):
    """deltaR (R of the pixel centre − bin centre, float32) is bit-identical for SubPixelLevel 1
    (allowed 1e-6 px); with sub-pixels both are area-weighted means over the sub-pixel pieces
    and differ only where the areas do (measured ≤ 4e-3 px, in seam pixels)."""
    k = load(case)
    both = (k.a_r > 0) & (k.a_c > 0)
    diff = np.abs(k.dr_r - k.dr_c)[both]
    assert diff.max() <= (1e-6 if k.cfg.sub_pixel_level == 1 else 5e-3)
    same_area = np.abs(k.a_r - k.a_c)[both] <= 1e-6 * k.a_r[both]
    if k.cfg.sub_pixel_level > 1:
        assert np.median(diff[same_area]) < 1e-6


def test_mask_entries_and_flags():
    """transopt_mask: the mask TIFF is in the raw frame (ImTransOpt 1, 2 apply to it); only the
    value 1 masks. Masked pixels have no entries in either map. The bins flagged for masked
    pixels (maskMap.bin, NaN under compat="midas-cpu") are C's: every candidate bin of each
    masked pixel's corner box, a superset of the bins they overlap (245 ⊇ 224). radint flagged
    only the overlapped ones, so its own map NaNed fewer bins than IntegratorZarrOMP."""
    import tifffile

    k = load("transopt_mask")
    raw = tifffile.imread(DATA / "transopt_mask" / "mask.tif").ravel()
    masked = raw == 1
    assert not np.any(masked[k.pixel])
    for value in (2, 255):  # not masks for MIDAS
        assert np.all(np.isin(np.flatnonzero(raw == value), k.c["pixel"]))
        assert np.all(np.isin(np.flatnonzero(raw == value), k.m.pixel))
    unmasked = DetectorMap.build(dataclasses.replace(k.cfg, mask_file=""), n_threads=1)
    b = np.repeat(np.arange(unmasked.n_bins), np.diff(unmasked.indptr.astype(np.int64)))
    touched = np.zeros(unmasked.n_bins, bool)
    touched[b[masked[unmasked.pixel]]] = True
    hit, c_hit = k.m.mask_hit.astype(bool), k.c["mask_map"].astype(bool)
    np.testing.assert_array_equal(hit, c_hit)
    assert np.all(hit[touched]) and (touched.sum(), hit.sum()) == (224, 245)
    # radint's geometric bin area counts masked pixels too (coverage = area / it).
    per_bin = np.bincount(b, unmasked.area.astype(np.float64), unmasked.n_bins)
    np.testing.assert_allclose(k.m.bin_geometric_area, per_bin, rtol=1e-6, atol=1e-9)


def test_pixel_straddling_a_partial_eta_range_is_clipped():
    """far_partial, bin 169 (R 52–54 px, η 155–160°), raw pixel 709 (y 5, z 11): corners at
    η 161.38, 160.36, 159.995, 161.03°, so only a 2.8072e-5 px² corner lies below EtaMax = 160°
    (C: 2.807200508e-05, shapely: 2.807200518e-05); radint gave the whole quad, 1.000424."""
    k = load("far_partial")
    sel = (k.bin == 169) & (k.pixel == 709)
    assert k.a_c[sel][0] == pytest.approx(2.8072005e-5, rel=1e-6)
    assert k.a_r[sel][0] == pytest.approx(k.a_c[sel][0], rel=1e-5)


# ---------------------------------------------------------------- integration with C maps
def unpack_distorted(tmp_path: Path) -> None:
    for name in ("Map.bin", "nMap.bin"):
        with (
            gzip.open(DATA / "distorted" / f"{name}.gz", "rb") as src,
            open(tmp_path / name, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)


def test_real_c_map_files_load_with_matching_hash_and_integrate(tmp_path):
    """The distorted case's Map.bin/nMap.bin as the C program wrote them: the header hash equals
    radint's C-compatible hash, the per-bin areas are the C ones, and a flat image integrates to
    1 in every reached bin under the C CPU rules (bilinear sampling)."""
    unpack_distorted(tmp_path)
    k = load("distorted")
    c_map = DetectorMap.load_midas(tmp_path, k.cfg)
    assert c_map.midas_header["hash_matches"] is True
    np.testing.assert_allclose(c_map.bin_geometric_area, k.c["bin_area"], rtol=1e-12)
    r = Integrator(k.cfg, detector_map=c_map, compat="midas-cpu").integrate(np.ones(k.cfg.shape))
    reached = r.area > 0
    # C stores frac as float64 and areaWeight as float32: their ratio is 1 to float32 precision.
    np.testing.assert_allclose(r.cake[reached], 1.0, rtol=1e-7)


def test_c_integrator_numbers_are_reproduced_bit_for_bit(tmp_path):
    """MIDAS's IntegratorZarrOMP (-paramFN params.txt -dataFN ring.tif, same commit) integrated
    ring.tif (uint16, three rings, Poisson noise) with the C map above; radint with that map and
    compat="midas-cpu" gives the same cake (incl. its NaN bins) and lineout to the last bit."""
    import tifffile

    unpack_distorted(tmp_path)
    k = load("distorted")
    ref = np.load(DATA / "distorted" / "c_integrator_ring.npz")
    frame = tifffile.imread(DATA / "distorted" / "ring.tif")
    c_map = DetectorMap.load_midas(tmp_path, k.cfg)
    r = Integrator(k.cfg, detector_map=c_map, compat="midas-cpu").integrate(frame)
    np.testing.assert_array_equal(r.cake.T, ref["cake_r_eta"])
    np.testing.assert_array_equal(r.lineout, ref["lineout"])


def test_sum_images_adds_masked_bins_before_their_nan(tmp_path):
    """distorted_mask: the distorted geometry with transopt_mask's mask.tif and SumImages 1, run
    through DetectorMapper and IntegratorZarrOMP (PROVENANCE.md). C NaNs the 202 bins a masked
    pixel touched in each frame's cake but adds their intensities from before that NaN into
    /SumFrames (spec §5.5); radint's caked.hdf and Integrator.sum_images do the same, and the
    pre-NaN values follow a frame through Result.frame and Result.concatenate."""
    import h5py
    import tifffile

    from radint import Result
    from radint.io import write_midas_caked

    case = DATA / "distorted_mask"
    for name in ("Map.bin", "nMap.bin", "maskMap.bin"):
        with gzip.open(case / f"{name}.gz", "rb") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    shutil.copy(case / "mask.tif", tmp_path / "mask.tif")
    cfg = IntegrationConfig.from_midas_params(case / "params.txt")
    assert cfg.sum_images
    ref = np.load(case / "c_sum_frames.npz")
    frame = tifffile.imread(DATA / "distorted" / "ring.tif")
    c_map = DetectorMap.load_midas(tmp_path, cfg)
    integ = Integrator(cfg, detector_map=c_map, compat="midas-cpu")
    r = integ.integrate_stack([frame, frame])
    assert np.isnan(ref["frame0"]).sum() == 202
    for k in range(2):
        np.testing.assert_array_equal(r.cake[k].T, ref["frame0"])
    assert not np.isnan(ref["sum_frames"]).any()
    with h5py.File(write_midas_caked(r.frame(0), tmp_path / "one.caked.hdf"), "r") as f:
        np.testing.assert_allclose(f["SumFrames"][...], ref["sum_frames"], rtol=1e-12, atol=0)
    with h5py.File(write_midas_caked(r, tmp_path / "two.caked.hdf"), "r") as f:
        np.testing.assert_allclose(f["SumFrames"][...], 2 * ref["sum_frames"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(
        Integrator.sum_images(r).cake[0].T, 2 * ref["sum_frames"], rtol=1e-12
    )
    # OmegaSumFrames keeps C's NaN in those bins.
    assert np.isnan(Integrator.sum_frames(r).cake[0]).sum() == 202
    joined = Result.concatenate([r.frame(1), r.frame(0)])
    np.testing.assert_array_equal(joined.cakes_before_mask_nan(), r.cakes_before_mask_nan())


def _h5_tree(path: Path) -> dict[str, tuple[np.ndarray, dict]]:
    import h5py

    tree: dict[str, tuple[np.ndarray, dict]] = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                tree.__setitem__(name, (obj[...], dict(obj.attrs)))
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
    return tree


def _unpack(case: str, names: tuple[str, ...], tmp_path: Path) -> None:
    for name in names:
        with (
            gzip.open(DATA / case / f"{name}.gz", "rb") as src,
            open(tmp_path / name.removeprefix("c_"), "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)


def _assert_same_caked(got: Path, want: Path) -> None:
    """Same datasets, values to 1e-12 (NaN where C has NaN), same attributes with C's types."""
    got_tree, want_tree = _h5_tree(got), _h5_tree(want)
    assert sorted(got_tree) == sorted(want_tree)
    for name, (c_values, c_attrs) in want_tree.items():
        values, attrs = got_tree[name]
        np.testing.assert_allclose(values, c_values, rtol=1e-12, atol=0, err_msg=name)
        assert sorted(attrs) == sorted(c_attrs), name
        for key, c_value in c_attrs.items():
            value = attrs[key]
            assert type(value) is type(c_value), (name, key, value, c_value)
            assert getattr(value, "dtype", None) == getattr(c_value, "dtype", None), (name, key)
            assert np.array_equal(value, c_value), (name, key, value, c_value)
    assert _attribute_types(got) == _attribute_types(want)


def _attribute_types(path: Path) -> dict[tuple[str, str], tuple]:
    """Each attribute's stored HDF5 type as a C reader sees it: class, size, string padding and
    shape (H5LTset_attribute_string: scalar, strlen + 1 bytes, NUL-terminated)."""
    import h5py

    types: dict[tuple[str, str], tuple] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            for key in obj.attrs:
                attribute = obj.attrs.get_id(key)
                stored = attribute.get_type()
                pad = stored.get_strpad() if isinstance(stored, h5py.h5t.TypeStringID) else None
                types[name, key] = (stored.get_class(), stored.get_size(), pad, attribute.shape)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return types


def test_c_integrator_output_files_are_reproduced(tmp_path):
    """IntegratorZarrOMP's own files for ring.tif (c_ring.tif.caked.hdf.gz, c_ring_lineout.bin
    and .xy): radint's caked.hdf has the same datasets and values (1e-12; 2θ/Q of REtaMap from
    the bin edges, as C) and the same attributes with C's types ((1,) int32/float64 arrays,
    fixed-length byte strings); its _lineout.bin is byte-identical, its _lineout.xy
    text-identical."""
    import tifffile

    from radint.io import write_lineout_bin, write_lineout_xy, write_midas_caked

    unpack_distorted(tmp_path)
    _unpack("distorted", ("c_ring.tif.caked.hdf",), tmp_path)
    k = load("distorted")
    c_map = DetectorMap.load_midas(tmp_path, k.cfg)
    frame = tifffile.imread(DATA / "distorted" / "ring.tif")
    r = Integrator(k.cfg, detector_map=c_map, compat="midas-cpu").integrate(frame)
    _assert_same_caked(
        write_midas_caked(r, tmp_path / "ring.caked.hdf"), tmp_path / "ring.tif.caked.hdf"
    )
    line_bin = write_lineout_bin(r, tmp_path / "ring_lineout.bin")
    assert line_bin.read_bytes() == (DATA / "distorted" / "c_ring_lineout.bin").read_bytes()
    line_xy = write_lineout_xy(r, tmp_path / "ring_lineout.xy")
    assert line_xy.read_text() == (DATA / "distorted" / "c_ring_lineout.xy").read_text()


@pytest.mark.parametrize("case", ["mask_empty_bin", "distorted_mask"])
def test_own_map_flags_the_bins_detectormapper_flags_for_masked_pixels(case, tmp_path):
    """Regression: radint flagged only the bins a masked pixel overlaps, DetectorMapper every
    bin of its corner box (overlap or not), so `--compat midas-cpu` on radint's own map left
    numbers where IntegratorZarrOMP writes NaN (a sweep: 250 bins in 62 cases). radint's
    maskMap.bin is now C's, bit for bit."""
    from radint.cli import main

    _unpack(case, ("maskMap.bin",), tmp_path)
    out = tmp_path / "own"
    assert main(["map", str(DATA / case / "params.txt"), "-o", str(out)]) == 0
    c_bytes = (tmp_path / "maskMap.bin").read_bytes()
    own = (out / "maskMap.bin").read_bytes()
    c_flags = np.frombuffer(c_bytes[64:], np.int32)
    assert c_flags.sum() > 0 and np.array_equal(np.frombuffer(own[64:], np.int32), c_flags)


@pytest.mark.parametrize("case", ["mask_empty_bin", "no_wavelength"])
def test_c_integrator_files_of_small_cases_are_reproduced(case, tmp_path):
    """IntegratorZarrOMP's caked.hdf and _lineout.xy, from radint with the C map:

    * mask_empty_bin: a mask block covers whole bins. C writes NaN in every bin a masked pixel
      touched, also those only masked pixels reach (area 0), and 0 in bins no pixel reaches
      (radint once wrote 0 in the wholly masked bins).
    * no_wavelength: no Wavelength line. C writes REtaMap's Q and InstrumentParameters/Lam for
      its default λ 0.172978 Å (radint once wrote 0)."""
    import tifffile

    from radint.io import write_lineout_xy, write_midas_caked

    names = ["Map.bin", "nMap.bin", "c_frame.tif.caked.hdf"]
    if (DATA / case / "maskMap.bin.gz").exists():
        names.append("maskMap.bin")
    _unpack(case, tuple(names), tmp_path)
    cfg = IntegrationConfig.from_midas_params(DATA / case / "params.txt")
    c_map = DetectorMap.load_midas(tmp_path, cfg)
    frame = tifffile.imread(DATA / "mask_empty_bin" / "frame.tif")
    r = Integrator(cfg, detector_map=c_map, compat="midas-cpu").integrate(frame)
    got = write_midas_caked(r, tmp_path / "frame.caked.hdf")
    _assert_same_caked(got, tmp_path / "frame.tif.caked.hdf")
    c_tree = _h5_tree(tmp_path / "frame.tif.caked.hdf")
    if case == "mask_empty_bin":  # the case exercises wholly masked bins
        area = c_tree["REtaMap"][0][3]
        assert np.isnan(c_tree["IntegrationResult/FrameNr_0"][0][area == 0]).any()
    else:
        assert cfg.wavelength_angstrom == 0 and c_tree["InstrumentParameters/Lam"][0] == 0.172978
    line_xy = write_lineout_xy(r, tmp_path / "frame_lineout.xy")
    assert line_xy.read_text() == (DATA / case / "c_frame_lineout.xy").read_text()


@pytest.mark.parametrize("command", ["integrate", "batch", "batch-pool"])
def test_cli_with_compat_and_the_c_map_writes_integratorzarromps_files(command, tmp_path):
    """`radint integrate|batch ... --format midas,xy --compat midas-cpu --midas-map DIR` writes
    IntegratorZarrOMP's caked.hdf and _lineout.xy (mask_empty_bin: masked-touched bins NaN, the
    nonzero-mean lineout); without the options the CLI had only radint's own rules and map."""
    from radint.cli import main

    case = DATA / "mask_empty_bin"
    maps = tmp_path / "c_map"
    maps.mkdir()
    _unpack("mask_empty_bin", ("Map.bin", "nMap.bin", "maskMap.bin"), maps)
    _unpack("mask_empty_bin", ("c_frame.tif.caked.hdf",), tmp_path)
    frame = tmp_path / "frame.tif"
    shutil.copy(case / "frame.tif", frame)
    out = tmp_path / "out"
    rules = ["--format", "midas,xy", "--compat", "midas-cpu", "--midas-map", str(maps)]
    if command == "integrate":
        argv = ["integrate", str(case / "params.txt"), str(frame), "-o", str(out), *rules]
    else:
        argv = ["batch", "-paramFN", str(case / "params.txt"), "-dataFN", str(frame),
                "-resultFolder", str(out), *rules]  # fmt: skip
        if command == "batch-pool":  # the worker processes get the rules too
            argv += ["-nCPUs", "2"]
    assert main(argv) == 0
    _assert_same_caked(out / "frame.caked.hdf", tmp_path / "frame.tif.caked.hdf")
    assert (out / "frame_lineout.xy").read_text() == (case / "c_frame_lineout.xy").read_text()


def test_c_gradient_correction_is_reproduced(tmp_path):
    """IntegratorZarrOMP with GradientCorrection 1 on the same C map and ring.tif
    (c_integrator_ring_gradient.npz): every entry is sampled bilinearly at its position moved
    by −δR towards its bin's centre radius. Edge pixels move off the image there (C clamps;
    radint once refused the map). radint with the C map reproduces it to rounding (the C
    multiplies the bilinear sum by frac, radint folds frac into each piece's weight); it
    differs from the uncorrected C cake by up to 38 %."""
    import tifffile

    unpack_distorted(tmp_path)
    cfg = load("distorted").cfg.replace(gradient_correction=True)
    ref = np.load(DATA / "distorted" / "c_integrator_ring_gradient.npz")
    plain = np.load(DATA / "distorted" / "c_integrator_ring.npz")["cake_r_eta"]
    frame = tifffile.imread(DATA / "distorted" / "ring.tif")
    c_map = DetectorMap.load_midas(tmp_path, cfg)
    assert c_map.gradient_corrected
    r = Integrator(cfg, detector_map=c_map, compat="midas-cpu").integrate(frame)
    np.testing.assert_allclose(r.cake.T, ref["cake_r_eta"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(r.lineout, ref["lineout"], rtol=1e-12, atol=0)
    with np.errstate(invalid="ignore"):  # NaN bins of the C cake
        assert np.nanmax(np.abs(ref["cake_r_eta"] - plain) / plain) > 0.3


@pytest.mark.parametrize("corrections", [("solid_angle_correction",),
                                         ("polarization_correction",),
                                         ("solid_angle_correction", "polarization_correction")])  # fmt: skip
def test_gradient_correction_weighs_by_the_entry_pixels_correction(corrections, small_config,
                                                                   tmp_path):  # fmt: skip
    """Regression: with GradientCorrection and solid angle / polarization, IntegratorZarrOMP
    multiplies the value sampled at the shifted point by the correction of the entry's own
    pixel (baked into Map.bin's frac); radint's own map under compat="midas-cpu" divided
    each bilinear piece by its sampled pixel's correction instead (up to 1.7e-4 from the C
    program in a sweep). Now its own map equals its Map.bin read the C way (which reproduces
    the C program, see test_c_gradient_correction_is_reproduced) to rounding."""
    from radint.testing import ring_image

    cfg = small_config.replace(gradient_correction=True, **dict.fromkeys(corrections, True))
    frame = ring_image(cfg, dtype=np.uint16)
    own = Integrator(cfg, compat="midas-cpu").integrate(frame)
    DetectorMap.build(cfg.replace(gradient_correction=False)).save_midas(tmp_path, cfg)
    c_way = DetectorMap.load_midas(tmp_path, cfg, gradient_correction=True)
    want = Integrator(cfg, detector_map=c_way, compat="midas-cpu").integrate(frame)
    np.testing.assert_allclose(own.cake, want.cake, rtol=1e-12, atol=1e-12)
    plain = Integrator(cfg.replace(gradient_correction=False), compat="midas-cpu").integrate(frame)
    assert np.nanmax(np.abs(own.cake - plain.cake)) > 0  # the correction did apply
    # Regression: another Integrator given this one's map applied the corrections again.
    first = Integrator(cfg, compat="midas-cpu")
    shared = Integrator(cfg, compat="midas-cpu", detector_map=first.map).integrate(frame)
    np.testing.assert_array_equal(shared.cake, own.cake)
    with pytest.raises(InvalidInputError, match="at each entry's pixel"):
        Integrator(cfg, detector_map=first.map)  # radint's rules correct after resampling


def test_radint_map_gradient_correction_agrees_with_c(tmp_path):
    """GradientCorrection on radint's own map (DetectorMap.with_gradient_correction, applied
    by the Integrator when the config asks): against the C program's numbers above, median
    relative difference 8e-9 and ≤ 1.1e-6 in every bin from R = 3 px out; the two innermost
    rings differ by up to 3.5 % where the C map loses seam pieces (see the docstring above).
    Without the correction radint's cake is up to 38 % away."""
    import tifffile

    k = load("distorted")
    cfg = k.cfg.replace(gradient_correction=True)
    ref = np.load(DATA / "distorted" / "c_integrator_ring_gradient.npz")["cake_r_eta"]
    frame = tifffile.imread(DATA / "distorted" / "ring.tif")
    integ = Integrator(cfg, compat="midas-cpu")
    assert integ.map.gradient_corrected and not integ.map.corrections_folded
    assert k.m.with_gradient_correction(cfg).n_entries > k.m.n_entries
    off = Integrator(k.cfg, compat="midas-cpu").integrate(frame).cake.T
    with np.errstate(invalid="ignore"):  # NaN bins of the C cake
        rel = np.abs(integ.integrate(frame).cake.T - ref) / np.abs(ref)
        assert np.nanmedian(rel) < 1e-7
        assert np.nanmax(rel[2:]) < 2e-6
        assert np.nanmax(np.abs(off - ref) / np.abs(ref)) > 0.3


def test_gradient_correction_keeps_corrections_and_flips():
    """The gradient-resampled map still takes solid-angle/polarization factors (its weights
    are areas × bilinear coefficients, not C fracs), and an ImTransOpt flip of the frame gives
    the same cake as the unflipped frame with the unflipped geometry."""
    from radint.testing import ring_image

    cfg = IntegrationConfig(
        n_pixels_y=40, n_pixels_z=36, pixel_size_y_um=172.0, pixel_size_z_um=172.0,
        lsd_um=200_000.0, bc_y_px=17.3, bc_z_px=20.6, r_min_px=2.0, r_max_px=18.0,
        r_bin_px=1.0, eta_bin_deg=30.0, wavelength_angstrom=0.2, gradient_correction=True,
    )  # fmt: skip
    frame = ring_image(cfg, noise=False, dtype=np.float64)
    base = Integrator(cfg).integrate(frame)
    corrected = Integrator(cfg.replace(solid_angle_correction=True)).integrate(frame)
    assert corrected.metadata.get("backend") == "cpu"
    ratio = corrected.cake / base.cake
    assert np.nanmin(ratio) > 1.0  # 1 / cos³2θ > 1 off the beam
    flipped = Integrator(cfg.replace(im_trans_opt=(1,), bc_y_px=39 - cfg.bc_y_px))
    np.testing.assert_allclose(flipped.integrate(frame[:, ::-1]).cake, base.cake, rtol=1e-10)


def test_c_map_and_radint_map_integrate_alike(tmp_path):
    """ring.tif integrated with the real C map under compat="midas-cpu" and with radint's own
    map under the default contract. Both cakes are area-weighted means of the same pixels, so in
    every bin |ΔI| ≤ Σ|Δa|·(v_max − v_min)/A (+ float32 rounding): measured ≤ 3.2e-6 relative
    in bins no seam pixel touches, 6.7e-2 in the worst seam bin (R 1–2 px, η 160–170°, where
    the C map lost 22 % of the area). The lineouts differ mainly by the 1D rule (C: mean of the
    non-zero η bins, radint: area-weighted, so partly covered bins at the detector edge weigh
    less): median 1.4e-7, up to 0.15 relative at R = 35.5 px; under the same rule (both
    "midas-cpu") they agree to 2.2e-3 (R 1–2 px, the seam loss)."""
    import tifffile

    unpack_distorted(tmp_path)
    k = load("distorted")
    frame = tifffile.imread(DATA / "distorted" / "ring.tif")
    c_map = DetectorMap.load_midas(tmp_path, k.cfg)
    rc = Integrator(k.cfg, detector_map=c_map, compat="midas-cpu").integrate(frame)
    rr = Integrator(k.cfg, detector_map=k.m).integrate(frame)
    both = (rr.area > 0) & (rc.area > 0)
    np.testing.assert_array_equal(both, rr.area > 0)
    n = k.m.n_bins
    v = frame.ravel().astype(np.float64)[k.pixel]
    v_max, v_min = np.full(n, -np.inf), np.full(n, np.inf)
    np.maximum.at(v_max, k.bin, v)
    np.minimum.at(v_min, k.bin, v)
    spread = np.where(np.isfinite(v_max), v_max - v_min, 0).reshape(k.m.n_r, k.m.n_eta).T
    moved = np.bincount(k.bin, np.abs(k.a_c - k.a_r), n).reshape(k.m.n_r, k.m.n_eta).T
    area = np.minimum(rr.area, rc.area)
    diff = np.abs(rc.cake - rr.cake)
    bound = moved * spread / np.where(both, area, 1) + 1e-6 * np.abs(rr.cake)
    assert np.all(diff[both] <= bound[both])
    seam_bin = np.zeros(n, bool)
    seam_bin[k.bin[k.seam]] = True
    seam_bin = seam_bin.reshape(k.m.n_r, k.m.n_eta).T  # the cake is (n_eta, n_r)
    rel = diff / np.abs(rr.cake)
    big = both & (rr.area > 0.2)
    assert rel[big & ~seam_bin].max() < 1e-5
    assert rel[big].max() < 0.1
    rcc = Integrator(k.cfg, detector_map=k.m, compat="midas-cpu").integrate(frame)
    np.testing.assert_allclose(rc.lineout, rcc.lineout, rtol=5e-3)


def test_residual_map_is_read_in_the_transformed_frame():
    """residual_transopt (ImTransOpt 1 + 2, a ΔR map varying along both axes): DetectorMapper
    samples ResidualCorrectionMap at transformed (Y, Z) as stored, without flipping it as it
    flips the mask and distortion maps. radint used to flip it: per bin up to 3 px² apart."""
    k = load("residual_transopt")
    assert bytes(k.c["header_hash"]).hex() == _core.param_hash(k.cfg.core_dict())[1]
    assert not np.any((k.a_c > 0) & (k.a_r == 0))
    both = (k.a_r > 0) & (k.a_c > 0) & ~k.seam
    diff = np.abs(k.a_c - k.a_r)
    assert np.all(diff[both] <= k.bound()[both])
    assert np.sum(diff[both] > 1e-6 * k.a_r[both]) <= 1  # one 5.8e-5 px² chord-as-arc sliver
    n = k.m.n_bins
    seam_bin = np.zeros(n, bool)
    seam_bin[k.bin[k.seam]] = True
    per_bin = np.abs(np.bincount(k.bin, k.a_r, n) - k.c["bin_area"])
    assert per_bin[~seam_bin].max() < measured("residual_transopt", "bin")


def test_a_c_caked_hdf_is_read_and_plotted(tmp_path):
    """`radint plot` takes IntegratorZarrOMP's own caked.hdf: its cake, η/2θ axes and areas
    as the file holds them, the lineout by the C CPU rule."""
    from radint.cli import main
    from radint.io.midas import read_midas_caked

    with (
        gzip.open(DATA / "distorted" / "c_ring.tif.caked.hdf.gz", "rb") as src,
        open(tmp_path / "c.caked.hdf", "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
    ref = np.load(DATA / "distorted" / "c_integrator_ring.npz")
    r = read_midas_caked(tmp_path / "c.caked.hdf")
    np.testing.assert_array_equal(r.cake[0].T, ref["cake_r_eta"])
    np.testing.assert_allclose(r.lineout[0], ref["lineout"], rtol=1e-12)
    assert r.frame_ids.tolist() == [0]
    pytest.importorskip("matplotlib")
    assert main(["plot", str(tmp_path / "c.caked.hdf"), "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 0


def test_midas_cpu_says_where_integratorzarromp_writes_otherwise(caplog):
    """C sweep: a parameter file with pxY and no px makes IntegratorZarrOMP write 2θ = Q = 0
    (it reads only px), and ImTransOpt 3 makes it write nothing (exit 0); radint, like
    DetectorMapper, uses pxY and transposes. Under compat='midas-cpu' both are said."""
    from radint import Integrator
    from radint.config import IntegrationConfig
    from tests.conftest import SMALL

    text = SMALL.replace("px 172", "pxY 172\npxZ 172").replace(
        "NrPixelsZ 100", "NrPixelsZ 120") + "ImTransOpt 3\n"  # fmt: skip
    cfg = IntegrationConfig.from_text(text, "p.txt")
    with caplog.at_level(logging.WARNING, logger="radint"):
        Integrator(cfg)
    assert "IntegratorZarrOMP" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="radint"):
        Integrator(cfg, compat="midas-cpu")
    assert "p.txt:4: pxY: no px line; IntegratorZarrOMP reads only px" in caplog.text
    assert "ImTransOpt 3 (transpose): IntegratorZarrOMP refuses it" in caplog.text


@pytest.mark.parametrize(("width", "height"), [(100, 100), (100, 300), (300, 100)])
def test_gradient_correction_lands_on_the_bin_radius_with_rectangular_pixels(width, height):
    """Review: the shift of `GradientCorrection 1` was δR rows along the ray in pixel indices,
    pxZ / pxY times too far along Z with rectangular pixels: on f(R) = R the corrected cake was
    further from the bins' radii than the uncorrected one (0.159 px against 0.082 where rows
    are 3× as high). Now δR is measured on the detector: closer than without the correction in
    every case (0.0014 / 0.0051 / 0.0127 px against 0.0035 / 0.091 / 0.027)."""
    from radint import Integrator
    from radint.corrections import pixel_geometry

    shape = "PixelShape rectangular\n" if width != height else ""
    cfg = IntegrationConfig.from_text(
        f"NrPixelsY 200\nNrPixelsZ 200\nLsd 200000\nBC 100.3 100.7\npx {width}\npxZ {height}\n"
        f"{shape}RMin 20\nRMax 60\nRBinSize 1\nEtaMin -45\nEtaMax 315\nEtaBinSize 90\n"
        "GradientCorrection 1\n",
        "g.txt",
    )
    frame = pixel_geometry(cfg)["r_px"].reshape(cfg.shape)  # f(R) = R

    def off(config):  # per η sector
        r = Integrator(config, fit=None, error_model=None).integrate(frame)
        return np.nanmean(np.abs(r.cake - r.radius_px[None, :]), axis=1)

    corrected, plain = off(cfg), off(cfg.replace(gradient_correction=False))
    assert corrected.max() < 0.015 and corrected.max() < 0.6 * plain.max(), (corrected, plain)
