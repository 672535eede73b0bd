"""``sitm-trt bench video`` and ``sitm-trt bench batch``: the throughput of whole commands on generated inputs.

``video``: frames/s of ``sitm-trt video`` (decode + infer + encode) on a generated clip. ``batch``: images/s of
``sitm-trt batch`` (Ray Data, a local Ray) per worker count against the plain sequential loop.
"""

from __future__ import annotations

import time

from sitm_trt.tools.bench_common import RESOLUTIONS

__all__ = ["bench_video", "bench_batch"]


def _synthetic_clip(path: str, width: int, height: int, frames: int, fps: int = 24) -> None:
    """An SDR BT.709 H.264 clip: moving gradients and a bright block (clipped highlights), no audio."""
    import av
    import numpy as np

    out = av.open(path, "w")
    s = out.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = width, height, "yuv420p"
    s.options = {"preset": "ultrafast", "crf": "12"}
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(frames):
        img = np.stack([(x + 4 * i) % width / width, y / height, 0.5 + 0.5 * np.sin((x + y + 8 * i) / 40)], -1)
        img[height // 4: height // 2, (width // 4 + 3 * i) % width:][:, : width // 8] = 1.0
        f = av.VideoFrame.from_ndarray((np.clip(img, 0, 1) * 255).astype(np.uint8), format="rgb24")
        for packet in s.encode(f.reformat(format="yuv420p")):
            out.mux(packet)
    for packet in s.encode():
        out.mux(packet)
    out.close()


def bench_video(weights: str, resolution: str, frames: int, formats: list[str], device: str | None) -> list[dict]:
    import os
    import tempfile

    from sitm_trt.media import video

    h, w = RESOLUTIONS[resolution]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in.mp4")
        _synthetic_clip(src, w, h, frames)
        for fmt in formats:
            dst = os.path.join(tmp, "out.mkv" if fmt != "exr" else "exr")
            opts = video.VideoOptions(format=fmt, preset="fast")
            res = video.convert(src, dst, weights=weights, options=opts, device=device, progress=False)
            rows.append({"format": fmt, "resolution": resolution, "frames": res.frames, "seconds": res.seconds,
                         "fps": res.fps})
    return rows


def bench_batch(weights: str, n: int, height: int, width: int, workers: list[int], backend: str) -> dict:
    """images/s of the sequential loop and of ``sitm_trt.tools.batch.convert`` per worker count, on ``n`` generated
    PNGs. The loop's pipeline is made and warmed before its clock starts. A batch job is timed whole (Ray
    already running; starting the workers and their pipelines included) and in its steady state: the images
    whose records arrived after the first one, over the time from the first record to the last."""
    import os
    import tempfile
    from pathlib import Path

    import numpy as np

    from sitm_trt.tools import batch
    from sitm_trt.tools import cli_common, cli_infer
    from sitm_trt.media import io
    from sitm_trt.runtime.pipeline import Pipeline

    batch._ray()  # says what to install
    rows: dict = {"images": n, "size": f"{width}x{height}", "backend": backend, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        rng = np.random.default_rng(0)
        for i in range(n):  # gradients, a clipped block and noise: photo-like work for the PNG codec
            img = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y + 9 * i) / 30)], -1) * 255
            img[height // 4: height // 2, width // 4: width // 2] = 255
            img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
            io.write_png(src / f"img_{i:04d}.png", img)
        files = sorted(src.iterdir())

        pipe = Pipeline(weights, backend=backend)
        device = cli_common.resolve_device("auto")
        seq = Path(tmp) / "seq"
        seq.mkdir()

        def one(path: Path) -> None:
            rgb, alpha, gray = cli_infer.read_image(path)
            hdr = cli_infer.run_batch(pipe, rgb[None], device)[0]
            cli_infer.write_image_outputs(path, seq / (path.stem + ".exr"), hdr, alpha, gray, half=True,
                                          preview=False)

        one(files[0])  # warm-up: backend creation, first-call costs
        t0 = time.perf_counter()
        for f in files:
            one(f)
        rows["sequential_s"] = time.perf_counter() - t0
        rows["sequential_ips"] = n / rows["sequential_s"]
        rows["backend_used"] = pipe.backend_for(device).name

        with batch._ray_session(None, os.cpu_count(), None):  # a local Ray (or the one already running)
            rows["workers"] = []
            for k in workers:
                res = batch.convert([str(src)], Path(tmp) / f"ray{k}", weights=weights, backend=backend, workers=k,
                                    batch_size=1, progress=False)
                if res.failed or res.done != n:
                    raise RuntimeError(f"bench batch: {res.failed} of {n} images failed")
                first, last = res.arrivals[0], res.arrivals[-1]
                steady = (n - 1) / max(last - first, 1e-9)
                rows["workers"].append({"workers": k, "seconds": res.seconds, "ips": n / res.seconds,
                                        "startup_s": first, "steady_ips": steady,
                                        "ratio": (n / res.seconds) / rows["sequential_ips"],
                                        "steady_ratio": steady / rows["sequential_ips"]})
    return rows
