"""OpenVINO accuracy gate at 4K (issue 18): the HDR of a 3840x2160 frame with the network in OpenVINO (CPU,
f32) against the network in ONNX Runtime fp32 (the reference engine: it matches the torch backend within
9e-7), both between sitm-trt's own pre and post kernels, shipped default weights.

    pip install --target /tmp/ovpkg --no-deps openvino openvino-telemetry   # not a project dependency
    PYTHONPATH=/tmp/ovpkg python tools/openvino_gate.py [--random]

The frame: the sample photo upscaled to 4K (bicubic), or ``--random`` uniform uint8 noise. Prints, per
OpenVINO configuration, the time (compile + one run, not a speed measurement), the inference precision, the
max and 99.99th percentile of |OpenVINO - ONNX Runtime| and the share of pixels above 4.88e-4 (2^-11: half a
half-float step at 1.0, the precision of the EXR files sitm-trt writes by default). BENCHMARKS.md records
the results and the decision.
"""

import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import openvino as ov

import sitm_trt
from sitm_trt import kernels as K

here = Path(sitm_trt.__file__).parent
onnx = str(here / "weights/default-fp32.onnx")
h, w = 2160, 3840
if "--random" in sys.argv[1:]:
    frame = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
else:
    img = cv2.cvtColor(cv2.imread(str(here / "data/coffee.png")), cv2.COLOR_BGR2RGB)
    frame = np.ascontiguousarray(cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC))[None]
pre = [np.ascontiguousarray(a) for a in K.pre(frame, stride=16)]
feed = dict(zip(("image", "image_down", "image_up", "guide"), pre))


def post(outs: dict):
    return K.post(outs["masks"], pre[0], outs["exposure_up"], outs["exposure_down"], outs["coef"], height=h, width=w)


t = time.time()
s = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
ref = post(dict(zip([o.name for o in s.get_outputs()], s.run(None, feed))))
print(f"onnxruntime {ort.__version__} fp32: {time.time() - t:.1f} s, max |HDR| {np.abs(ref).max():.3f}", flush=True)
core = ov.Core()
for label, cfg in [("default", {}),
                   ("f32 + ACCURACY", {"INFERENCE_PRECISION_HINT": "f32", "EXECUTION_MODE_HINT": "ACCURACY"})]:
    t = time.time()
    cm = core.compile_model(onnx, "CPU", cfg)
    res = cm(feed)
    got = post({o.get_any_name(): np.ascontiguousarray(res[o]) for o in cm.outputs})
    d = np.abs(got - ref)
    print(f"openvino {ov.__version__} {label}: {time.time() - t:.1f} s, precision "
          f"{cm.get_property('INFERENCE_PRECISION_HINT')}, max abs diff {d.max():.3g}, 99.99th pct "
          f"{np.percentile(d, 99.99):.3g}, pixels > 4.88e-4: {(d > 4.88e-4).mean() * 100:.4f} %", flush=True)
