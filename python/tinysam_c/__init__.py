"""tinysam_c: segment-anything's Python API on the tinysam C engine (no PyTorch).

Change one import:

    from tinysam_c import sam_model_registry, SamPredictor, SamAutomaticMaskGenerator

and keep the rest of a segment-anything / TinySAM script. Arrays are numpy arrays where the
official code returns torch tensors."""
from ._lib import TinySAMError, tinysam_get_num_threads, tinysam_set_num_threads
from .model import Sam, build_sam, sam_model_registry
from .predictor import SamPredictor
from .generators import SamAutomaticMaskGenerator, SamHierarchicalMaskGenerator

__all__ = ["Sam", "build_sam", "sam_model_registry", "SamPredictor",
           "SamAutomaticMaskGenerator", "SamHierarchicalMaskGenerator", "TinySAMError",
           "set_num_threads", "get_num_threads"]


def set_num_threads(n):
    """Worker threads for every computation (n <= 0: all cores)."""
    tinysam_set_num_threads(int(n))


def get_num_threads():
    return tinysam_get_num_threads()
