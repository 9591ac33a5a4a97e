"""SamPredictor: segment-anything's predictor API (set_image once, predict many times)."""
import ctypes

import numpy as np

from . import _lib
from .transforms import ResizeLongestSide


class _Array(np.ndarray):
    """A numpy array that also answers the tensor calls batched scripts make on results
    (.cpu(), .numpy(), .to(device), .detach()), so that they run unchanged."""

    def cpu(self):
        return self

    def detach(self):
        return self

    def to(self, *args, **kwargs):
        return self

    def numpy(self):
        return np.asarray(self)


def _result(a):
    return np.asarray(a).view(_Array)


def _as_image(image, image_format="RGB"):
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', not {image_format!r}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    if image_format == "BGR":
        image = image[..., ::-1]
    image = np.ascontiguousarray(image)  # no copy when it already is
    img = _lib.Image(image.shape[1], image.shape[0],
                     image.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
    return img, image


class SamPredictor:
    def __init__(self, sam_model):
        self.model = sam_model
        self.transform = ResizeLongestSide(1024)
        self.device = "cpu"
        self._emb = None
        self.reset_image()

    def set_image(self, image, image_format="RGB"):
        """Encodes image (HxWx3 uint8); later predict() calls reuse the embedding."""
        img, keep = _as_image(image, image_format)
        emb = ctypes.c_void_p()
        _lib.check(_lib.tinysam_encode(self.model._handle, ctypes.byref(img), ctypes.byref(emb)))
        self.reset_image()
        self._emb = emb
        ow, oh, iw, ih = (ctypes.c_int() for _ in range(4))
        _lib.tinysam_embedding_size(emb, ctypes.byref(ow), ctypes.byref(oh), ctypes.byref(iw),
                                    ctypes.byref(ih))
        self.original_size = (oh.value, ow.value)
        self.input_size = (ih.value, iw.value)
        self.is_image_set = True
        del keep

    def get_image_embedding(self):
        """The 1x256x64x64 image embedding (a numpy copy)."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        p = _lib.tinysam_embedding_data(self._emb)
        return np.ctypeslib.as_array(p, shape=(1, 256, 64, 64)).copy()

    def reset_image(self):
        if self._emb:
            _lib.tinysam_embedding_free(self._emb)
        self._emb = None
        self.is_image_set = False
        self.features = None
        self.original_size = None
        self.input_size = None

    def __del__(self):
        if getattr(self, "_emb", None):
            _lib.tinysam_embedding_free(self._emb)
            self._emb = None

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output=True, return_logits=False):
        """Returns (masks CxHxW, iou_predictions C, low_res_masks Cx256x256) as numpy arrays.
        C is 3 with multimask_output (TinySAM always returns mask tokens 1..3), else 1."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        pr = _lib.Prompt()
        keep = []
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied.")
            pts = np.ascontiguousarray(np.asarray(point_coords, dtype=np.float32).reshape(-1, 2))
            labs = np.ascontiguousarray(np.asarray(point_labels, dtype=np.int32).reshape(-1))
            if len(labs) != len(pts):
                raise ValueError("point_coords and point_labels have different lengths")
            keep += [pts, labs]
            pr.n_points = len(pts)
            pr.points = pts.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            pr.labels = labs.ctypes.data_as(ctypes.POINTER(ctypes.c_int))
        if box is not None:
            b = np.asarray(box, dtype=np.float32).reshape(-1)
            if b.shape != (4,):
                raise ValueError("box must have shape (4,) or (1, 4)")
            pr.has_box = 1
            pr.box[:] = [float(v) for v in b]
        if mask_input is not None:
            m = np.ascontiguousarray(np.asarray(mask_input, dtype=np.float32))
            if m.size != 256 * 256:
                raise ValueError(f"mask_input must be 1x256x256, got {m.shape}")
            keep.append(m)
            pr.mask_input = m.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        flags = _lib.PREDICT_LOGITS if return_logits else _lib.PREDICT_MASKS
        if not multimask_output:
            flags |= _lib.PREDICT_SINGLE
        out = _lib.Prediction()
        _lib.check(_lib.tinysam_predict(self.model._handle, self._emb, ctypes.byref(pr), flags,
                                        ctypes.byref(out)))
        try:
            c, h, w = out.n_masks, out.height, out.width
            low = np.ctypeslib.as_array(out.low_res, shape=(c, 256, 256)).copy()
            iou = np.array(out.iou[:c], dtype=np.float32)
            if return_logits:
                masks = np.ctypeslib.as_array(out.logits, shape=(c, h, w)).copy()
            else:
                masks = np.ctypeslib.as_array(out.masks, shape=(c, h, w)).astype(bool)
        finally:
            _lib.tinysam_prediction_free(ctypes.byref(out))
        return masks, iou, low

    def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None,
                      multimask_output=True, return_logits=False):
        """segment-anything's batched predict with numpy arrays: point_coords BxNx2 and
        point_labels BxN (or None), boxes Bx4 (or None), mask_input Bx1x256x256 (or None), all
        already in the model frame (transform.apply_coords_torch / apply_boxes_torch). Returns
        masks BxCxHxW (bool, or logits), iou_predictions BxC, low_res_masks BxCx256x256; the
        B prompt sets are decoded together (tinysam_predict_batch)."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        oh, ow = self.original_size
        ih, iw = self.input_size
        sizes = []
        pts = labs = bxs = mks = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied.")
            pts = np.asarray(point_coords, dtype=np.float64)
            labs = np.asarray(point_labels)
            if pts.ndim != 3 or pts.shape[2] != 2 or labs.shape != pts.shape[:2]:
                raise ValueError(f"point_coords must be BxNx2 and point_labels BxN, got "
                                 f"{pts.shape} and {labs.shape}")
            sizes.append(pts.shape[0])
            # back to original pixels: the engine applies apply_coords itself
            pts = pts * np.array([ow / iw, oh / ih])
            labs = np.ascontiguousarray(labs.astype(np.int32))
        if boxes is not None:
            bxs = np.asarray(boxes, dtype=np.float64)
            if bxs.ndim != 2 or bxs.shape[1] != 4:
                raise ValueError(f"boxes must be Bx4, got {bxs.shape}")
            sizes.append(bxs.shape[0])
            bxs = bxs * np.array([ow / iw, oh / ih, ow / iw, oh / ih])
        if mask_input is not None:
            mks = np.ascontiguousarray(np.asarray(mask_input, dtype=np.float32))
            if mks.ndim != 4 or mks.shape[1:] != (1, 256, 256):
                raise ValueError(f"mask_input must be Bx1x256x256, got {mks.shape}")
            sizes.append(mks.shape[0])
        if not sizes:
            raise ValueError("predict_torch needs point_coords, boxes or mask_input")
        if len(set(sizes)) != 1:
            raise ValueError(f"the prompts' batch sizes differ: {sizes}")
        b = sizes[0]
        prompts = (_lib.Prompt * b)()
        keep = []
        for i in range(b):
            pr = prompts[i]
            if pts is not None:
                p = np.ascontiguousarray(pts[i].astype(np.float32))
                keep.append(p)
                pr.n_points = p.shape[0]
                pr.points = p.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
                pr.labels = labs[i].ctypes.data_as(ctypes.POINTER(ctypes.c_int))
            if bxs is not None:
                pr.has_box = 1
                pr.box[:] = [float(v) for v in bxs[i].astype(np.float32)]
            if mks is not None:
                pr.mask_input = mks[i].ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        flags = _lib.PREDICT_LOGITS if return_logits else _lib.PREDICT_MASKS
        if not multimask_output:
            flags |= _lib.PREDICT_SINGLE
        outs = (_lib.Prediction * b)()
        _lib.check(_lib.tinysam_predict_batch(self.model._handle, self._emb, b, prompts, flags,
                                              outs))
        try:
            c, h, w = outs[0].n_masks, outs[0].height, outs[0].width
            masks = np.empty((b, c, h, w), dtype=np.float32 if return_logits else bool)
            iou = np.empty((b, c), dtype=np.float32)
            low = np.empty((b, c, 256, 256), dtype=np.float32)
            for i in range(b):
                o = outs[i]
                low[i] = np.ctypeslib.as_array(o.low_res, shape=(c, 256, 256))
                iou[i] = o.iou[:c]
                if return_logits:
                    masks[i] = np.ctypeslib.as_array(o.logits, shape=(c, h, w))
                else:
                    masks[i] = np.ctypeslib.as_array(o.masks, shape=(c, h, w)).astype(bool)
        finally:
            for i in range(b):
                _lib.tinysam_prediction_free(ctypes.byref(outs[i]))
        del keep
        return _result(masks), _result(iou), _result(low)
