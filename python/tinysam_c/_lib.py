"""ctypes bindings of include/tinysam.h (the shared library libtinysam.so).

ctypes releases the GIL for the duration of every foreign call, so encoding and decoding
run without holding it."""
import ctypes
import ctypes.util
import os
from ctypes import (POINTER, Structure, c_char_p, c_double, c_float, c_int, c_longlong,
                    c_uint32, c_uint8, c_void_p, CFUNCTYPE)

_HERE = os.path.dirname(os.path.abspath(__file__))
_SOVERSION = 0  # the shared library's soname is libtinysam.so.0


def _find_library():
    """TINYSAM_LIBRARY, else the library bundled by `pip install`, else the in-tree build
    (build/libtinysam.so), else an installed one (`make install`, the libtinysam0 package):
    by ctypes.util.find_library (ldconfig's cache), then by its soname."""
    env = os.environ.get("TINYSAM_LIBRARY")
    if env:
        if os.path.exists(env):
            return env
        raise ImportError("tinysam_c: TINYSAM_LIBRARY=%s does not exist" % env)
    for c in (os.path.join(_HERE, "libtinysam.so"),
              os.path.join(_HERE, "..", "..", "build", "libtinysam.so")):
        if os.path.exists(c):
            return c
    found = ctypes.util.find_library("tinysam")
    for name in ([found] if found else []) + ["libtinysam.so.%d" % _SOVERSION]:
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            pass
    raise ImportError("tinysam_c: libtinysam not found (build it with `make build/libtinysam.so`,"
                      " install it with `make install` or the libtinysam0 package, or install"
                      " the module with `pip install --no-build-isolation .`)")


lib = ctypes.CDLL(_find_library())


class Image(Structure):
    _fields_ = [("width", c_int), ("height", c_int), ("rgb", POINTER(c_uint8))]


class Prompt(Structure):
    _fields_ = [("n_points", c_int), ("points", POINTER(c_float)), ("labels", POINTER(c_int)),
                ("has_box", c_int), ("box", c_float * 4), ("mask_input", POINTER(c_float))]


class Prediction(Structure):
    _fields_ = [("n_masks", c_int), ("width", c_int), ("height", c_int), ("iou", c_float * 3),
                ("best", c_int), ("low_res", POINTER(c_float)), ("masks", POINTER(c_uint8)),
                ("logits", POINTER(c_float))]


class ModelInfo(Structure):
    _fields_ = [("family", ctypes.c_char * 16), ("n_tensors", c_int), ("n_values", c_longlong),
                ("n_params_used", c_longlong), ("source_dtype", ctypes.c_char * 16),
                ("source_format", ctypes.c_char * 32), ("config", ctypes.c_char * 512)]


PROGRESS = CFUNCTYPE(None, c_void_p, c_int, c_int, c_int)


class EverythingOptions(Structure):
    _fields_ = [("mode", c_int), ("points_per_side", c_int), ("points_per_batch", c_int),
                ("pred_iou_thresh", c_float), ("stability_score_thresh", c_float),
                ("stability_score_offset", c_float), ("high_score_thresh", c_float),
                ("box_nms_thresh", c_float), ("crop_n_layers", c_int),
                ("crop_nms_thresh", c_float), ("crop_overlap_ratio", c_float),
                ("crop_n_points_downscale_factor", c_int), ("min_mask_region_area", c_int),
                ("progress", c_void_p), ("progress_user", c_void_p)]


class MaskRecord(Structure):
    _fields_ = [("height", c_int), ("width", c_int), ("counts", POINTER(c_uint32)),
                ("n_counts", c_int), ("area", c_longlong), ("bbox", c_int * 4),
                ("predicted_iou", c_float), ("point", c_double * 2),
                ("stability_score", c_float), ("crop_box", c_int * 4)]


class EverythingResult(Structure):
    _fields_ = [("n", c_int), ("records", POINTER(MaskRecord)), ("n_passes", c_int),
                ("points_per_pass", c_int * 2), ("points_total", c_int),
                ("ms_encode", c_double), ("ms_decode", c_double), ("ms_total", c_double)]


def _sig(name, res, *args):
    f = getattr(lib, name)
    f.restype = res
    f.argtypes = list(args)
    return f


tinysam_last_error = _sig("tinysam_last_error", c_char_p)
tinysam_set_num_threads = _sig("tinysam_set_num_threads", None, c_int)
tinysam_get_num_threads = _sig("tinysam_get_num_threads", c_int)
tinysam_model_load = _sig("tinysam_model_load", c_int, c_char_p, POINTER(c_void_p))
tinysam_model_free = _sig("tinysam_model_free", None, c_void_p)
tinysam_model_get_info = _sig("tinysam_model_get_info", c_int, c_void_p, POINTER(ModelInfo))
tinysam_encode = _sig("tinysam_encode", c_int, c_void_p, POINTER(Image), POINTER(c_void_p))
tinysam_embedding_free = _sig("tinysam_embedding_free", None, c_void_p)
tinysam_embedding_data = _sig("tinysam_embedding_data", POINTER(c_float), c_void_p)
tinysam_embedding_size = _sig("tinysam_embedding_size", None, c_void_p, POINTER(c_int),
                              POINTER(c_int), POINTER(c_int), POINTER(c_int))
tinysam_predict = _sig("tinysam_predict", c_int, c_void_p, c_void_p, POINTER(Prompt), c_int,
                       POINTER(Prediction))
tinysam_prediction_free = _sig("tinysam_prediction_free", None, POINTER(Prediction))
tinysam_predict_batch = _sig("tinysam_predict_batch", c_int, c_void_p, c_void_p, c_int,
                             POINTER(Prompt), c_int, POINTER(Prediction))
tinysam_everything_defaults = _sig("tinysam_everything_defaults", None,
                                   POINTER(EverythingOptions))
tinysam_everything_check = _sig("tinysam_everything_check", c_int, POINTER(EverythingOptions))
tinysam_everything = _sig("tinysam_everything", c_int, c_void_p, POINTER(Image), c_void_p,
                          POINTER(EverythingOptions), POINTER(EverythingResult))
tinysam_everything_free = _sig("tinysam_everything_free", None, POINTER(EverythingResult))
tinysam_rle_to_coco_string = _sig("tinysam_rle_to_coco_string", c_void_p, POINTER(c_uint32), c_int)
libc = ctypes.CDLL(None)
libc.free.argtypes = [c_void_p]
libc.free.restype = None

PREDICT_MASKS, PREDICT_LOGITS, PREDICT_SINGLE = 1, 2, 4
E_ARG = -4


class TinySAMError(RuntimeError):
    """A failure reported by the engine; the message is the engine's."""


def check(rc):
    if rc != 0:
        msg = tinysam_last_error().decode("utf-8", "replace")
        if rc == E_ARG:
            raise ValueError(msg)
        raise TinySAMError(msg)
