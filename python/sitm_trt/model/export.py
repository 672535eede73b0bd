"""ONNX export of the network alone (the pre and post passes stay in the kernels).

The graph has inputs ``image, image_down, image_up, guide`` (the fields of :class:`sitm_trt.reference.PreOutputs`)
and outputs ``exposure_up, exposure_down, masks, coef`` (see :data:`OUTPUT_NAMES`) with dynamic batch,
height and width (heights and widths must be multiples of the network stride; the pre kernel pads).

We use the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): on torch 2.13 it still
works, needs no ``onnxscript``, and takes ``dynamic_axes`` directly; it warns that it is deprecated, which we
silence here (narrowly) since the choice is deliberate.

``fp16=True`` exports a float16 model (a strongly typed graph for TensorRT-RTX, which has no FP16 builder
flag): inputs and the three image outputs are float16, ``coef`` stays float32, and the normalization-like
steps (LayerNorm, softmax, the per-channel means and maxima of Eq. 6 and of the channel attention, the
thumbnail resize, the per-image linear layers) run in float32 through explicit ``Cast`` nodes.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from pathlib import Path

import torch

from ..files import atomic_write
from .network import SITMNet

__all__ = ["export_onnx", "onnx_bytes", "INPUT_NAMES", "OUTPUT_NAMES", "example_inputs"]

INPUT_NAMES = ("image", "image_down", "image_up", "guide")
OUTPUT_NAMES = ("exposure_up", "exposure_down", "masks", "coef")
"""ONNX value names must be unique in a graph, so the predicted images cannot reuse the input names
``image_up``/``image_down`` (the pre pass's ``I * L_up`` and ``I * L_down``): they are ``exposure_up`` and
``exposure_down`` (the fields ``SITMOutput.image_up``/``image_down`` of the PyTorch module)."""


def example_inputs(
    batch: int, height: int, width: int, *, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Valid network inputs (the pre pass of a random frame) of the given padded size."""
    from .. import reference as ops

    g = torch.Generator().manual_seed(seed)
    frame = torch.rand(batch, 3, height, width, generator=g)
    return tuple(ops.pre(frame, stride=1, dtype=dtype))


def onnx_bytes(model: SITMNet, *, fp16: bool = False, opset: int = 17, check: bool = True) -> bytes:
    """``model`` as an ONNX file's bytes.

    The model is copied (the caller's module is not modified), put in eval mode on the CPU and traced once
    at a small size; ``check`` runs ``onnx.checker`` on the result when ``onnx`` is installed.
    """
    if opset < 17:
        raise ValueError(f"export_onnx: opset must be >= 17 (LayerNormalization), got {opset}")
    net = copy.deepcopy(model).to("cpu").eval()
    dtype = torch.float16 if fp16 else torch.float32
    net = net.to(dtype)
    s = net.stride
    args = example_inputs(1, 2 * s, 3 * s, dtype=dtype)
    axes = {"batch": 0, "height": 2, "width": 3}
    dynamic_axes = {name: {i: n for n, i in axes.items()} for name in INPUT_NAMES + OUTPUT_NAMES[:3]}
    dynamic_axes["coef"] = {0: "batch"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", r".*legacy TorchScript-based ONNX export", DeprecationWarning)
        warnings.filterwarnings("ignore", r"The feature will be removed", DeprecationWarning)
        with torch.no_grad():
            torch.onnx.export(
                net,
                args,
                buf,
                dynamo=False,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
            )
    data = buf.getvalue()
    if check:
        try:
            import onnx
        except ImportError:
            return data
        onnx.checker.check_model(data)
    return data


def export_onnx(
    model: SITMNet,
    path: str | os.PathLike,
    *,
    fp16: bool = False,
    opset: int = 17,
    check: bool = True,
) -> Path:
    """Write ``model`` as ONNX (:func:`onnx_bytes`) to ``path``, atomically (:func:`sitm_trt.files.atomic_write`:
    a failed export leaves no file), and return the path."""
    path = Path(path)
    atomic_write(path, onnx_bytes(model, fp16=fp16, opset=opset, check=check))
    return path
