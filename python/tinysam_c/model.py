"""Model loading: sam_model_registry-style constructors over any checkpoint the engine reads
(official .pth in either container, or safetensors). The family (vit_t, SAM ViT-B/L/H) is
detected from the tensors, never from the name used."""
import ctypes
import os

from . import _lib


class Sam:
    """A loaded model (the engine's tinysam_model). mask_threshold and image_format mirror
    segment-anything's Sam attributes."""
    mask_threshold = 0.0
    image_format = "RGB"

    def __init__(self, checkpoint):
        if checkpoint is None:
            raise ValueError("tinysam_c needs a checkpoint path (random initialisation is not supported)")
        self._handle = ctypes.c_void_p()
        _lib.check(_lib.tinysam_model_load(os.fsencode(checkpoint), ctypes.byref(self._handle)))
        info = _lib.ModelInfo()
        _lib.check(_lib.tinysam_model_get_info(self._handle, ctypes.byref(info)))
        self.family = info.family.decode()
        self.checkpoint = checkpoint

    def __del__(self):
        h = getattr(self, "_handle", None)
        if h:
            _lib.tinysam_model_free(h)
            self._handle = None

    # torch-style no-ops so that `sam.to(device)` and `sam.eval()` in user scripts still work
    def to(self, *args, **kwargs):
        return self

    def eval(self):
        return self


def build_sam(checkpoint=None):
    return Sam(checkpoint)


class _Registry(dict):
    def __missing__(self, key):
        raise KeyError(f"unknown model type {key!r}; any of {sorted(self)} loads any checkpoint")


sam_model_registry = _Registry({name: build_sam for name in
                                ("default", "vit_h", "vit_l", "vit_b", "vit_t")})
