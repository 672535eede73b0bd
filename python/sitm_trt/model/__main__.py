"""``python -m sitm_trt.model``: print parameters and GFLOPs per megapixel of each preset's sub-networks."""

from .summary import main

raise SystemExit(main())
