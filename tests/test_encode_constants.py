"""The standards' constants of the output encoding and the sRGB decode: the C++ copy the kernels use
(csrc/include/sitm/encode_constants.h, shown as ``sitm_trt._C.ENCODE_CONSTANTS``) against the values the
standards publish, and the Python copies (the float64 reference ``sitm_trt.media.transfer``, the sRGB curves of
``sitm_trt.media.io`` and ``sitm_trt.reference``) against the C++ one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sitm_trt import kernels as K
from sitm_trt import reference
from sitm_trt.media import io
from sitm_trt.media import transfer as T

_HLG_A = 0.17883277

# name -> (the published value, the absolute tolerance of the C++ copy)
PUBLISHED = {
    # SMPTE ST 2084: exact rationals
    "pq_m1": (2610 / 16384, 0.0),
    "pq_m2": (2523 / 4096 * 128, 0.0),
    "pq_c1": (3424 / 4096, 0.0),
    "pq_c2": (2413 / 4096 * 32, 0.0),
    "pq_c3": (2392 / 4096 * 32, 0.0),
    "pq_peak": (10000.0, 0.0),
    # ARIB STD-B67 / ITU-R BT.2100 HLG; c is printed to 8 decimals (the C++ copy holds that value)
    "hlg_a": (_HLG_A, 0.0),
    "hlg_b": (1 - 4 * _HLG_A, 0.0),
    "hlg_c": (0.5 - _HLG_A * math.log(4 * _HLG_A), 5e-9),
    # BT.2100 Table 5 note: system gamma 1.2 + 0.42 log10(L_W / 1000)
    "hlg_gamma": (1.2, 0.0),
    "hlg_gamma_per_decade": (0.42, 0.0),
    "hlg_gamma_ref_peak": (1000.0, 0.0),
    # BT.709-6 item 3.2
    "luma_bt709": ((0.2126, 0.7152, 0.0722), 0.0),
    # BT.2100 Table 9, narrow range in 8-bit units
    "narrow_luma_scale": (219.0, 0.0),
    "narrow_luma_offset": (16.0, 0.0),
    "narrow_chroma_scale": (224.0, 0.0),
    "narrow_chroma_offset": (128.0, 0.0),
    # IEC 61966-2-1: V <= 0.04045 ? V / 12.92 : ((V + 0.055) / 1.055) ^ 2.4 (0.04045 = 12.92 * 0.0031308, the
    # encode threshold, to 5 decimals)
    "srgb_slope": (12.92, 0.0),
    "srgb_decode_threshold": (0.04045, 0.0),
    "srgb_offset": (0.055, 0.0),
    "srgb_exponent": (2.4, 0.0),
}


@pytest.fixture(scope="module")
def cpp():
    return K.extension().ENCODE_CONSTANTS


def test_cpp_constants_are_read_only(cpp):
    with pytest.raises(TypeError):
        cpp["pq_m1"] = 0.0


def test_cpp_constants_are_the_published_values(cpp):
    assert set(cpp) == set(PUBLISHED)  # a new constant needs its published value here
    for name, (want, tol) in PUBLISHED.items():
        np.testing.assert_allclose(cpp[name], want, rtol=0, atol=tol, err_msg=name)


def test_transfer_reference_holds_the_cpp_constants(cpp):
    python = {"pq_m1": T._M1, "pq_m2": T._M2, "pq_c1": T._C1, "pq_c2": T._C2, "pq_c3": T._C3,
              "hlg_a": T._HLG_A, "hlg_b": T._HLG_B, "luma_bt709": T.LUMA["bt709"]}
    for name, value in python.items():
        assert value == cpp[name], name
    # The reference computes c = 0.5 - a ln(4a); the kernels hold the printed 8 decimals.
    assert abs(T._HLG_C - cpp["hlg_c"]) <= 5e-9


@pytest.mark.parametrize("peak", [100.0, 400.0, 1000.0, 4000.0, 10000.0])
def test_transfer_hlg_system_gamma_matches_cpp(cpp, peak):
    want = cpp["hlg_gamma"] + cpp["hlg_gamma_per_decade"] * math.log10(peak / cpp["hlg_gamma_ref_peak"])
    assert T.hlg_system_gamma(peak) == pytest.approx(want, rel=1e-15)


def test_transfer_pq_peak_matches_cpp(cpp):
    assert T.pq_inverse_eotf(cpp["pq_peak"]) == pytest.approx(1.0, abs=1e-15)
    assert T.pq_inverse_eotf(2 * cpp["pq_peak"]) == pytest.approx(1.0, abs=1e-15)  # clipped at the peak
    assert T.pq_eotf(1.0) == pytest.approx(cpp["pq_peak"], rel=1e-12)


@pytest.mark.parametrize("bits", [8, 10, 12])
def test_transfer_narrow_range_matches_cpp(cpp, bits):
    unit = 2.0 ** (bits - 8)
    ys, yo = cpp["narrow_luma_scale"] * unit, cpp["narrow_luma_offset"] * unit
    cs, co = cpp["narrow_chroma_scale"] * unit, cpp["narrow_chroma_offset"] * unit
    np.testing.assert_array_equal(T.quantize(np.array([0.0, 1.0]), "limited", bits), [yo, yo + ys])
    np.testing.assert_array_equal(T.quantize(np.array([-0.5, 0.0, 0.5]), "limited", bits, chroma=True),
                                  [co - cs / 2, co, co + cs / 2])


def _srgb_decode(v: np.ndarray, c) -> np.ndarray:
    """IEC 61966-2-1 decode in float64 with the C++ constants."""
    a = c["srgb_offset"]
    return np.where(v <= c["srgb_decode_threshold"], v / c["srgb_slope"], ((v + a) / (1 + a)) ** c["srgb_exponent"])


def test_python_srgb_curves_match_cpp(cpp):
    # Both segments, the joint, and the ends (1.0 decodes to exactly 1 only if offset and scale agree).
    v = np.concatenate([np.linspace(0.0, 1.0, 1001), [0.04045 * (1 - 1e-6), 0.04045 * (1 + 1e-6)]])
    want = _srgb_decode(v, cpp)
    np.testing.assert_allclose(io.srgb_eotf(v), want, rtol=1e-6, atol=1e-9)
    got = reference.srgb_to_linear(torch.from_numpy(v)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    # The encoder inverts the decoder (its own threshold 0.0031308 and exponent 1 / 2.4 agree).
    np.testing.assert_allclose(io.srgb_oetf(want), v, rtol=1e-5, atol=1e-6)
