"""What the benchmarks of ``sitm-trt bench`` share: the frame sizes that ``--resolution`` names."""

RESOLUTIONS = {"1080p": (1080, 1920), "4k": (2160, 3840), "512": (512, 512)}
"""``--resolution`` name -> (height, width)."""
