"""Training-only parts of sitm-trt: losses (Eq. 9-16), the mask-aware discriminator and exposure masks.

Not imported by the runtime (``sitm_trt``); depends on it.
"""
