"""Training-only parts of sitm-trt: data, losses (Eq. 9-16), the mask-aware discriminator, exposure masks and
the trainer. Not imported by the runtime (``sitm_trt``); depends on it.
"""
