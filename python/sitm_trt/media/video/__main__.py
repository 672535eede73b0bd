"""``python -m sitm_trt.media.video flicker``: the flicker of a static noisy synthetic clip with and without
the temporal smoothing of the curve, printed as JSON (docs/video.md, "Temporal stability").
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from sitm_trt.media.video.measure import flicker, hdr_frames, static_noisy_clip


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m sitm_trt.media.video flicker``: flicker with and without the temporal smoothing (docs/video.md)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m sitm_trt.media.video")
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("flicker", help="flicker of a static noisy synthetic clip, with and without smoothing")
    f.add_argument("--weights", default="default")
    f.add_argument("--frames", type=int, default=24)
    f.add_argument("--size", default="64x96", help="HxW")
    f.add_argument("--noise", type=float, default=3.0, help="Gaussian noise, 8-bit levels")
    f.add_argument("--fps", type=float, default=24.0)
    f.add_argument("--smoothing", type=float, default=0.25, help="time constant in seconds")
    f.add_argument("--coef-gain", type=float, default=1.0,
                   help="multiply the weights of the MEFM coefficient head (a stress test: >1 makes the curve "
                        "react more to the content, as a trained network may)")
    f.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    from sitm_trt.runtime.pipeline import Pipeline
    from sitm_trt.weights import load

    h, w = (int(v) for v in args.size.lower().split("x"))
    clip = static_noisy_clip(args.frames, h, w, args.noise)
    pipe = Pipeline(load(args.weights), backend="torch")
    if args.coef_gain != 1.0:
        import torch

        model = pipe.backend_for(args.device).model
        with torch.no_grad():
            model.mefm.coef_head.weight.mul_(args.coef_gain)
    raw = hdr_frames(pipe, clip, args.fps, smoothing=0.0, device=args.device)
    smooth = hdr_frames(pipe, clip, args.fps, smoothing=args.smoothing, device=args.device)
    report = {"frames": args.frames, "size": [h, w], "noise": args.noise, "fps": args.fps,
              "smoothing_s": args.smoothing, "coef_gain": args.coef_gain,
              "flicker_input_stops": flicker(clip), "flicker_raw_stops": flicker(raw),
              "flicker_smoothed_stops": flicker(smooth)}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
