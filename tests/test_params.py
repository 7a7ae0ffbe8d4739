"""MIDAS parameter files: syntax, overrides, errors, defaults, hash."""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radint import (
    DetectorMap,
    IntegrationConfig,
    ParameterError,
    RadintError,
    RadintFileNotFoundError,
    _core,
)


def test_example_file_parses(example_config):
    c = example_config
    assert (c.n_pixels_y, c.n_pixels_z) == (1475, 1679)
    assert c.lsd_um == pytest.approx(657436.895687981043)
    assert (c.bc_y_px, c.bc_z_px) == pytest.approx((685.485459654125, 921.034377043941))
    assert c.distortion[3] == pytest.approx(-13.773706892191)
    assert c.mask_file.endswith("mask.tif")
    assert c.set_at["Lsd"][1] == 6


def test_syntax_comments_semicolon_accumulation(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text(
        "# comment\nNrPixels 64;\nLsd 1e6 # inline\nImTransOpt 1\nImTransOpt 2\n"
        "PeakLocation 10\nPeakLocation 12.5\nWeirdKey some value\nRMax 40\nRMax 50\n"
    )
    c = IntegrationConfig.from_midas_params(p)
    assert (c.n_pixels_y, c.n_pixels_z, c.r_max_px) == (64, 64, 50)
    assert c.im_trans_opt == (1, 2)
    assert c.peak_locations == (10, 12.5)
    assert c.unknown == (("WeirdKey", "some value", str(p), 8),)


def test_overrides_replace(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("NrPixels 64\nRMax 40\nImTransOpt 1\n")
    c = IntegrationConfig.from_midas_params(p, ["RMax 55", "ImTransOpt 2"])
    assert c.r_max_px == 55 and c.im_trans_opt == (2,)
    c2 = c.with_overrides({"EtaBinSize": 2})
    assert c2.eta_bin_deg == 2 and c2.r_max_px == 55


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("NrPixels 10\nRBinSize -0.5\n", "p.txt:2: RBinSize: must be > 0, got -0.5"),
        ("NrPixels 10\nRMin 50\nRMax 20\n", "p.txt:3: RMax: must be > RMin (50, p.txt:2), got 20"),
        # The key set last is blamed: the line just added (regression, CLI audit).
        ("NrPixels 10\nRMax 20\nRMin 50\n", "p.txt:3: RMin: must be < RMax (20, p.txt:2), got 50"),
        ("NrPixels 10\nEtaMin 200\n", "p.txt:2: EtaMin: must be < EtaMax (180, default), got 200"),
        ("NrPixels 10\nLsd abc\n", "p.txt:2: Lsd: expected a finite number, got 'abc'"),
        ("Lsd 1000\n", "missing required parameter NrPixelsY"),
        ("NrPixels 10\nBC 3\n", "p.txt:2: BC: expected 2 value(s) (BC y z), got 1"),
        ("NrPixels 10\nImTransOpt 7\n", "p.txt:2: ImTransOpt: expected an image transform"),
        ("NrPixels 10\nQMax 5\nQBinSize 0.01\n", "p.txt:3: QBinSize: Q bins need the wavelength"),
        ("NrPixels 10\nPixelWeights pyfai\n", "p.txt:2: PixelWeights: expected area or fraction"),
    ],
)
def test_errors_name_file_line_key(tmp_path, text, message):
    p = tmp_path / "p.txt"
    p.write_text(text)
    with pytest.raises(ParameterError) as info:
        IntegrationConfig.from_midas_params(p).validate()
    assert message.replace("p.txt", str(p)) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(RadintFileNotFoundError, match="parameter file not found"):
        IntegrationConfig.from_midas_params(tmp_path / "nope.txt")
    with pytest.raises(RadintFileNotFoundError, match="a directory, not a parameter file"):
        IntegrationConfig.from_midas_params(tmp_path)


def test_python_defaults_match_rust():
    rust = IntegrationConfig.from_text("", "<defaults>")
    py = IntegrationConfig()
    for f in dataclasses.fields(py):
        if f.name in ("unknown", "set_at", "source"):
            continue
        assert getattr(rust, f.name) == getattr(py, f.name), f.name


def test_c_parameter_hash_vector(example_config):
    c = example_config.replace(r_bin_px=0.25, eta_bin_deg=1.0, im_trans_opt=(2,))
    text, digest = _core.param_hash(c.core_dict())
    assert text.startswith("BC=685.485460,921.034377|EtaBinSize=1.000000")
    assert digest == "a5a7a3c749267634cb19aeb6b071cfbdc4138e9caa8e1ad2a466b78fdbe5be79"


def test_midas_text_round_trip(example_config):
    again = IntegrationConfig.from_text(example_config.midas_text(), "x")
    assert again == example_config.replace(source="x")


KEYS = ["Lsd", "BC", "NrPixels", "NrPixelsY", "RMin", "RMax", "RBinSize", "EtaBinSize",
        "ImTransOpt", "px", "QBinSize", "Wavelength", "SubPixelLevel", "p3", "PeakLocation", "tx"]  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*KEYS, "#", "", "Zz"]),
            st.lists(
                st.one_of(
                    st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.integers(-(10**12), 10**12).map(str),
                    st.text(max_size=6),
                ),
                max_size=3,
            ),
        ),
        max_size=12,
    )
)
def test_fuzzed_parameter_text_only_raises_radint_errors(lines):
    text = "\n".join(" ".join([k, *v]) for k, v in lines)
    try:
        IntegrationConfig.from_text(text, "fuzz.txt").validate().bin_edges()
    except RadintError:
        pass


def test_peak_fit_keys_as_integratorzarromp_reads_them():
    """AutoDetectPeaks N = up to N auto-detected peaks and fitting on (it wins over
    PeakLocation); DoPeakFit 1 with neither fits nothing; midas_text round-trips both."""
    from radint.fit import FitSpec

    base = "NrPixels 100\nLsd 1e6\nRMax 50\n"
    auto = IntegrationConfig.from_text(base + "AutoDetectPeaks 3\nPeakLocation 20\n", "p.txt")
    assert auto.do_peak_fit and FitSpec.from_config(auto).auto == 3
    listed = IntegrationConfig.from_text(base + "DoPeakFit 1\nPeakLocation 20\n", "p.txt")
    assert FitSpec.from_config(listed).positions_px == (20.0,)
    assert FitSpec.from_config(IntegrationConfig.from_text(base + "DoPeakFit 1\n", "p.txt")) is None
    for cfg in (auto, listed, IntegrationConfig.from_text(base, "p.txt")):
        again = IntegrationConfig.from_text(cfg.midas_text(), "again.txt")
        assert FitSpec.from_config(again) == FitSpec.from_config(cfg)


def test_lines_detectormapper_reads_differently_are_logged(tmp_path, caplog):
    params = tmp_path / "p.txt"
    params.write_text(
        "NrPixels 100\nLsd 400000\nDetDist 500000\nMinEta -90\nImTransOpt 1 2\n"
        "PanelGapsY 3\nNPanelsY 2\nPanelSizeY 50\n"
    )
    with caplog.at_level("WARNING", logger="radint"):
        config = IntegrationConfig.from_midas_params(params)
    assert config.lsd_um == 400000 and config.eta_min_deg == -90
    assert config.im_trans_opt == (1,)  # as DetectorMapper and midas-integrate read it
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"{params}:3: DetDist ignored: Lsd is given in this file (DetectorMapper reads only Lsd)",
        f"{params}:4: MinEta read as EtaMin; DetectorMapper ignores MinEta and keeps its default",
        f"{params}:5: ImTransOpt: 1 extra value(s) ignored: 2 (one transform per line, as "
        "DetectorMapper and midas-integrate read it: give each on its own ImTransOpt line to "
        "apply it too)",
        f"{params}:6: PanelGapsY before NPanelsY: radint applies the gaps, DetectorMapper ignores "
        "them",
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="radint"):
        config.with_overrides(["RMax 40"])
    assert not caplog.records  # re-parsing radint's own text says nothing


def test_settings_that_lose_or_double_count_data_are_logged(tmp_path, caplog):
    p = tmp_path / "p.txt"
    p.write_text("NrPixels 10\npx 172\npxZ 150\nEtaBinSize 7\n")
    with caplog.at_level(logging.WARNING, logger="radint"):
        IntegrationConfig.from_midas_params(p).validate()
    assert f"{p}:3: pxZ: 150.0 µm differs from pxY 172.0 µm" in caplog.text
    assert f"{p}:4: EtaBinSize: 7.0° bins do not divide" in caplog.text
    assert "runs to 184°, 4° past a full turn" in caplog.text
    caplog.clear()
    p.write_text("NrPixels 10\nLsd 2e5\nBC 4 5\npx 100\nEtaBinSize 8\nEtaMin -180\nEtaMax 100\n")
    with caplog.at_level(logging.WARNING, logger="radint"):
        IntegrationConfig.from_midas_params(p).validate()
    assert caplog.text == ""


def test_pixel_shape_rectangular_takes_pxz_and_is_kept_apart_from_midas(tmp_path, caplog):
    """``PixelShape rectangular`` (radint's key, set by a PONI with pixel1 ≠ pixel2) makes pxZ
    the pixels' height; without it pxZ stays unused as in MIDAS, and the note says how to use
    it. A MIDAS compat refuses it (C has one pixel size); the map key tells the two apart and
    the configuration's MIDAS text keeps the key."""
    from radint import Integrator, InvalidInputError

    text = "NrPixels 40\nLsd 1e5\nBC 20 20\npx 100\npxZ 250\nRMin 0\nRMax 30\nEtaBinSize 90\n"
    p = tmp_path / "p.txt"
    p.write_text(text)
    with caplog.at_level(logging.WARNING, logger="radint"):
        square = IntegrationConfig.from_midas_params(p).validate()
    assert "pxZ is not used (as in MIDAS); for pixels pxZ high, add 'PixelShape rectangular'" in (
        caplog.text
    )
    caplog.clear()
    p.write_text(text + "PixelShape rectangular\n")
    with caplog.at_level(logging.WARNING, logger="radint"):
        rect = IntegrationConfig.from_midas_params(p).validate()
    assert caplog.text == "" and rect.pixel_shape == "rectangular"
    assert rect.map_key() != square.map_key()
    assert "PixelShape rectangular" in rect.midas_text()
    assert "PixelShape" not in square.midas_text()
    assert IntegrationConfig.from_text(rect.midas_text(), str(p)) == rect
    # Pixel (y 20, z 24) lies 4 rows of 250 µm above the beam: R 8.75..11.25 px of pxY.
    import numpy as np

    m = DetectorMap.build(rect.replace(r_bin_px=1.0, eta_bin_deg=360.0))
    entries = np.flatnonzero(np.asarray(m.pixel) == 24 * 40 + 20)
    bins = np.searchsorted(np.asarray(m.indptr), entries, side="right") - 1
    assert list(m.r_edges_px[bins]) == [8.0, 9.0, 10.0, 11.0]
    for compat in ("midas-cpu", "midas-gpu"):
        with pytest.raises(InvalidInputError, match=rf"p.txt:9: PixelShape rectangular .*{compat}"):
            Integrator(rect, compat=compat)
    Integrator(square, compat="midas-cpu")
    p.write_text(text + "PixelShape oblong\n")
    with pytest.raises(ParameterError, match="p.txt:9: PixelShape: expected square or rectangular"):
        IntegrationConfig.from_midas_params(p)
    # Review: a pxZ of 1e-300 built a map of no entries without a word.
    p.write_text(text.replace("pxZ 250", "pxZ 1e-300") + "PixelShape rectangular\n")
    with pytest.raises(ParameterError, match=r"p.txt:5: pxZ: pxZ / pxY = 1e-302 with PixelShape "
                       r"rectangular; expected 1e-4 to 1e4 \(px 100 \(.*p.txt:4\)"):  # fmt: skip
        IntegrationConfig.from_midas_params(p).validate()


def test_rectangular_pixels_need_their_own_pxz_and_square_maps_keep_their_cache_names(tmp_path):
    """Review: ``PixelShape rectangular`` with no pxZ line took the default 200 µm rows, and a
    ``px`` after pxZ set both sizes, without a word (pxZ had never been used before). And the
    new field changed every square configuration's map key: each cache rebuilt once."""
    p = tmp_path / "p.txt"
    for text, why in (("NrPixels 10\npxY 75\nPixelShape rectangular\n", "; give pxZ"),
                      ("NrPixels 10\npxZ 150\npx 75\nPixelShape rectangular\n",
                       ", or a later px set both sizes; give pxZ after px")):  # fmt: skip
        p.write_text(text)
        with pytest.raises(ParameterError, match=re.escape(
            f"PixelShape: rectangular needs the rows' height: no pxZ line sets it{why}"
        )):  # fmt: skip
            IntegrationConfig.from_midas_params(p).validate()
    p.write_text("NrPixels 10\npx 75\npxZ 150\nPixelShape rectangular\n")
    assert IntegrationConfig.from_midas_params(p).validate().pixel_size_z_um == 150
    # The key a square configuration had before PixelShape existed (cache version 4).
    from tests.conftest import EXAMPLES

    example = IntegrationConfig.from_midas_params(EXAMPLES / "parameters.txt")
    assert example.map_key() == "a71134a921106d766c491b46"
    assert example.replace(pixel_shape="rectangular").map_key() != example.map_key()


def test_a_rectangular_poni_made_square_by_an_override_is_warned(tmp_path, caplog):
    """Review: ``from_poni(..., PixelShape="square")`` on pixels 50 × 100 µm left pxZ unused
    without the warning a parameter file gets (the PONI's sizes were both filed under px)."""
    path = tmp_path / "r.poni"
    path.write_text(
        'poni_version: 2.1\nDetector: Detector\nDetector_config: {"pixel1": 5e-05, "pixel2": '
        '0.0001, "max_shape": [100, 120]}\nDistance: 0.1\nPoni1: 0.002\nPoni2: 0.003\n'
        "Rot1: 0\nRot2: 0\nRot3: 0\nWavelength: 1e-10\n"
    )
    with caplog.at_level(logging.WARNING, logger="radint"):
        assert IntegrationConfig.from_poni(path).validate().pixel_shape == "rectangular"
        assert caplog.text == ""
        IntegrationConfig.from_poni(path, PixelShape="square").validate()
    assert f"{path}: pxZ: 50.0 µm differs from pxY 100.0 µm" in caplog.text


def test_px_after_pxy_pxz_is_where_both_sizes_were_set(tmp_path):
    """``px`` sets both sizes (DetectorMapper.c): earlier pxY/pxZ lines no longer hold them, so
    neither messages nor ``radint info`` may point at those lines (found side by side with
    DetectorMapper)."""
    p = tmp_path / "p.txt"
    p.write_text("NrPixels 10\npxY 120\npxZ 180\npx 100\n")
    config = IntegrationConfig.from_midas_params(p)
    assert (config.pixel_size_y_um, config.pixel_size_z_um) == (100, 100)
    assert config.where_set("pixel_size_y_um") == f"{p}:4: px"
    assert config.where_set("pixel_size_z_um") == f"{p}:4: px"
    p.write_text("NrPixels 10\npxY 120\npx -5\n")
    with pytest.raises(ParameterError, match=rf"{re.escape(str(p))}:3: px\b.*must be > 0"):
        IntegrationConfig.from_midas_params(p).validate()
    p.write_text("NrPixels 10\npx 100\npxZ 180\n")  # a later pxZ is where the Z size is set
    assert IntegrationConfig.from_midas_params(p).where_set("pixel_size_z_um") == f"{p}:3: pxZ"


def test_key_equals_value_and_lines_detectormapper_skips_are_logged(tmp_path, caplog):
    """Found side by side with DetectorMapper and midas-integrate: ``Lsd=260000`` was only
    suggested as "Lsd" (the CLI then warns the 1 m default is used), and DetectorMapper skips
    ``RMin<TAB>5`` and indented lines that radint read, so the maps differed without a word.
    A pxY after px
    changes the map but not IntegratorZarrOMP's 2θ, and an η range over a full turn bins
    pixels twice (C accepts it; radint refused it)."""
    p = tmp_path / "p.txt"
    p.write_text(
        "NrPixels 100\nLsd=260000\nRMin\t5\n  RMax 40\npx 172\npxY 150\nEtaMin -180\n"
        "EtaMax 200\nEtaBinSize 15\nBC=55.3 47.8\n"
    )
    with caplog.at_level(logging.WARNING, logger="radint"):
        c = IntegrationConfig.from_midas_params(p).validate()
    assert (c.r_min_px, c.r_max_px, c.pixel_size_y_um, c.lsd_um) == (5, 40, 150, 1e6)
    text = caplog.text
    assert (
        f"{p}:2: Lsd=260000 is not a key radint reads (ignored); did you mean 'Lsd 260000' (a "
        "space between key and value, not '=')?" in text
    )
    assert "did you mean 'BC 55.3 47.8' (a space" in text
    assert f'{p}:3: RMin: DetectorMapper reads a line only when it starts with "RMin "' in text
    assert f"{p}:4: RMax: DetectorMapper" in text
    assert f"{p}:6: pxY 150 after px 172: the map" in text
    assert f"{p}:8: EtaMax: the η range -180.0..200.0° spans 380°, more than a full turn" in text
    assert DetectorMap.build(c).n_eta == 26
    caplog.clear()
    p.write_text("NrPixels 100\nWavelength 0.2\nQBinSize 0.01\nQMin 0.1\nQMax 1\nTthBinSize 0.1\n")
    with caplog.at_level(logging.WARNING, logger="radint"):
        c = IntegrationConfig.from_midas_params(p).validate()
    assert c.radial_mode == "q" and f"{p}:6: TthBinSize: 0.1° 2θ bins ignored" in caplog.text


def test_misspelled_keys_get_a_suggestion(tmp_path, caplog):
    """A near miss of a key radint reads is warned with the key meant; keys of other MIDAS
    programs (FF-HEDM files carry many) stay quiet."""
    p = tmp_path / "p.txt"
    p.write_text("NrPixels 10\nRBinsize 0.5\nEtaBinSze 3\nSpaceGroup 225\nLatticeConstant 5.4\n")
    with caplog.at_level(logging.WARNING, logger="radint"):
        c = IntegrationConfig.from_midas_params(p)
    assert c.r_bin_px != 0.5
    assert (
        f"{p}:2: RBinsize is not a key radint reads (ignored); did you mean RBinSize?"
        in caplog.text
    )
    assert f"{p}:3: EtaBinSze" in caplog.text and "did you mean EtaBinSize?" in caplog.text
    assert "SpaceGroup" not in caplog.text and "LatticeConstant" not in caplog.text
    # Other MIDAS programs' keys that look like radint's are not typos.
    from radint.config import near_key

    assert [near_key(k) for k in ("doPeakFit", "FitWavelength", "tolWavelength")] == [None] * 3


def test_two_theta_bin_size_given_as_span_over_n_gives_n_bins():
    """TthBinSize = (TthMax − TthMin)/n (pyFAI's npt) whose quotient rounds a hair above n gives
    n bins, not n + 1 with a sliver (it did in 114 of 2000 random ranges); a range genuinely past
    n bins still gets the extra bin (ceil)."""
    import numpy as np

    from radint import IntegrationConfig

    base = IntegrationConfig(
        n_pixels_y=100, n_pixels_z=100, pixel_size_y_um=100, pixel_size_z_um=100, lsd_um=1e5,
        bc_y_px=50, bc_z_px=50, wavelength_angstrom=1.0, eta_bin_deg=360.0,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    for _ in range(500):
        lo, n = rng.uniform(0, 5), int(rng.integers(10, 4000))
        hi = lo + rng.uniform(1, 20)
        c = base.replace(tth_min_deg=lo, tth_max_deg=hi, tth_bin_deg=(hi - lo) / n)
        assert len(c.bin_edges()[0]) - 1 == n, (lo, hi, n)
    over = base.replace(tth_min_deg=1.0, tth_max_deg=2.0000001, tth_bin_deg=0.1)
    assert len(over.bin_edges()[0]) - 1 == 11


def test_with_overrides_keeps_where_keys_were_set(tmp_path):
    """with_overrides applies overrides as from_midas_params does: lists replaced, the file's
    lines and unknown keys kept, the overridden keys at ``<override>:N``; an unknown override
    key is refused."""
    p = tmp_path / "p.txt"
    p.write_text("NrPixels 64\nRMax 40\nImTransOpt 1\nPeakLocation 10\nFooBar 2\n")
    c = IntegrationConfig.from_midas_params(p).with_overrides(["ImTransOpt 2", "PeakLocation 20"])
    assert c.im_trans_opt == (2,) and c.peak_locations == (20.0,)
    assert c.set_at["RMax"] == (str(p), 2)
    assert c.set_at["PeakLocation"] == ("<override>", 2)
    assert "EtaBinSize" not in c.set_at  # a default, set nowhere
    assert c.unknown == (("FooBar", "2", str(p), 5),)
    assert c.source == str(p)
    with pytest.raises(ParameterError, match="override Bar 1: not a parameter radint knows"):
        c.with_overrides(["Bar 1"])


def test_poni_overrides_errors_name_the_override(tmp_path):
    """`radint info g.poni RBinSize -0.5` named `g.poni:74`, a line of radint's own text."""
    poni = tmp_path / "g.poni"
    poni.write_text(
        "poni_version: 2\nDetector: Detector\n"
        'Detector_config: {"pixel1": 1e-4, "pixel2": 1e-4, "max_shape": [64, 64]}\n'
        "Distance: 0.1\nPoni1: 0.0032\nPoni2: 0.0032\nRot1: 0\nRot2: 0\nRot3: 0\n"
        "Wavelength: 1e-10\n"
    )
    config = IntegrationConfig.from_poni(poni)
    assert config.set_at["Lsd"] == (str(poni), 0) and config.set_at["BC"] == (str(poni), 0)
    c = config.with_overrides(["RMax 30"])
    assert c.set_at["RMax"] == ("<override>", 1) and c.set_at["Lsd"] == (str(poni), 0)
    with pytest.raises(ParameterError, match=r"^<override>:1: RBinSize: must be > 0"):
        config.with_overrides(["RBinSize -0.5"]).validate()


BASE = "NrPixelsY 64\nNrPixelsZ 48\npx 172\nLsd 250000\nBC 30 20\nWavelength 0.17\nRMax 40\n"


def test_byte_order_mark_and_lone_cr_line_ends(tmp_path):
    """A UTF-8 BOM (Windows editors) does not hide the first key, and old-Mac CR line ends do
    not fold the file into one line."""
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfRBinSize 2\r\n" + BASE.replace("\n", "\r\n").encode())
    assert IntegrationConfig.from_midas_params(bom).r_bin_px == 2.0
    cr = tmp_path / "cr.txt"
    cr.write_bytes((BASE + "RBinSize 3\nRMin 5\n").replace("\n", "\r").encode())
    c = IntegrationConfig.from_midas_params(cr)
    assert (c.r_bin_px, c.r_min_px, c.r_max_px) == (3.0, 5.0, 40.0)
    assert c.set_at["RMin"] == (str(cr), 9)


def test_file_names_are_their_first_word_and_may_hold_a_hash(tmp_path):
    """As DetectorMapper's sscanf("%s %s"): ``MaskFile m.tif 1`` names m.tif, and a '#' inside a
    path is part of it (only a word starting with '#' opens a comment)."""
    (tmp_path / "run#3").mkdir()
    p = tmp_path / "p.txt"
    p.write_text(BASE + "MaskFile run#3/mask.tif 1\nDark dark.tif # the dark\nRBinSize 1 #c\n"
                 "RMin 5#inner radius\n")  # fmt: skip
    c = IntegrationConfig.from_midas_params(p)
    assert c.mask_file == str(tmp_path / "run#3" / "mask.tif")
    assert c.dark_file == str(tmp_path / "dark.tif")
    assert c.r_bin_px == 1.0
    assert c.r_min_px == 5.0  # a '#' after a number still starts a comment


def test_override_file_names_are_relative_to_the_current_directory(tmp_path, monkeypatch):
    """A file named on the command line is the one the user's shell sees, even when the parameter
    file's folder holds a file of the same name; names inside the file stay beside it."""
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "p.txt").write_text(BASE + "MaskFile mask.tif\n")
    (sub / "mask.tif").write_bytes(b"")
    (tmp_path / "mask.tif").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert IntegrationConfig.from_midas_params("sub/p.txt").mask_file == str(sub / "mask.tif")
    c = IntegrationConfig.from_midas_params("sub/p.txt", ["MaskFile ./mask.tif"])
    assert c.mask_file == str(tmp_path / "mask.tif")


def test_file_names_are_stored_absolute(tmp_path, monkeypatch):
    """Audit: with a relative parameter-file path, MaskFile (Dark, FlatFile, ...) was stored
    relative to the working directory of the parse: after os.chdir the Integrator failed, or
    read another folder's file of that name. Stored absolute, overrides too (those of
    with_overrides as well), it names the same files wherever the process is."""
    import numpy as np
    import tifffile

    from radint import Integrator

    run = tmp_path / "run"
    run.mkdir()
    shape = (48, 64)
    mask = np.zeros(shape, np.uint8)
    mask[:, :32] = 1
    tifffile.imwrite(run / "mask.tif", mask)
    tifffile.imwrite(run / "dark.tif", np.ones(shape, np.uint16))
    (run / "p.txt").write_text(BASE + "MaskFile mask.tif\nRBinSize 1\n")
    monkeypatch.chdir(tmp_path)
    c = IntegrationConfig.from_midas_params("run/p.txt", ["Dark run/dark.tif"])
    assert (c.mask_file, c.dark_file) == (str(run / "mask.tif"), str(run / "dark.tif"))
    assert c.with_overrides(["FlatFile flat.tif"]).flat_file == str(tmp_path / "flat.tif")
    frame = np.ones(shape, np.uint16)
    area = Integrator(c, n_threads=1).integrate(frame).area.sum()
    other = tmp_path / "other"
    (other / "run").mkdir(parents=True)
    tifffile.imwrite(other / "run" / "mask.tif", np.zeros(shape, np.uint8))  # another mask
    monkeypatch.chdir(other)
    assert Integrator(c, n_threads=1).integrate(frame).area.sum() == area
    monkeypatch.chdir("/")
    assert Integrator(c, n_threads=1).integrate(frame).area.sum() == area
    # Review: from_poni's file names (by MIDAS key or field name) stayed relative.
    from radint.poni import write_poni

    monkeypatch.chdir(tmp_path)
    write_poni(c, tmp_path / "g.poni")
    for named in ({"MaskFile": "run/mask.tif"}, {"mask_file": "run/mask.tif"}):
        poni = IntegrationConfig.from_poni(tmp_path / "g.poni", RBinSize=1, **named)
        assert poni.mask_file == str(run / "mask.tif"), named


def test_misspelled_keys_with_punctuation_or_plural_are_named(tmp_path, caplog):
    p = tmp_path / "p.txt"
    p.write_text(BASE + "RBinSize: 2\nEtaBinSizes 1\n")
    with caplog.at_level("WARNING", logger="radint"):
        IntegrationConfig.from_midas_params(p)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "RBinSize: is not a key radint reads (ignored); did you mean RBinSize?" in text
    assert "did you mean EtaBinSize?" in text


@pytest.mark.parametrize("fit_line", ["PeakLocation 20", "AutoDetectPeaks 5"])
def test_fit_switches_survive_overrides_and_midas_text(fit_line):
    """``PeakLocation`` / ``AutoDetectPeaks`` switch fitting on as they are read; a later
    ``DoPeakFit 0`` must still hold after with_overrides() and midas_text() (it was written
    before them and lost)."""
    c = IntegrationConfig.from_text(BASE + f"{fit_line}\nDoPeakFit 0\n")
    assert not c.do_peak_fit
    for again in (c.with_overrides(["RMax 35"]), IntegrationConfig.from_text(c.midas_text())):
        assert (again.do_peak_fit, again.auto_detect_peaks, again.max_n_peaks) == (
            c.do_peak_fit, c.auto_detect_peaks, c.max_n_peaks)  # fmt: skip
        assert again.peak_locations == c.peak_locations


def test_missing_referenced_files_name_file_line_and_key(tmp_path, capsys):
    """A MaskFile / Dark that does not exist is reported at the line that names it."""
    import numpy as np
    import tifffile

    from radint.cli import main

    tifffile.imwrite(tmp_path / "f.tif", np.ones((48, 64), np.uint16))
    for key, name, expected in (("MaskFile", "nomask.tif", "cannot read"),
                                ("Dark", "nodark.tif", "no such file")):  # fmt: skip
        (tmp_path / "p.txt").write_text(BASE + f"{key} {name}\n")
        argv = ["integrate", str(tmp_path / "p.txt"), str(tmp_path / "f.tif"), "-o", str(tmp_path)]
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert f"p.txt:8: {key}: " in err and f"{name}: {expected}" in err


@pytest.mark.parametrize(
    ("change", "message"),
    [({"bc_y_px": float("nan")}, "BC: must be a finite number, got NaN"),
     ({"lsd_um": float("inf")}, "Lsd: must be a finite number, got inf"),
     ({"ty_deg": 90.0}, "ty: must be within ±90°"),
     ({"im_trans_opt": (4,)}, "ImTransOpt: must be 0 (none), 1 (flip Y), 2 (flip Z) or 3")],
)  # fmt: skip
def test_impossible_geometries_set_through_the_api_are_refused(change, message):
    """Values a parameter file cannot hold but the API can (NaN, inf), an edge-on detector and
    an ImTransOpt MIDAS does not define: refused by validate() (the map came out empty)."""
    c = IntegrationConfig.from_text(BASE + "RBinSize 1\n", "p.txt").replace(**change)
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        c.validate()


def test_a_distortion_that_folds_the_detector_over_is_warned(tmp_path, caplog):
    """A RhoD far inside the detector with p2 −1: the corrected radius turns back within the
    detector, so pixels land on smaller radii (MIDAS's DetectorMapper then reports an empty or
    partial map; radint mapped the reflected branch without a word). Found on 7 of 240
    extreme random geometries; none of 370 others is flagged, nor the bundled calibration."""
    from tests.conftest import EXAMPLES

    p = tmp_path / "p.txt"
    p.write_text("NrPixels 41\npx 100\nLsd 1000000\nBC 20.3 20.2\nRhoD 1500\np2 -1\n")
    with caplog.at_level(logging.WARNING, logger="radint"):
        IntegrationConfig.from_midas_params(p).validate()
    assert f"{p}: the distortion folds the detector over" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="radint"):
        IntegrationConfig.from_midas_params(EXAMPLES / "parameters.txt").validate()
    assert "folds" not in caplog.text


SMALL = (
    "NrPixelsY 53\nNrPixelsZ 37\npx 172\nLsd 500000\nBC 26 18\nWavelength 0.17\nRMin 1\n"
    "RMax 30\nRBinSize 1\nEtaBinSize 10\n"
)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("EtaBinSize 1e-7", "<override>:1: EtaBinSize: η range / bin size gives 3600000000 bins; "
                            "expected 1 to 1e9"),
        ("EtaBinSize 1e-12", "<override>:1: EtaBinSize: η range / bin size gives 360000000000000"),
        ("EtaMax 1e12", "<override>:1: EtaMax: η range / bin size gives 100000000018 bins"),
        ("EtaBinSize 5e-324", "<override>:1: EtaBinSize: η range / bin size gives inf bins"),
    ],
)  # fmt: skip
def test_too_many_eta_bins_are_refused(tmp_path, override, message):
    """A tiny EtaBinSize or a huge η range became one η bin without a word (all NaN for 1e-12),
    where the same mistake in RBinSize was refused; 5e-324 raised an OverflowError traceback."""
    p = tmp_path / "p.txt"
    p.write_text(SMALL)
    with pytest.raises(ParameterError) as info:
        IntegrationConfig.from_midas_params(p, [override]).validate()
    assert str(info.value).startswith(message)
    assert "(command line)" in str(info.value)


def test_too_many_bins_blames_the_key_that_causes_them(tmp_path, capsys):
    """`EtaBinSize 1e-6` on the command line was blamed on RBinSize at the file's line 9."""
    from radint.cli import main

    p = tmp_path / "p.txt"
    p.write_text(SMALL)
    assert main(["info", str(p), "EtaBinSize", "1e-6"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "radint: error: <override>:1: EtaBinSize: 29 radial bins x 360000000 η bins = "
        f"10440000000 bins, more than the 2^32 - 1 a map can index (RBinSize 1 ({p}:9), "
        "EtaBinSize 1e-6 (command line)); use larger bins or a smaller range"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["TthMin 0", "TthMax 1", "TthBinSize 0"], "<override>:3: TthBinSize: expected > 0, got 0"),
        (["TthMax 1", "TthBinSize -0.1"], "<override>:2: TthBinSize: expected > 0, got -0.1"),
        (["Wavelength -0.17"], "<override>:1: Wavelength: must be > 0 Å (or 0 for none"),
    ],
)  # fmt: skip
def test_invalid_q_and_two_theta_bins_and_wavelength_are_refused(tmp_path, overrides, message):
    """They were ignored (the run binned in R) or, for the wavelength, written to the outputs."""
    p = tmp_path / "p.txt"
    p.write_text(SMALL)
    with pytest.raises(ParameterError, match="^" + message.replace("(", r"\(")):
        IntegrationConfig.from_midas_params(p, overrides).validate()


@pytest.mark.parametrize(
    "overrides", [["QMin 0.5", "QMax 5"], ["QMin 0", "QMax 0.5", "QBinSize -1"]]
)
def test_a_q_range_without_q_bins_is_r_bins_as_in_midas(tmp_path, caplog, overrides):
    """MIDAS bins in R unless QBinSize > 0 (a MIDAS file with QMin/QMax and no QBinSize was
    refused for a while): R bins, and a warning naming the keys."""
    p = tmp_path / "p.txt"
    p.write_text(SMALL)
    with caplog.at_level(logging.WARNING, logger="radint"):
        c = IntegrationConfig.from_midas_params(p, overrides).validate()
    assert c.radial_mode == "r"
    assert "no Q bins (as in MIDAS, which bins in R unless QBinSize > 0)" in caplog.text


def test_a_polarization_fraction_outside_its_range_is_warned(tmp_path, caplog):
    p = tmp_path / "p.txt"
    p.write_text(SMALL + "PolarizationFraction 2\n")
    with caplog.at_level(logging.WARNING, logger="radint"):
        IntegrationConfig.from_midas_params(p).validate()
        IntegrationConfig.from_midas_params(p, ["PolarizationFraction 0.95"]).validate()
    assert caplog.text.count(f"{p}:11: PolarizationFraction: 2 is outside -1 .. 1") == 1


def test_wavelength_zero_is_midas_none_and_warned(tmp_path, caplog):
    """MIDAS reads Wavelength 0 as "no wavelength" (DetectorMapper's default): accepted, warned,
    R bins; radint's own midas_text (QBinSize 0, Wavelength 0) still reads back quietly."""
    p = tmp_path / "p.txt"
    p.write_text(SMALL + "Wavelength 0\n")
    with caplog.at_level(logging.WARNING, logger="radint"):
        c = IntegrationConfig.from_midas_params(p).validate()
    assert c.radial_mode == "r"
    assert f"{p}:11: Wavelength: 0 means no wavelength (as in MIDAS)" in caplog.text
    caplog.clear()
    c = IntegrationConfig.from_text(SMALL.replace("Wavelength 0.17\n", ""), "q.txt")
    assert "QBinSize 0" in c.midas_text() and "Wavelength 0" in c.midas_text()
    with caplog.at_level(logging.WARNING, logger="radint"):
        IntegrationConfig.from_midas_params(p, ["Wavelength 0.2"]).validate()
        c.with_overrides(["RMax 25"]).validate()
    assert caplog.text == ""


@pytest.mark.parametrize(
    "line", ["NrPixelsY 53.5", "NrPixelsY 1e3", "ImTransOpt 1e0", "SubPixelLevel 2.7"]
)
def test_integer_keys_refuse_spellings_atoi_reads_otherwise(tmp_path, line):
    """`NrPixelsY 1e3` was 1000 (MIDAS's atoi reads 1) while `NrPixelsY 53.5` was an error;
    only spellings both read alike (`2`, `2.0`) are integers."""
    p = tmp_path / "p.txt"
    p.write_text(SMALL)
    key = line.split()[0]
    with pytest.raises(ParameterError, match=rf"^<override>:1: {key}: expected an integer, got "):
        IntegrationConfig.from_midas_params(p, [line])
    assert IntegrationConfig.from_midas_params(p, ["NrPixelsY 53.0"]).n_pixels_y == 53


def test_extra_values_on_a_line_are_warned(tmp_path, caplog):
    """`px 172 999`, `BC 26 18 5` ...: the extra values were dropped without a word (MIDAS's
    sscanf drops them too, so they stay accepted); keys that take a list stay quiet.
    `ImTransOpt 1 2` is one transform in DetectorMapper's Map.bin (IntegratorZarrOMP applies
    none itself) and in midas-integrate: the second was applied too, a 180° turn from MIDAS."""
    p = tmp_path / "p.txt"
    p.write_text(
        "NrPixelsY 53\nNrPixelsZ 37\npx 172 999\nLsd 500000 junk\nBC 26 18 5\nRBinSize 1 7\n"
        "ImTransOpt 1 2\nPeakLocation 10 20\nNPanelsY 3\nPanelGapsY 1 2\n"
    )
    with caplog.at_level(logging.WARNING, logger="radint"):
        c = IntegrationConfig.from_midas_params(p, ["EtaBinSize 5 6"])
    assert (c.pixel_size_y_um, c.lsd_um, c.bc_z_px, c.r_bin_px) == (172, 500000, 18, 1)
    assert c.im_trans_opt == (1,)
    extra = [r.getMessage() for r in caplog.records if "extra value" in r.getMessage()]
    assert extra == [
        f"{p}:3: px: 1 extra value(s) ignored: 999",
        f"{p}:4: Lsd: 1 extra value(s) ignored: junk",
        f"{p}:5: BC: 1 extra value(s) ignored: 5",
        f"{p}:6: RBinSize: 1 extra value(s) ignored: 7",
        f"{p}:7: ImTransOpt: 1 extra value(s) ignored: 2 (one transform per line, as "
        "DetectorMapper and midas-integrate read it: give each on its own ImTransOpt line to "
        "apply it too)",
        "<override>:1: EtaBinSize: 1 extra value(s) ignored: 6",
    ]


def test_omega_is_a_key_radint_reads(tmp_path):
    """Regression (review): `Omega` (one ω for every frame of a stream, read by MIDAS's stream
    post-processor) was kept among the keys radint does not use, so `radint stream P Omega 42`
    was refused as an unknown override although the stream's zarr.zip uses it."""
    from radint.cli import main
    from tests.conftest import SMALL

    params = tmp_path / "p.txt"
    params.write_text(SMALL)
    config = IntegrationConfig.from_midas_params(params, ["Omega 42"])
    assert config.omega_deg == 42 and "Omega" in config.set_at
    assert not [u for u in config.unknown if u[0] == "Omega"]
    assert "Omega 42" in config.midas_text()
    assert main(["info", str(params), "Omega", "42"]) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_pixels_y": -5}, "n_pixels_y: expected an integer >= 0 (in range), got -5"),
        ({"lsd_um": "far"}, "lsd_um: expected a number, got 'far'"),
        ({"sum_images": "x"}, "sum_images: expected True or False, got 'x'"),
    ],
)
def test_a_field_of_the_wrong_type_says_what_it_needs(change, message):
    """Audit: replace(n_pixels_y=-5) said "OverflowError: can't convert negative int to
    unsigned"."""
    from radint import IntegrationConfig
    from radint.exceptions import ParameterError

    with pytest.raises(ParameterError, match=re.escape(f"configuration field {message}")):
        IntegrationConfig().replace(**change).validate()


def test_replace_forgets_the_line_that_no_longer_holds_the_value():
    """Review: replace(r_bin_px=-1) was refused as "parameters.txt:20: RBinSize: must be > 0,
    got -1", blaming a line that says RBinSize 1; a misspelled field raised a bare TypeError."""
    from pathlib import Path

    from radint import IntegrationConfig
    from radint.exceptions import ParameterError

    path = Path(__file__).resolve().parent.parent / "examples" / "parameters.txt"
    config = IntegrationConfig.from_midas_params(path)
    assert config.set_at["RBinSize"][1] > 0
    changed = config.replace(r_bin_px=-1)
    by_replace = (f"{path}, changed by replace()", 0)
    assert changed.set_at["RBinSize"] == by_replace
    # Review: the error blamed "parameters.txt: RBinSize" where the file says RBinSize 0.25.
    with pytest.raises(
        ParameterError,
        match=r"parameters.txt, changed by replace\(\): RBinSize: must be > 0, got -1",
    ):
        changed.bin_edges()
    # A key the file did not set is marked too (it counted as a default).
    assert config.replace(tth_bin_deg=0.1).set_at["TthBinSize"] == by_replace
    with pytest.raises(ParameterError, match="no field 'r_bin_pix'; did you mean r_bin_px"):
        config.replace(r_bin_pix=2)
    # MIDAS keys name their fields (a user's likeliest slip).
    with pytest.raises(ParameterError, match="no field 'RBinSize'; did you mean r_bin_px"):
        config.replace(RBinSize=2)
    with pytest.raises(ParameterError, match="did you mean bc_y_px and bc_z_px"):
        config.replace(BC=(1, 2))
    assert config.replace(lsd_um=5e5).set_at["Lsd"] == by_replace
    assert config.set_at["Lsd"][1] > 0  # the original is unchanged


def test_the_python_api_refuses_misspelled_override_keys(tmp_path):
    """Review: from_midas_params(path, {"RBinSzie": 2}) and with_overrides returned with the
    default binning, where the command line refused the same typo."""
    from pathlib import Path

    from radint import IntegrationConfig
    from radint.exceptions import ParameterError

    path = Path(__file__).resolve().parent.parent / "examples" / "parameters.txt"
    with pytest.raises(ParameterError, match="override RBinSzie 2: .*did you mean RBinSize"):
        IntegrationConfig.from_midas_params(path, {"RBinSzie": 2})
    config = IntegrationConfig.from_midas_params(path)
    with pytest.raises(ParameterError, match="override RBinSzie 2: .*did you mean RBinSize"):
        config.with_overrides({"RBinSzie": 2})
    assert config.with_overrides({"RBinSize": 2}).r_bin_px == 2.0


def test_lines_midas_reads_otherwise_are_read_as_c_does_or_warned(tmp_path, caplog):
    """Regression (parameter-file audit against DetectorMapper / IntegratorZarrOMP runs):
    `p01` / `p+4` were read as p1 / p4 (C: other keys); `Lsd#old 5` was refused as an Lsd line
    without a value (C: another key); a byte-order mark, lone-CR line ends, a `;` after a file
    name and several PeakLocation values on one line were read differently from C without a
    word; YPixelSize's note said DetectorMapper keeps its default where it keeps px."""
    base = "NrPixels 100\nLsd 500000\npx 172\nBC 50 50\nRMax 40\np1 0.5\n"
    p = tmp_path / "p.txt"
    p.write_text(base + "p01 0.001\np+4 0.01\nLsd#old 7\n")
    with caplog.at_level(logging.WARNING, logger="radint"):
        c = IntegrationConfig.from_midas_params(p).validate()
    assert c.distortion[1] == 0.5 and c.distortion[4] == 0 and c.lsd_um == 500000
    assert {u[0] for u in c.unknown} >= {"p01", "p+4", "Lsd#old"}

    def notes(text: str | bytes) -> str:
        caplog.clear()
        if isinstance(text, str):
            p.write_text(text)
        else:
            p.write_bytes(text)
        with caplog.at_level(logging.WARNING, logger="radint"):
            IntegrationConfig.from_midas_params(p)
        return caplog.text

    assert "UTF-8 byte-order mark" in notes(("\ufeff" + base).encode())
    lone_cr = notes(base.replace("\n", "\r").encode())
    assert "lone CR" in lone_cr and f"{p}:1:" in lone_cr
    (tmp_path / "mask.tif").write_bytes(b"")
    assert "MaskFile mask.tif;: radint reads the name without the ';'" in notes(
        base + "MaskFile mask.tif;\n"
    )
    assert "PeakLocation with 2 values on one line" in notes(base + "PeakLocation 20 30\n")
    assert "DetectorMapper ignores YPixelSize and keeps px's 172" in notes(
        base + "YPixelSize 150\n"
    )
    assert "radint and IntegratorZarrOMP read it" not in notes(base + "tx\t0.3\n")


def test_field_name_hints_are_deterministic_and_name_the_midas_keys():
    """Review: a name several fields begin got one of them by hash order (pixel_size_y_um or
    _z_um from run to run); `distortion` given as an override named a key `p` that does not
    exist."""
    import subprocess
    import sys

    code = (
        "from radint.config import IntegrationConfig as C\n"
        "try: C().replace(pixel_size=1)\n"
        "except Exception as e: print(e)"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            check=True,
        ).stdout
        for seed in (1, 2, 3)
    }
    assert seen == {
        "IntegrationConfig has no field 'pixel_size'; did you mean pixel_size_y_um or "
        "pixel_size_z_um?\n"
    }
    with pytest.raises(ParameterError, match=r"give its MIDAS key p0 \.\. p14 here"):
        IntegrationConfig().with_overrides({"distortion": "0 0 0"})


def test_every_unknown_override_without_a_hint_gets_the_other_programs_note():
    """Review: with a field name among the overrides, a plain unknown key lost its note."""
    with pytest.raises(ParameterError) as info:
        IntegrationConfig().with_overrides({"r_bin_px": 2, "FooBar": 1})
    assert "give its MIDAS key RBinSize here" in str(info.value)
    assert "override FooBar 1: not a parameter radint knows (keys of other MIDAS programs" in (
        str(info.value)
    )
