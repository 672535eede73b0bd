"""Square perspective views of a source's radiance: the training crops the data set builder cuts.

A panorama (equirectangular, :func:`equirect_view`) or a cubemap (a vertical strip of its six faces,
:func:`cubemap_view`) is looked at through a pinhole camera of random yaw, pitch and field of view, rendered at the
source's pixel density and area-averaged down to the view's size; a flat image gets a scaled crop.
:func:`sample_view` draws one such view and says how it was taken.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["equirect_view", "cubemap_view", "sample_view"]


def equirect_view(pano: np.ndarray, yaw: float, pitch: float, fov: float, size: int) -> np.ndarray:
    """A square perspective view (float32 ``(size, size, 3)``) of an equirectangular panorama.

    ``yaw``/``pitch`` in radians (pitch > 0 looks up), ``fov`` the horizontal field of view in radians.
    Rendered with bilinear sampling at a resolution that does not under-sample the panorama, then
    area-averaged down to ``size``.
    """
    import cv2

    ph, pw = pano.shape[:2]
    render, x, y, z = _view_rays(yaw, pitch, fov, size, pw / (2 * math.pi))
    lon = np.arctan2(x, z)
    lat = np.arctan2(y, np.sqrt(x * x + z * z))
    u = ((lon / (2 * math.pi) + 0.5) * pw - 0.5) % pw
    v = np.clip((0.5 - lat / math.pi) * ph - 0.5, 0.0, ph - 1.0)
    view = cv2.remap(pano, u.astype(np.float32), v.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    if render != size:
        view = cv2.resize(view, (size, size), interpolation=cv2.INTER_AREA)
    return np.maximum(view, 0.0).astype(np.float32)


def _view_rays(
    yaw: float, pitch: float, fov: float, size: int, px_per_rad: float
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """``(render, x, y, z)``: the render side (the source's density at the centre, within [size, 4 size]) and the
    unnormalized ray directions (y up, z forward at yaw = pitch = 0, yaw towards +x) of its pixels."""
    render = max(size, int(math.ceil(2 * math.tan(fov / 2) * px_per_rad)))  # the source's density at the centre
    render = min(render, 4 * size)
    f = (render / 2) / math.tan(fov / 2)
    j, i = np.meshgrid(np.arange(render, dtype=np.float32) + 0.5, np.arange(render, dtype=np.float32) + 0.5)
    x = (j - render / 2) / f
    y = -(i - render / 2) / f  # up
    z = np.ones_like(x)
    cp, sp = math.cos(pitch), math.sin(pitch)
    y, z = y * cp + z * sp, -y * sp + z * cp
    cy, sy = math.cos(yaw), math.sin(yaw)
    x, z = x * cy + z * sy, -x * sy + z * cy
    return render, x, y, z


def cubemap_view(strip: np.ndarray, yaw: float, pitch: float, fov: float, size: int) -> np.ndarray:
    """A square perspective view (float32 ``(size, size, 3)``) of a cubemap stored as a vertical strip of its
    faces (+X, -X, +Y, -Y, +Z, -Z; each ``N x N`` with rows from OpenGL's ``t = 0``), y up.

    The same camera as :func:`equirect_view`. Face and ``(s, t)`` follow the OpenGL cube-map selection table;
    samples are bilinear within a face (clamped half a texel from its edges, so no face bleeds into the next).
    """
    import cv2

    n = strip.shape[1]
    if strip.ndim != 3 or strip.shape[0] != 6 * n or strip.shape[2] != 3:
        raise ValueError(f"a cubemap strip must be (6N, N, 3), got {strip.shape}")
    render, x, y, z = _view_rays(yaw, pitch, fov, size, n / (math.pi / 2))
    ax, ay, az = np.abs(x), np.abs(y), np.abs(z)
    xm = (ax >= ay) & (ax >= az)
    ym = ~xm & (ay >= az)
    face = np.where(xm, np.where(x > 0, 0, 1), np.where(ym, np.where(y > 0, 2, 3), np.where(z > 0, 4, 5)))
    #        +X   -X  +Y  -Y  +Z  -Z
    sc = np.choose(face, [-z, z, x, x, x, -x])
    tc = np.choose(face, [-y, -y, z, -z, -y, -y])
    ma = np.where(xm, ax, np.where(ym, ay, az))
    u = np.clip((sc / ma + 1) * (n / 2) - 0.5, 0.0, n - 1.0)
    v = np.clip((tc / ma + 1) * (n / 2) - 0.5, 0.0, n - 1.0) + face * n
    view = cv2.remap(strip, u.astype(np.float32), v.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)
    if render != size:
        view = cv2.resize(view, (size, size), interpolation=cv2.INTER_AREA)
    return np.maximum(view, 0.0).astype(np.float32)


def _crop_view(
    rng: np.random.Generator, img: np.ndarray, size: int, scale: tuple[float, float] = (0.4, 1.0)
) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    side = max(1, int(round(min(h, w) * rng.uniform(*scale))))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    crop = img[y0 : y0 + side, x0 : x0 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    view = cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=interp)
    if rng.random() < 0.5:
        view = view[:, ::-1]
    return np.ascontiguousarray(np.maximum(view, 0.0), dtype=np.float32)


def sample_view(
    rng: np.random.Generator, radiance: np.ndarray, kind: str, size: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """A random square view of a source: perspective crops of panoramas and cubemaps, scaled crops of flat
    images."""
    if kind in ("panorama", "cubemap"):
        yaw = rng.uniform(-math.pi, math.pi)
        pitch = math.radians(rng.uniform(-25.0, 35.0))
        fov = math.radians(rng.uniform(60.0, 110.0))
        view = (equirect_view if kind == "panorama" else cubemap_view)(radiance, yaw, pitch, fov, size)
        if rng.random() < 0.5:
            view = np.ascontiguousarray(view[:, ::-1])
        return view, {
            "yaw": round(math.degrees(yaw), 3),
            "pitch": round(math.degrees(pitch), 3),
            "fov": round(math.degrees(fov), 3),
        }
    return _crop_view(rng, radiance, size), {}
