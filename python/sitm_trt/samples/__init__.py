"""Sample data shipped with sitm-trt.

``coffee.png`` (600x400, 8-bit sRGB): a photo with specular highlights clipped on the spoon and the cup's
rim, from scikit-image's bundled data (``skimage.data.coffee``), "No copyright restrictions. CC0 by the
photographer (Rachel Michetti)".
"""

from pathlib import Path

SAMPLE = Path(__file__).resolve().parent / "coffee.png"
"""The sample image used by the README's Quickstart (``sitm-trt infer --sample``)."""
