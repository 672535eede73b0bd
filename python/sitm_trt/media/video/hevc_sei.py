"""HDR10 static metadata in the HEVC bitstream (H.265 D.2.28 and D.2.35): the mastering display colour volume
and content light level SEI payloads, the prefix SEI NAL unit that carries them (with emulation prevention),
and the insertion of that NAL unit into a length-prefixed access unit before its first slice. Pure bytes, no
PyAV: the remux that applies it to a file is :func:`sitm_trt.media.video.sinks._finalize_hdr10`.
"""

from __future__ import annotations

import struct
from typing import Sequence


def mastering_display_sei(primaries: Sequence[Sequence[float]], white: Sequence[float], max_nits: float,
                          min_nits: float) -> bytes:
    """mastering_display_colour_volume payload: G, B, R then white xy in 0.00002 units, luminance in 0.0001
    cd/m2 (SMPTE ST 2086 as carried by HEVC)."""
    (rx, ry), (gx, gy), (bx, by) = primaries
    xy = [gx, gy, bx, by, rx, ry, white[0], white[1]]
    return struct.pack(">8H2I", *[round(v / 0.00002) for v in xy], round(max_nits * 10000), round(min_nits * 10000))


def content_light_level_sei(max_cll: int, max_fall: int) -> bytes:
    """content_light_level_info payload: MaxCLL, MaxFALL in cd/m2 (CTA-861.3)."""
    return struct.pack(">2H", min(int(max_cll), 65535), min(int(max_fall), 65535))


def _sei_nal(messages: Sequence[tuple[int, bytes]]) -> bytes:
    """A prefix SEI NAL unit (type 39) holding ``(payload_type, payload)`` messages, with emulation prevention."""
    rbsp = bytearray()
    for ptype, payload in messages:
        for v in (ptype, len(payload)):
            while v >= 255:
                rbsp.append(255)
                v -= 255
            rbsp.append(v)
        rbsp += payload
    rbsp.append(0x80)  # rbsp_trailing_bits
    out, zeros = bytearray(), 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes([39 << 1, 1]) + bytes(out)


def _insert_before_vcl(data: bytes, nal: bytes, length_size: int) -> bytes:
    """Insert ``nal`` into a length-prefixed HEVC access unit before its first VCL NAL unit (type < 32)."""
    pos = 0
    while pos + length_size < len(data):
        size = int.from_bytes(data[pos : pos + length_size], "big")
        if (data[pos + length_size] >> 1) & 0x3F < 32:
            break
        pos += length_size + size
    return data[:pos] + len(nal).to_bytes(length_size, "big") + nal + data[pos:]
