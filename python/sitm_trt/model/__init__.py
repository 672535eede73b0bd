"""The SITM network (CVPR 2023, Sec. 3): presets, modules, weights I/O and ONNX export."""

from .config import PRESETS, Preset, get_preset, preset_names
from .export import export_onnx
from .network import SITMNet, SITMOutput, SITMTrainOutput, predict_hdr
from .serialization import load_weights, read_preset, save_weights
from .state import GlobalState, StatSource

__all__ = [
    "PRESETS",
    "Preset",
    "get_preset",
    "preset_names",
    "SITMNet",
    "SITMOutput",
    "SITMTrainOutput",
    "GlobalState",
    "StatSource",
    "predict_hdr",
    "export_onnx",
    "save_weights",
    "load_weights",
    "read_preset",
]
