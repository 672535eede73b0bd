"""Procedural HDR scenes with exact ground truth: textures from noise, shapes, skies, emitters, highlights.

Every scene is linear RGB radiance (float32, arbitrary scale, >= 0) built in NumPy from a seeded generator:

* ``day``: sky gradient with clouds, sun disc with a glow (sometimes out of frame), textured ground and
  objects, some in shadow, specular glints;
* ``backlit``: a bright window/sky behind a dark textured foreground subject;
* ``night``: dark sky and ground, street lamps with halos and light pools, lit windows;
* ``indoor``: textured walls lit by lamps (inverse-square falloff), a bright window showing outdoors,
  lamps and highlights.

The emitters (sun, lamps, glints) are scaled so that the dynamic range ``max / (1st percentile of
luminance)`` hits a target drawn log-uniformly from ``dynamic_range`` (default 10^3 to 10^7). Edges are
anti-aliased (coverage from a signed distance) so the radiance is exact at the pixel level.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["SCENE_KINDS", "fractal_noise", "generate_scene"]

SCENE_KINDS = ("day", "backlit", "night", "indoor")

_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


def _cv2() -> Any:
    import cv2

    return cv2


def fractal_noise(
    rng: np.random.Generator, h: int, w: int, octaves: int = 5, base: int = 3, persistence: float = 0.5
) -> np.ndarray:
    """Sum of upsampled random grids (value noise), normalized to [0, 1]; float32 ``(h, w)``."""
    cv2 = _cv2()
    total = np.zeros((h, w), np.float32)
    amp = 1.0
    for o in range(octaves):
        cells = base * 2**o
        grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
        total += np.float32(amp) * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        amp *= persistence
    lo, hi = float(total.min()), float(total.max())
    return (total - lo) / np.float32(max(hi - lo, 1e-6))


def _random_color(
    rng: np.random.Generator, lo: float = 0.03, hi: float = 0.85, sat: tuple[float, float] = (0.0, 0.8)
) -> np.ndarray:
    """An RGB albedo from a random hue, saturation and value."""
    hue = rng.random()
    s = rng.uniform(*sat)
    v = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
    rgb = v * (1.0 - s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return rgb.astype(np.float32)


class _Canvas:
    """Pixel-centre coordinates in pixels, shared by the shape functions."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.y, self.x = np.mgrid[0:h, 0:w].astype(np.float32) + np.float32(0.5)
        self.size = float(min(h, w))


def _texture(rng: np.random.Generator, cv: _Canvas) -> np.ndarray:
    """A random albedo texture ``(h, w, 3)`` in about [0.02, 0.9]."""
    c1, c2 = _random_color(rng), _random_color(rng)
    kind = rng.integers(4)
    if kind == 0:  # two colours blended by noise
        t = fractal_noise(rng, cv.h, cv.w, octaves=int(rng.integers(3, 6)), base=int(rng.integers(2, 6)))
    elif kind == 1:  # stripes, warped by noise (wood, fabric)
        theta = rng.uniform(0, math.pi)
        freq = rng.uniform(4, 40) / cv.size
        warp = fractal_noise(rng, cv.h, cv.w, octaves=3) * np.float32(rng.uniform(0, 6))
        phase = (cv.x * math.cos(theta) + cv.y * math.sin(theta)) * freq * 2 * math.pi + warp
        t = 0.5 + 0.5 * np.sin(phase)
        t = t ** np.float32(rng.uniform(0.3, 3.0))
    elif kind == 2:  # checker / tiles with soft edges
        freq = rng.uniform(3, 24) / cv.size * math.pi
        s = np.sin(cv.x * freq) * np.sin(cv.y * freq * rng.uniform(0.5, 2.0))
        t = np.clip(s * 4.0 + 0.5, 0.0, 1.0)
    else:  # grain: high-frequency noise on a base colour
        t = fractal_noise(rng, cv.h, cv.w, octaves=2, base=int(cv.size // 4))
    tex = c1 + (c2 - c1) * t[..., None]
    grain = 1.0 + np.float32(rng.uniform(0.0, 0.3)) * (
        fractal_noise(rng, cv.h, cv.w, octaves=2, base=int(cv.size // 8)) - 0.5
    )
    return np.clip(tex * grain[..., None], 0.02, 0.95).astype(np.float32)


def _shape(rng: np.random.Generator, cv: _Canvas, cx: float, cy: float, radius: float) -> np.ndarray:
    """Coverage in [0, 1] of a random ellipse, rotated rectangle or convex polygon (anti-aliased)."""
    kind = rng.integers(3)
    theta = rng.uniform(0, math.pi)
    u = (cv.x - cx) * math.cos(theta) + (cv.y - cy) * math.sin(theta)
    v = -(cv.x - cx) * math.sin(theta) + (cv.y - cy) * math.cos(theta)
    a, b = radius, radius * rng.uniform(0.3, 1.0)
    if kind == 0:
        d = (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * b  # approximate distance in pixels
    elif kind == 1:
        d = np.maximum(np.abs(u) - a, np.abs(v) - b)
    else:
        n = int(rng.integers(3, 7))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        d = np.full_like(u, -np.inf)
        for ang0, ang1 in zip(angles, np.roll(angles, -1)):
            mid = (ang0 + ang1 + (2 * math.pi if ang1 < ang0 else 0.0)) / 2
            half = ((ang1 - ang0) % (2 * math.pi)) / 2
            dist = a * math.cos(min(half, math.pi / 2 - 1e-3))  # edge's distance from the centre
            d = np.maximum(d, u * math.cos(mid) + v * math.sin(mid) - dist)
    return np.clip(0.5 - d, 0.0, 1.0).astype(np.float32)


def _blob(cv: _Canvas, cx: float, cy: float, sigma: float) -> np.ndarray:
    r2 = (cv.x - cx) ** 2 + (cv.y - cy) ** 2
    return np.exp(-r2 / np.float32(2.0 * sigma * sigma)).astype(np.float32)


def _disc(cv: _Canvas, cx: float, cy: float, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(coverage of a disc, distance from its centre in pixels)."""
    r = np.sqrt((cv.x - cx) ** 2 + (cv.y - cy) ** 2)
    return np.clip(radius + 0.5 - r, 0.0, 1.0).astype(np.float32), r


def _emitter(rng: np.random.Generator, cv: _Canvas, cx: float, cy: float, radius: float) -> np.ndarray:
    """A unit-peak emitter ``(h, w)``: a disc plus an exponential glow (glare) around it."""
    disc, r = _disc(cv, cx, cy, radius)
    glow = np.float32(10 ** rng.uniform(-5.0, -2.5)) * np.exp(
        -np.maximum(r - radius, 0.0) / np.float32(radius * rng.uniform(1.0, 4.0))
    )
    return np.maximum(disc, glow.astype(np.float32))


def _paint(img: np.ndarray, cover: np.ndarray, value: np.ndarray) -> None:
    """Composite ``value`` over ``img`` with coverage ``cover`` (in place)."""
    img *= (1.0 - cover)[..., None]
    img += cover[..., None] * value


def _objects(
    rng: np.random.Generator,
    cv: _Canvas,
    img: np.ndarray,
    n: int,
    light: float,
    region: tuple[float, float],
    glints: list[tuple[float, float, float, float]],
) -> None:
    """Paint ``n`` textured shapes lit at ``light`` or in shadow; remember places for specular glints."""
    for _ in range(n):
        cx = rng.uniform(0, cv.w)
        cy = rng.uniform(region[0], region[1]) * cv.h
        radius = cv.size * math.exp(rng.uniform(math.log(0.03), math.log(0.35)))
        cover = _shape(rng, cv, cx, cy, radius)
        lit = light * (1.0 if rng.random() < 0.6 else 10 ** -rng.uniform(0.7, 2.0))
        shading = 1.0 + np.float32(rng.uniform(-0.5, 0.5)) * (cv.y - cy) / np.float32(radius)
        value = _texture(rng, cv) * (np.float32(lit) * np.clip(shading, 0.2, 2.0))[..., None]
        _paint(img, cover, value)
        if rng.random() < 0.4:
            glints.append((cx + rng.uniform(-0.5, 0.5) * radius, cy + rng.uniform(-0.5, 0.5) * radius, lit, radius))


def _day(rng: np.random.Generator, cv: _Canvas, emit: np.ndarray, glints: list) -> np.ndarray:
    horizon = rng.uniform(0.2, 0.7)
    t = np.clip(cv.y / np.float32(horizon * cv.h), 0.0, 1.0)[..., None]
    sky_level = rng.uniform(2.0, 8.0)
    zenith = np.array([0.25, 0.45, 1.0], np.float32) * np.float32(rng.uniform(0.5, 1.0))
    horizon_col = np.array([1.0, 0.95, 0.85], np.float32) * np.float32(rng.uniform(1.0, 2.0))
    if rng.random() < 0.3:  # sunset tint
        horizon_col = np.array([1.6, 0.8, 0.4], np.float32)
    sky = (zenith + (horizon_col - zenith) * t**1.5) * np.float32(sky_level)
    clouds = fractal_noise(rng, cv.h, cv.w, octaves=5, base=int(rng.integers(2, 5)))
    amount = rng.uniform(0.0, 0.8)
    cover = np.clip((clouds - (1.0 - amount)) * 4.0, 0.0, 1.0)
    cloud_level = sky_level * rng.uniform(0.4, 2.0)
    sky = sky * (1 - cover[..., None]) + cover[..., None] * np.float32(cloud_level) * (0.6 + 0.4 * clouds[..., None])
    ground = _texture(rng, cv) * np.float32(rng.uniform(0.6, 1.2))
    g = np.clip((cv.y - horizon * cv.h) + 0.5, 0.0, 1.0)
    img = sky * (1 - g[..., None]) + ground * g[..., None]
    _objects(rng, cv, img, int(rng.integers(2, 9)), 1.0, (horizon - 0.1, 1.0), glints)
    if rng.random() < 0.7:  # the sun
        emit += _emitter(
            rng, cv, rng.uniform(0, cv.w), rng.uniform(0.02, horizon) * cv.h * 0.95, cv.size * rng.uniform(0.008, 0.03)
        )
    return img


def _backlit(rng: np.random.Generator, cv: _Canvas, emit: np.ndarray, glints: list) -> np.ndarray:
    bg_level = rng.uniform(5.0, 50.0)
    bg = _texture(rng, cv) * np.float32(0.3) + np.float32(0.7)
    bg = bg * np.float32(bg_level) * (0.6 + 0.8 * fractal_noise(rng, cv.h, cv.w, octaves=3))[..., None]
    dark = 10 ** -rng.uniform(1.0, 3.0)
    img = bg.astype(np.float32)
    # a frame / wall around the bright opening
    frame = 1.0 - _shape(
        rng, cv, cv.w * rng.uniform(0.3, 0.7), cv.h * rng.uniform(0.3, 0.6), cv.size * rng.uniform(0.3, 0.6)
    )
    _paint(img, frame.astype(np.float32), _texture(rng, cv) * np.float32(bg_level * dark * rng.uniform(1, 5)))
    _objects(rng, cv, img, int(rng.integers(2, 6)), bg_level * dark, (0.3, 1.0), glints)
    if rng.random() < 0.5:
        emit += _emitter(
            rng, cv, rng.uniform(0, cv.w), rng.uniform(0.05, 0.5) * cv.h, cv.size * rng.uniform(0.01, 0.04)
        )
    return img


def _lamp_light(
    rng: np.random.Generator,
    cv: _Canvas,
    lamps: list[tuple[float, float, float]],
    ambient: float,
    reach: tuple[float, float] = (0.05, 0.25),
) -> np.ndarray:
    """Irradiance from point lamps, ``ambient + sum power / (1 + (d / r0)**2)``."""
    light = np.full((cv.h, cv.w), ambient, np.float32)
    for lx, ly, power in lamps:
        r0 = cv.size * rng.uniform(*reach)
        d2 = ((cv.x - lx) ** 2 + (cv.y - ly) ** 2) / np.float32(r0 * r0)
        light += np.float32(power) / (1.0 + d2)
    return light


def _night(rng: np.random.Generator, cv: _Canvas, emit: np.ndarray, glints: list) -> np.ndarray:
    horizon = rng.uniform(0.3, 0.7)
    t = np.clip(cv.y / np.float32(horizon * cv.h), 0.0, 1.0)[..., None]
    sky_level = 10 ** rng.uniform(-3.0, -1.5)
    sky = (np.array([0.05, 0.07, 0.15], np.float32) + np.array([0.5, 0.35, 0.2], np.float32) * t**3) * np.float32(
        sky_level * 10
    )
    lamps = [
        (rng.uniform(0, cv.w), rng.uniform(0.2, 1.0) * cv.h, sky_level * 10 ** rng.uniform(1.0, 2.5))
        for _ in range(int(rng.integers(2, 9)))
    ]
    light = _lamp_light(rng, cv, lamps, ambient=sky_level * rng.uniform(0.3, 3.0), reach=(0.02, 0.12))
    ground = _texture(rng, cv) * light[..., None]
    g = np.clip((cv.y - horizon * cv.h) + 0.5, 0.0, 1.0)
    img = sky * (1 - g[..., None]) + ground * g[..., None]
    for _ in range(int(rng.integers(0, 4))):  # buildings with lit windows
        cover = _shape(rng, cv, rng.uniform(0, cv.w), horizon * cv.h, cv.size * rng.uniform(0.1, 0.3))
        _paint(img, cover, _texture(rng, cv) * np.float32(sky_level * 0.5))
        for _ in range(int(rng.integers(1, 6))):
            win = (
                _shape(
                    rng, cv, rng.uniform(0, cv.w), rng.uniform(0.1, horizon) * cv.h, cv.size * rng.uniform(0.01, 0.04)
                )
                * cover
            )
            _paint(img, win, np.float32(rng.uniform(0.3, 3.0)) * _random_color(rng, 0.5, 1.0, (0.2, 0.7)))
    _objects(rng, cv, img, int(rng.integers(0, 4)), float(sky_level * 3), (horizon, 1.0), glints)
    for lx, ly, _ in lamps:
        emit += _emitter(rng, cv, lx, ly, cv.size * rng.uniform(0.006, 0.02))
    return img


def _indoor(rng: np.random.Generator, cv: _Canvas, emit: np.ndarray, glints: list) -> np.ndarray:
    lamps = [
        (rng.uniform(0, cv.w), rng.uniform(0.0, 0.6) * cv.h, rng.uniform(0.5, 3.0))
        for _ in range(int(rng.integers(1, 4)))
    ]
    light = _lamp_light(rng, cv, lamps, ambient=rng.uniform(0.02, 0.3))
    img = _texture(rng, cv) * light[..., None]
    floor = np.clip((cv.y - rng.uniform(0.5, 0.8) * cv.h) + 0.5, 0.0, 1.0)
    _paint(img, floor.astype(np.float32), _texture(rng, cv) * light[..., None])
    if rng.random() < 0.7:  # a window onto a bright outdoor
        wx, wy = rng.uniform(0.1, 0.9) * cv.w, rng.uniform(0.2, 0.5) * cv.h
        a, b = cv.size * rng.uniform(0.08, 0.25), cv.size * rng.uniform(0.08, 0.25)
        win = np.clip(0.5 - np.maximum(np.abs(cv.x - wx) - a, np.abs(cv.y - wy) - b), 0.0, 1.0).astype(np.float32)
        outside = (_texture(rng, cv) * 0.5 + 0.5) * np.float32(10 ** rng.uniform(1.0, 2.5))
        _paint(img, win, outside)
    _objects(rng, cv, img, int(rng.integers(2, 8)), float(np.median(light)), (0.3, 1.0), glints)
    for lx, ly, _ in lamps:
        if rng.random() < 0.8:
            emit += _emitter(rng, cv, lx, ly, cv.size * rng.uniform(0.01, 0.04))
    return img


def generate_scene(
    rng: np.random.Generator,
    size: int | tuple[int, int] = 256,
    kind: str | None = None,
    dynamic_range: tuple[float, float] = (1e3, 1e7),
) -> tuple[np.ndarray, dict[str, Any]]:
    """A random HDR scene: ``(radiance float32 (H, W, 3) >= 0, info)``.

    ``kind`` is one of :data:`SCENE_KINDS` (drawn uniformly when None). ``info`` holds the kind, the target
    and the achieved dynamic range (``max / 1st percentile of luminance``).
    """
    h, w = (size, size) if isinstance(size, int) else size
    if h < 8 or w < 8:
        raise ValueError(f"scene size must be at least 8x8, got {h}x{w}")
    kind = kind or SCENE_KINDS[int(rng.integers(len(SCENE_KINDS)))]
    builders = {"day": _day, "backlit": _backlit, "night": _night, "indoor": _indoor}
    if kind not in builders:
        raise ValueError(f"unknown scene kind {kind!r}, expected one of {SCENE_KINDS}")
    cv = _Canvas(h, w)
    emit = np.zeros((h, w), np.float32)
    glints: list[tuple[float, float, float, float]] = []
    img = builders[kind](rng, cv, emit, glints)
    for gx, gy, _lit, radius in glints:  # specular highlights: small bright blobs on objects
        emit += _blob(cv, gx, gy, max(0.6, radius * rng.uniform(0.01, 0.06))) * np.float32(10 ** rng.uniform(-1.5, 0.0))
    if not glints and float(emit.max()) == 0.0:  # always something bright: a lone glint
        emit += _blob(cv, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.6, 2.0))
    if rng.random() < 0.5:  # lens softness
        sigma = rng.uniform(0.3, 0.8)
        img = _cv2().GaussianBlur(img, (0, 0), sigma)
        emit = _cv2().GaussianBlur(emit, (0, 0), sigma)
    img = np.maximum(img, 0.0).astype(np.float32)
    lum = img @ _LUMA
    lo = max(float(np.percentile(lum, 1.0)), 1e-12)
    target = math.exp(rng.uniform(math.log(dynamic_range[0]), math.log(dynamic_range[1])))
    if float(emit.max()) > 0.0:  # always true
        emit_color = _random_color(rng, 0.8, 1.0, (0.0, 0.3))
        emit_color = emit_color / emit_color.max()
        peak = max(target * lo, 1.5 * float(img.max()))
        img = img + (emit * np.float32(peak / float(emit.max())))[..., None] * emit_color
    lum = img @ _LUMA
    info = {
        "kind": kind,
        "target_dynamic_range": target,
        "dynamic_range": float(lum.max()) / max(float(np.percentile(lum, 1.0)), 1e-12),
    }
    return np.ascontiguousarray(img, dtype=np.float32), info
