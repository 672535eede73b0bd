"""Training data: HDR sources, procedural scenes, camera simulation, optimal labels, data sets.

``python -m sitm_training.data --help`` lists the commands (fetch, build, export, verify). See
``docs/data.md`` for the recipe, the label criterion, the sources and their licenses.
"""

from .build import build, export_split, load_manifest, verify
from .recipe import Recipe
from .samples import (Sample, camera_family, generate_item, load_sample, load_sample_meta, make_sample, relabel_up,
                      under_exposed)
from .camera import Camera, CameraConfig, Response
from .stack import LabelCriterion, choose_labels

__all__ = [
    "Camera",
    "CameraConfig",
    "LabelCriterion",
    "PairFolderDataset",
    "HDRFolderDataset",
    "ProceduralDataset",
    "SICEDataset",
    "Recipe",
    "Response",
    "Sample",
    "SampleDataset",
    "build",
    "choose_labels",
    "export_split",
    "generate_item",
    "load_manifest",
    "load_sample",
    "load_sample_meta",
    "make_sample",
    "relabel_up",
    "under_exposed",
    "camera_family",
    "verify",
]

_TORCH_NAMES = {
    name: "dataset"
    for name in ("SampleDataset", "ProceduralDataset", "SICEDataset", "PairFolderDataset", "HDRFolderDataset")
}


def __getattr__(name: str) -> object:
    """The torch Datasets are imported on first use, so building data does not import torch."""
    if name in _TORCH_NAMES:
        import importlib

        return getattr(importlib.import_module(f".{_TORCH_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
