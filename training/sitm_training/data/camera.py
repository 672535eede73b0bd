"""Camera simulation: response curves, colour jitter, exposure, sensor noise, clipping, quantization, JPEG.

Linear values are in *exposure units*: after :func:`exposure_scale` the radiance is multiplied so that 1.0
is the value that just reaches the sensor's clipping point at the input's exposure (EV 0). A capture at EV
``e`` multiplies by ``2**e``, adds noise, clips to [0, 1], applies the response curve and quantizes:

    code = round(255 * f(clip(2**e * hdr + noise, 0, 1)))          (then optionally JPEG)

So the well-exposed part of ``hdr`` equals ``f^-1(code / 255)`` up to noise and quantization.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sitm_trt.media.io import srgb_oetf

__all__ = [
    "RESPONSE_KINDS",
    "Response",
    "sample_response",
    "Camera",
    "CameraConfig",
    "sample_camera",
    "apply_color",
    "exposure_scale",
    "sample_exposure",
    "render",
    "capture",
    "jpeg_roundtrip",
]

RESPONSE_KINDS = ("srgb", "gamma", "filmic", "emor", "linear", "aces", "hable")
# ``aces`` is in no default CameraConfig: it is a validation-only family (``--holdout-response aces``), a filmic
# curve with a toe that no checkpoint has trained on, so a model can be scored on a camera it has never seen.
# ``hable`` is another display-referred S-curve (a different toe and shoulder), trainable with
# ``data build --responses ... hable``; it is not in the default CameraConfig either (docs/data.md).

_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)  # Rec. 709 luminance weights


@dataclass(frozen=True)
class Response:
    """A camera response curve ``f: [0, 1] -> [0, 1]``, monotone, ``f(0) = 0``, ``f(1) = 1``.

    Kinds and parameters (``params``):

    * ``srgb``: ``()``, the sRGB OETF (IEC 61966-2-1).
    * ``gamma``: ``(g,)``, ``f(x) = x ** (1 / g)``.
    * ``filmic``: ``(n, c)``, normalized Naka-Rushton sigmoid in log exposure,
      ``f(x) = (1 + c) x**n / (x**n + c)`` (a toe from ``n < 1`` and a shoulder from ``c``).
    * ``emor``: ``(g, c1, c2, c3)``, an EMoR-like smooth perturbation of a gamma curve,
      ``b = x ** (1 / g)``, ``f = b + sum_k c_k sin(k pi b) / (k pi)``; with ``sum |c_k| < 1`` the derivative
      ``1 + sum c_k cos(k pi b)`` stays positive, so the curve is monotone.
    * ``linear``: ``()``, ``f(x) = x`` (tests and raw-like cameras).
    * ``aces``: ``(k,)``, a display-referred filmic camera: the exposure ``k x`` (``k`` = where the clip point
      lands on the curve) through Narkowicz's fit of the ACES filmic curve
      ``A(v) = v (2.51 v + 0.03) / (v (2.43 v + 0.59) + 0.14)``, normalized so that 1 maps to 1, then the
      sRGB encoding: ``f(x) = srgb(A(k x) / A(k))``. Its toe darkens the shadows (``A'(0) = 0.21``) and its
      shoulder compresses the highlights, unlike ``filmic``'s Naka-Rushton curve, which has no toe in code
      values. Validation only (see ``RESPONSE_KINDS``).
    * ``hable``: ``(k,)``, the same construction through Hable's filmic curve (Uncharted 2,
      ``U(v) = (v (0.15 v + 0.05) + 0.004) / (v (0.15 v + 0.5) + 0.06) - 1 / 15``):
      ``f(x) = srgb(U(k x) / U(k))``. Its toe lifts the shadows where ``aces``' darkens them (``U`` is linear
      near 0 and the sRGB encoding steepens it) and its shoulder is softer at the same ``k``; at their closest the
      two families' curves still differ by 0.085 in code value somewhere (``k`` from 4 to 32 against ``aces``' 1
      to 4; the largest difference over ``x``, minimised over both ``k``).
    """

    kind: str
    params: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        expected = {"srgb": 0, "gamma": 1, "filmic": 2, "emor": 4, "linear": 0, "aces": 1, "hable": 1}
        if self.kind not in expected:
            raise ValueError(f"unknown response kind {self.kind!r}, expected one of {RESPONSE_KINDS}")
        if len(self.params) != expected[self.kind]:
            raise ValueError(f"response {self.kind!r} takes {expected[self.kind]} parameters, got {self.params}")
        if self.kind == "emor" and sum(abs(c) for c in self.params[1:]) >= 1.0:
            raise ValueError(f"emor coefficients must have sum |c_k| < 1 to stay monotone, got {self.params}")
        if self.kind in ("aces", "hable") and not self.params[0] > 0.0:
            raise ValueError(f"{self.kind} exposure k must be > 0, got {self.params}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Linear [0, 1] -> code value [0, 1] (input clipped to [0, 1]); float32."""
        x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
        if self.kind == "linear":
            return x
        if self.kind == "srgb":
            return srgb_oetf(x)
        if self.kind == "gamma":
            return np.power(x, np.float32(1.0 / self.params[0]))
        if self.kind == "filmic":
            n, c = self.params
            xn = np.power(x, np.float32(n))
            return ((1.0 + c) * xn / (xn + c)).astype(np.float32)
        if self.kind == "aces":
            return _srgb_oetf_f64(_aces_fit(x.astype(np.float64) * self.params[0]) / _aces_fit(self.params[0]))
        if self.kind == "hable":
            return _srgb_oetf_f64(_hable(x.astype(np.float64) * self.params[0]) / _hable(self.params[0]))
        g, *cs = self.params
        b = np.power(x, np.float32(1.0 / g))
        y = b.copy()
        for k, ck in enumerate(cs, start=1):
            y += np.float32(ck / (k * math.pi)) * np.sin(np.float32(k * math.pi) * b)
        return np.clip(y, 0.0, 1.0)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Code value [0, 1] -> linear [0, 1] (exact for all kinds but ``emor``, which is tabulated)."""
        y = np.clip(np.asarray(y, np.float64), 0.0, 1.0)
        if self.kind == "linear":
            x = y
        elif self.kind == "srgb":
            x = np.where(y <= 0.04045, y / 12.92, np.power((y + 0.055) / 1.055, 2.4))
        elif self.kind == "gamma":
            x = np.power(y, self.params[0])
        elif self.kind == "filmic":
            n, c = self.params
            x = np.power(y * c / np.maximum(1.0 + c - y, 1e-12), 1.0 / n)
        else:  # emor, aces, hable: tabulated
            t = np.linspace(0.0, 1.0, 16385) ** 4  # dense near 0 where the curve is steep
            x = np.interp(y, self(t.astype(np.float32)).astype(np.float64), t)
        return np.clip(x, 0.0, 1.0).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": [float(p) for p in self.params]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Response:
        return cls(str(d["kind"]), tuple(float(p) for p in d.get("params", ())))


def _aces_fit(v: np.ndarray | float) -> np.ndarray:
    """Narkowicz's fit of the ACES filmic tone curve (scene-linear -> display-linear), monotone for v >= 0."""
    v = np.asarray(v, np.float64)
    return v * (2.51 * v + 0.03) / (v * (2.43 * v + 0.59) + 0.14)


def _hable(v: np.ndarray | float) -> np.ndarray:
    """Hable's filmic tone curve (Uncharted 2: A..F = 0.15, 0.50, 0.10, 0.20, 0.02, 0.30), ``U(0) = 0``,
    monotone for v >= 0."""
    v = np.asarray(v, np.float64)
    a, b, c, d, e, f = 0.15, 0.50, 0.10, 0.20, 0.02, 0.30
    return (v * (a * v + c * b) + d * e) / (v * (a * v + b) + d * f) - e / f


def _srgb_oetf_f64(x: np.ndarray) -> np.ndarray:
    """``sitm_trt.media.io.srgb_oetf`` without rounding its input to float32 first: the aces camera encodes its
    float64 display values (the samples of ``--holdout-response aces`` were built and scored this way)."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055).astype(np.float32)


def sample_response(rng: np.random.Generator, kinds: tuple[str, ...] = ("srgb", "gamma", "filmic", "emor")) -> Response:
    """Draw a response curve: the kind uniformly from ``kinds``, parameters uniformly in plausible ranges."""
    kind = str(kinds[int(rng.integers(len(kinds)))])
    if kind == "gamma":
        return Response("gamma", (float(rng.uniform(1.6, 2.8)),))
    if kind == "filmic":
        return Response("filmic", (float(rng.uniform(0.5, 0.9)), float(rng.uniform(0.2, 1.0))))
    if kind == "emor":
        c = rng.uniform(-1.0, 1.0, 3)
        c *= rng.uniform(0.1, 0.8) / np.abs(c).sum()
        return Response("emor", (float(rng.uniform(1.6, 2.6)), *map(float, c)))
    if kind == "aces":  # the clip point 0 .. 2 EV above the shoulder (A(1) = 0.80 of the curve's limit)
        return Response("aces", (float(2.0 ** rng.uniform(0.0, 2.0)),))
    if kind == "hable":  # the clip point 2 .. 5 EV up the curve: its shoulder from soft to as strong as aces'
        return Response("hable", (float(2.0 ** rng.uniform(2.0, 5.0)),))
    return Response(kind)


@dataclass(frozen=True)
class Camera:
    """One simulated camera, shared by every image of a stack."""

    response: Response
    wb: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gains on the radiance
    saturation: float = 1.0  # 1 = unchanged, 0 = gray; applied in linear RGB around Rec. 709 luminance
    shot_noise: float = 0.0  # noise variance = shot_noise * x + read_noise**2 (x: linear, 1 = clip)
    read_noise: float = 0.0
    jpeg_quality: int | None = None  # None = no JPEG

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["response"] = self.response.to_dict()
        d["wb"] = list(self.wb)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Camera:
        return cls(
            response=Response.from_dict(d["response"]),
            wb=tuple(float(v) for v in d["wb"]),  # type: ignore[arg-type]
            saturation=float(d["saturation"]),
            shot_noise=float(d["shot_noise"]),
            read_noise=float(d["read_noise"]),
            jpeg_quality=None if d.get("jpeg_quality") is None else int(d["jpeg_quality"]),
        )


@dataclass(frozen=True)
class CameraConfig:
    """The ranges :func:`sample_camera` and :func:`sample_exposure` draw from (recorded in the manifest)."""

    responses: tuple[str, ...] = ("srgb", "gamma", "filmic", "emor")
    wb_sigma: float = 0.08  # log-normal sigma of the R and B gains (G = 1)
    saturation: tuple[float, float] = (0.7, 1.3)
    shot_noise: tuple[float, float] = (1e-5, 2e-3)  # log-uniform
    read_noise: tuple[float, float] = (2e-4, 3e-3)  # log-uniform
    jpeg_prob: float = 0.3
    jpeg_quality: tuple[int, int] = (70, 98)
    clip_fraction: tuple[float, float] = (0.002, 0.4)  # log-uniform target fraction of clipped pixels
    under_prob: float = 0.25  # probability of an under-exposed input instead (nothing but emitters clips)
    under_ev: tuple[float, float] = (0.5, 3.0)  # the 99.5th percentile sits this many EV below clipping

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_camera(rng: np.random.Generator, config: CameraConfig = CameraConfig()) -> Camera:
    """Draw a camera: response curve, white balance, saturation, noise, and (sometimes) a JPEG quality."""
    response = sample_response(rng, config.responses)
    gains = np.exp(rng.normal(0.0, config.wb_sigma, 2))
    wb = (float(gains[0]), 1.0, float(gains[1]))
    saturation = float(rng.uniform(*config.saturation))
    shot = _log_uniform(rng, *config.shot_noise)
    read = _log_uniform(rng, *config.read_noise)
    jpeg = (
        int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
        if rng.random() < config.jpeg_prob
        else None
    )
    return Camera(response, wb, saturation, shot, read, jpeg)


def apply_color(radiance: np.ndarray, camera: Camera) -> np.ndarray:
    """White balance and saturation in linear RGB (a 3x3 matrix), negatives clamped to 0; float32.

    ``out = L + s (g * x - L)`` with ``g`` the channel gains and ``L`` the Rec. 709 luminance of ``g * x``.
    """
    x = radiance.astype(np.float32) * np.asarray(camera.wb, np.float32)
    if camera.saturation != 1.0:
        lum = x @ _LUMA
        x = lum[..., None] + np.float32(camera.saturation) * (x - lum[..., None])
    return np.maximum(x, 0.0)


def exposure_scale(radiance: np.ndarray, clip_fraction: float) -> float:
    """The factor that makes a fraction ``clip_fraction`` of the pixels clip (max channel >= 1).

    It maps the ``1 - clip_fraction`` quantile of the per-pixel maximum channel to 1.0.
    """
    if not 0.0 < clip_fraction < 1.0:
        raise ValueError(f"clip_fraction must be in (0, 1), got {clip_fraction}")
    peak = radiance.max(axis=-1)
    q = float(np.quantile(peak, 1.0 - clip_fraction))
    if not q > 0.0:
        positive = peak[peak > 0]
        if positive.size == 0:
            raise ValueError("cannot expose an all-black image")
        q = float(positive.min())
    return 1.0 / q


def sample_exposure(
    rng: np.random.Generator, radiance: np.ndarray, config: CameraConfig = CameraConfig()
) -> tuple[float, dict[str, Any]]:
    """Choose the input exposure; returns ``(scale, info)`` with ``hdr = scale * radiance``.

    With probability ``1 - under_prob`` the target clipped fraction is drawn log-uniformly from
    ``clip_fraction`` and the scale comes from :func:`exposure_scale`. Otherwise the input is under-exposed:
    the 99.5th percentile of the maximum channel is placed ``under_ev`` EV below the clipping point.
    """
    if rng.random() < config.under_prob:
        ev = float(rng.uniform(*config.under_ev))
        q = float(np.quantile(radiance.max(axis=-1), 0.995))
        if not q > 0.0:
            return exposure_scale(radiance, 1e-3), {"mode": "under", "under_ev": ev}
        return 2.0**-ev / q, {"mode": "under", "under_ev": ev}
    fraction = _log_uniform(rng, *config.clip_fraction)
    return exposure_scale(radiance, fraction), {"mode": "clip", "clip_fraction": fraction}


def render(hdr: np.ndarray, camera: Camera, ev: float = 0.0) -> np.ndarray:
    """Noise-free, unquantized code values ``f(clip(2**ev * hdr))`` in [0, 1] (float32)."""
    return camera.response(hdr * np.float32(2.0**ev))


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode an RGB ``uint8`` image as JPEG (OpenCV's libjpeg, 4:2:0)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV failure
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy()


def capture(hdr: np.ndarray, camera: Camera, ev: float, rng: np.random.Generator | None) -> np.ndarray:
    """One shot at EV ``ev``: exposure, Poisson-Gaussian noise, clipping, response, 8-bit, optional JPEG.

    ``hdr`` is float ``(H, W, 3)`` in exposure units (1.0 clips at EV 0). ``rng=None`` gives a noise-free
    shot. Returns ``uint8`` ``(H, W, 3)``.
    """
    x = hdr.astype(np.float32) * np.float32(2.0**ev)
    if rng is not None and (camera.shot_noise > 0.0 or camera.read_noise > 0.0):
        sigma = np.sqrt(np.float32(camera.shot_noise) * np.clip(x, 0.0, 1.0) + np.float32(camera.read_noise**2))
        x = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
    code = np.rint(camera.response(x) * np.float32(255.0)).astype(np.uint8)
    if camera.jpeg_quality is not None:
        code = jpeg_roundtrip(code, camera.jpeg_quality)
    return code
