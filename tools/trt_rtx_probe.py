"""Try TensorRT-RTX once on this machine and record what happens: ``python tools/trt_rtx_probe.py OUT.json``.

Steps, each recorded as ``{"ok": bool, "seconds": float, ...}`` with the error text when it fails, and every
message TensorRT logged: import the bindings; build an engine ahead of time from the shipped weights' ONNX
(``prepare_engine``, no GPU needed); then, on a CUDA device, deserialize it, make an execution context and run
one 256x256 frame on a non-default torch stream, checking that every output is written and finite. The
library's own policy (``Flavour.supports_compute_capability``: no sm_90) is bypassed on purpose: this probe
asks TensorRT itself. tools/gpu_check.sh runs it; docs/gpu.md says how to read the result.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
import traceback


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tools/trt_rtx_probe.py OUT.json", file=sys.stderr)
        return 2
    out_path = argv[0]
    report: dict = {"python": platform.python_version(), "steps": {}}
    messages: list[str] = []

    def step(name, fn):
        t0 = time.perf_counter()
        try:
            value = fn()
            report["steps"][name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 2), **(value or {})}
            return True
        except BaseException as err:  # noqa: BLE001 - the point is to record whatever happens
            report["steps"][name] = {"ok": False, "seconds": round(time.perf_counter() - t0, 2),
                                     "error": f"{type(err).__name__}: {err}",
                                     "traceback": traceback.format_exc(limit=6)}
            return False

    state: dict = {}

    def load():
        from sitm_trt.runtime.backends.trt_engine import find_flavour

        fl = find_flavour("tensorrt-rtx")
        state["flavour"] = fl
        trt = fl.module

        class Collect(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)

            def log(self, severity, msg):
                messages.append(f"{severity}: {msg}")

        state["logger"] = Collect()
        return {"flavour": fl.name, "version": fl.version, "module": fl.module.__name__}

    def build():
        from sitm_trt.runtime.backends.tensorrt_backend import prepare_engine
        from sitm_trt.runtime.backends.trt_engine import EngineCache, Profile
        from sitm_trt.weights import load as load_weights

        w = load_weights("default")
        cache = EngineCache(tempfile.mkdtemp(prefix="sitm-trt-probe-"))
        prof = Profile(min_hw=(64, 64), opt_hw=(256, 256), max_hw=(512, 512))
        data, built, key = prepare_engine(w, precision="fp16", profile=prof, flavour=state["flavour"], cache=cache,
                                          log=messages.append)
        state["engine"] = data
        return {"bytes": len(data), "target": key.target, "weights": w.sha256[:16]}

    def device():
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device: the run steps need one")
        cc = torch.cuda.get_device_capability()
        return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{cc[0]}.{cc[1]}",
                "library_policy_allows": state["flavour"].supports_compute_capability(*cc)}

    def deserialize():
        trt = state["flavour"].module
        state["runtime"] = trt.Runtime(state["logger"])
        engine = state["runtime"].deserialize_cuda_engine(state["engine"])
        if engine is None:
            raise RuntimeError("deserialize_cuda_engine returned None (see messages)")
        state["trt_engine"] = engine
        return {"io": [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]}

    def context():
        ctx = state["trt_engine"].create_execution_context()
        if ctx is None:
            raise RuntimeError("create_execution_context returned None (see messages)")
        state["ctx"] = ctx
        return {}

    def run():
        import torch

        from sitm_trt.runtime.backends.trt_engine import INPUT_CHANNELS, INPUTS

        trt = state["flavour"].module
        engine, ctx = state["trt_engine"], state["ctx"]
        torch_dtype = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        keep = []
        for name in INPUTS:
            dt = torch_dtype[engine.get_tensor_dtype(name)]
            x = torch.rand(1, INPUT_CHANNELS[name], 256, 256, device="cuda").to(dt)
            if not ctx.set_input_shape(name, tuple(x.shape)):
                raise RuntimeError(f"set_input_shape({name}) refused {tuple(x.shape)}")
            ctx.set_tensor_address(name, x.data_ptr())
            keep.append(x)
        outs = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if name in INPUTS:
                continue
            shape = tuple(ctx.get_tensor_shape(name))
            buf = torch.full(shape, float("nan"), device="cuda", dtype=torch_dtype[engine.get_tensor_dtype(name)])
            ctx.set_tensor_address(name, buf.data_ptr())
            outs[name] = buf
        stream = torch.cuda.Stream()
        t0 = time.perf_counter()
        with torch.cuda.stream(stream):
            if not ctx.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("execute_async_v3 returned False (see messages)")
        stream.synchronize()
        ms = (time.perf_counter() - t0) * 1e3
        bad = [n for n, b in outs.items() if not bool(torch.isfinite(b).all())]
        if bad:
            raise RuntimeError(f"outputs not written or not finite: {bad}")
        return {"first_run_ms": round(ms, 2), "outputs": {n: list(b.shape) for n, b in outs.items()}}

    ok = step("import", load) and step("build_aot", build)
    if ok and step("device", device):
        step("deserialize", deserialize) and step("context", context) and step("run_256", run)
    report["messages"] = messages[-200:]
    report["ran"] = bool(report["steps"].get("run_256", {}).get("ok"))
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, default=str)
    os.replace(tmp, out_path)
    for name, s in report["steps"].items():
        print(f"trt-rtx {name}: {'ok' if s['ok'] else 'FAILED: ' + s['error'].splitlines()[0][:300]}")
    return 0 if report["ran"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
