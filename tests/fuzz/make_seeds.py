#!/usr/bin/env python3
"""make_seeds.py - writes small seed inputs for the fuzz harnesses into tests/fuzz/corpus/.

Everything here is generated (Python's own pickle/zipfile/struct/zlib, which write the
same opcodes and containers as torch.save and NumPy) or cut from small fixture files;
large fixtures are never copied. Usage: python3 make_seeds.py FIXTURES_DIR OUT_DIR
"""
import collections, io, json, os, pickle, struct, sys, types, zipfile, zlib

FIX, OUT = sys.argv[1], sys.argv[2]


def put(kind, name, data):
    d = os.path.join(OUT, kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def fixture(rel, limit=8192):
    p = os.path.join(FIX, rel)
    if not os.path.exists(p) or os.path.getsize(p) > limit:
        return None
    with open(p, "rb") as f:
        return f.read()


# ---------------------------------------------------------------- npy
def npy(descr, shape, payload, version=1, fortran=False):
    hdr = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (
        descr, fortran, "(%s)" % "".join("%d," % s for s in shape) if len(shape) != 1
        else "(%d,)" % shape[0])
    if len(shape) == 0:
        hdr = hdr.replace("'shape': ()", "'shape': ()")
    lenfmt = "<H" if version == 1 else "<I"
    pre = 10 if version == 1 else 12
    pad = (64 - (pre + len(hdr) + 1) % 64) % 64
    hdr = hdr + " " * pad + "\n"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(lenfmt, len(hdr)) + hdr.encode() + payload

put("npy", "f4_2x3", npy("<f4", (2, 3), struct.pack("<6f", 1, -2, 3.5, 0, 1e30, -0.0)))
put("npy", "f8_3", npy("<f8", (3,), struct.pack("<3d", 1, 2, 3)))
put("npy", "i8_2x2", npy("<i8", (2, 2), struct.pack("<4q", 1, -1, 2**40, 0)))
put("npy", "i4_scalar", npy("<i4", (), struct.pack("<i", 7)))
put("npy", "u1_1x4x4", npy("|u1", (1, 4, 4), bytes(range(16))))
put("npy", "i1_4", npy("|i1", (4,), b"\x80\x7f\x00\x01"))
put("npy", "b1_3", npy("|b1", (3,), b"\x01\x00\x01"))
put("npy", "f4_empty", npy("<f4", (0, 5), b""))
put("npy", "v2_f4", npy("<f4", (2,), struct.pack("<2f", 1, 2), version=2))
put("npy", "fortran", npy("<f4", (2, 2), struct.pack("<4f", 1, 2, 3, 4), fortran=True))
put("npy", "bigendian", npy(">f4", (2,), struct.pack(">2f", 1, 2)))
put("npy", "truncated", npy("<f4", (4, 4), struct.pack("<3f", 1, 2, 3)))
for rel in ("reference/picture1/prompts", "reference/shapes/prompts"):
    base = os.path.join(FIX, rel)
    if os.path.isdir(base):
        for case in sorted(os.listdir(base))[:2]:
            b = fixture(os.path.join(rel, case, "iou.npy"))
            if b:
                put("npy", "fixture_%s_iou" % case, b)

# ---------------------------------------------------------------- json
put("json", "object", '{"a": 1, "b": [true, false, null], "c": {"d": "e\\u00e9\\n"}}')
put("json", "numbers", "[0, -0, 1.5e300, -1e-320, 12345678901234567890, 1E+2, 0.1]")
put("json", "escapes", '["\\"\\\\\\/\\b\\f\\n\\r\\t", "\\ud83d\\ude00", "\\u0000x"]')
put("json", "nested", "[" * 40 + "]" * 40)
put("json", "empty", "{}")
put("json", "ws", " \t\r\n[ 1 , { } , [ ] ] \n")
for rel in ("reference/sam_vit_tiny/config.json", "reference/picture1/stages/stages.json",
            "oracle/scene_a/probes.json"):
    b = fixture(rel)
    if b:
        put("json", os.path.basename(os.path.dirname(rel)) + "_" + os.path.basename(rel), b)
p1 = os.path.join(FIX, "reference/picture1/prompts")
if os.path.isdir(p1):
    for case in sorted(os.listdir(p1))[:3]:
        b = fixture(os.path.join("reference/picture1/prompts", case, "prompt.json"))
        if b:
            put("json", "prompt_" + case, b)

# ---------------------------------------------------------------- scene (oracle)
b = fixture("oracle/scene_a/scene.json")
if b:
    put("scene", "scene_a", b)
put("scene", "minimal", json.dumps({
    "width": 64, "height": 48,
    "background": {"radius": 100, "gain": 2, "iou": [0.5, 0.6, 0.7]},
    "objects": [
        {"id": 1, "iou": 0.9, "gain": 5, "shapes": [{"type": "rect", "cx": 20, "cy": 20, "rx": 10, "ry": 8}]},
        {"id": 2, "parent": 1, "iou": 0.95, "gain": 4,
         "shapes": [{"type": "ellipse", "cx": 20, "cy": 20, "rx": 4, "ry": 3}],
         "holes": [{"type": "ellipse", "cx": 21, "cy": 20, "rx": 1, "ry": 1}]}],
    "duplicate_penalty": 0.05}))

put("scene", "small_nested", json.dumps({
    "width": 128, "height": 96,
    "background": {"radius": 150, "gain": 1.5, "iou": [0.9, 0.92, 0.95]},
    "objects": [
        {"id": 10, "iou": 0.97, "gain": 6, "shapes": [
            {"type": "rect", "cx": 35, "cy": 30, "rx": 25, "ry": 20},
            {"type": "ellipse", "cx": 60, "cy": 30, "rx": 10, "ry": 15}],
         "holes": [{"type": "rect", "cx": 35, "cy": 30, "rx": 2.5, "ry": 2.5}]},
        {"id": 11, "parent": 10, "iou": 0.99, "gain": 8,
         "shapes": [{"type": "ellipse", "cx": 30, "cy": 25, "rx": 7.5, "ry": 6}]},
        {"id": 12, "parent": 11, "iou": 0.93, "gain": 1e6,
         "shapes": [{"type": "rect", "cx": 30, "cy": 25, "rx": 1.5, "ry": 1}]},
        {"id": 20, "iou": 0.9, "gain": 3,
         "shapes": [{"type": "ellipse", "cx": 100, "cy": 75, "rx": 30, "ry": 22}]}],
    "duplicate_penalty": 0.1}))

# ---------------------------------------------------------------- args (CLI values)
for name, argv in {
    "point": ["--point", "380,300", "--point", "10.5,20,0", "--box", "1,2,300,400"],
    "everything": ["--mode", "grid", "--points-per-side", "16", "--points-per-batch", "64",
                   "--pred-iou-thresh", "0.88", "--stability-score-thresh", "0.95",
                   "--crop-n-layers", "1", "--crop-overlap-ratio", "0.3413",
                   "--crop-n-points-downscale-factor", "2", "--min-mask-region-area", "100"],
    "hier": ["--mode", "hierarchical", "--high-score-thresh", "8.5", "--box-nms-thresh", "0.7",
             "--crop-nms-thresh", "0.7", "--stability-score-offset", "1"],
    "misc": ["--mask-index", "2", "--threads", "4", "--max-pixels", "1000000", "--value", "-1e-3"],
    "bad": ["--point", "1,,2", "--box", "nan,1,2,3"],
}.items():
    put("args", name, "\n".join(argv))
put("args", "nul_separated", b"--point\x001e38,-1e38\x00--points-per-side\x000x10")

# ---------------------------------------------------------------- safetensors
def safetensors(tensors, meta=None, extra=b""):
    hdr, data = {}, b""
    if meta is not None:
        hdr["__metadata__"] = meta
    for name, (dt, shape, payload) in tensors.items():
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data + extra

put("safetensors", "f32", safetensors({"w": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
                                       "b": ("F32", [2], struct.pack("<2f", 5, 6))},
                                      {"format": "pt", "config": '{"family":"vit_t"}'}))
put("safetensors", "dtypes", safetensors({
    "h": ("F16", [3], struct.pack("<3e", 1, -2, 0.5)),
    "bf": ("BF16", [2], b"\x80\x3f\x00\xc0"),
    "d": ("F64", [1], struct.pack("<d", 3.25)),
    "l": ("I64", [2], struct.pack("<2q", 1, -5)),
    "i": ("I32", [1, 1], struct.pack("<i", 9)),
    "c": ("I8", [2], b"\xff\x01"),
    "u": ("U8", [2], b"\x00\xff"),
    "bo": ("BOOL", [1], b"\x01"),
    "s": ("F32", [], struct.pack("<f", 1))}))
put("safetensors", "empty_tensor", safetensors({"e": ("F32", [0, 3], b""), "x": ("F32", [1], b"\0\0\0\0")}))
ov = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
put("safetensors", "overlap", struct.pack("<Q", len(ov)) + ov + bytes(12))
put("safetensors", "out_of_range", safetensors({"a": ("F32", [4], bytes(16))})[:-4])

# ---------------------------------------------------------------- pth (torch.save's format)
# A stand-in torch module, so that Python's pickle writes the globals torch writes.
torch = types.ModuleType("torch")
utils = types.ModuleType("torch._utils")
sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
torch._utils = utils
STORAGES = {"F32": ("FloatStorage", "<f", 4), "F16": ("HalfStorage", "<e", 2),
            "F64": ("DoubleStorage", "<d", 8), "I64": ("LongStorage", "<q", 8),
            "I32": ("IntStorage", "<i", 4), "I8": ("CharStorage", "<b", 1),
            "U8": ("ByteStorage", "<B", 1), "BOOL": ("BoolStorage", "<?", 1),
            "BF16": ("BFloat16Storage", None, 2)}
for cls, _, _ in STORAGES.values():
    c = type(cls, (), {})
    c.__module__ = "torch"
    setattr(torch, cls, c)


def _rebuild_tensor_v2(*a):
    pass


def _rebuild_parameter(*a):
    pass


for f in (_rebuild_tensor_v2, _rebuild_parameter):
    f.__module__, f.__qualname__ = "torch._utils", f.__name__
    setattr(utils, f.__name__, f)


class Storage:
    def __init__(self, key, dt, values):
        self.key, self.dt = key, dt
        cls, fmt, size = STORAGES[dt]
        self.numel = len(values) if fmt else len(values) // 2
        self.bytes = b"".join(struct.pack(fmt, v) for v in values) if fmt else bytes(values)


class Tensor:
    def __init__(self, storage, offset, shape, stride, param=False):
        self.s, self.o, self.shape, self.stride, self.param = storage, offset, shape, stride, param

    def __reduce_ex__(self, proto):
        t = (_rebuild_tensor_v2, (self.s, self.o, tuple(self.shape), tuple(self.stride), False,
                                  collections.OrderedDict()))
        if self.param:
            return (_rebuild_parameter, (Tensor(self.s, self.o, self.shape, self.stride), True,
                                         collections.OrderedDict()))
        return t


class P(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", getattr(torch, STORAGES[obj.dt][0]), obj.key, "cpu", obj.numel)
        return None


def state_dict():
    s0 = Storage("0", "F32", [0.5, -1, 2, 3, 4, 5])
    s1 = Storage("1", "I64", [7])
    s2 = Storage("2", "F16", [1, 2, 3, 4])
    s3 = Storage("3", "BF16", [0x80, 0x3F, 0, 0xC0])
    sd = collections.OrderedDict()
    sd["layer.weight"] = Tensor(s0, 0, [2, 3], [3, 1])
    sd["layer.bias"] = Tensor(s0, 4, [2], [1])             # a view into the same storage
    sd["layer.t"] = Tensor(s0, 0, [3, 2], [1, 3])          # non-contiguous
    sd["bn.num_batches_tracked"] = Tensor(s1, 0, [], [])
    sd["half"] = Tensor(s2, 0, [2, 2], [2, 1], param=True)
    sd["bf"] = Tensor(s3, 0, [2], [1])
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    return sd, [s0, s1, s2, s3]


def pickled(obj, proto):
    b = io.BytesIO()
    P(b, protocol=proto).dump(obj)
    return b.getvalue()


def pth_zip(proto=2, name="archive", wrap=None):
    sd, storages = state_dict()
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as z:
        z.writestr(name + "/data.pkl", pickled(wrap(sd) if wrap else sd, proto))
        z.writestr(name + "/byteorder", "little")
        for s in storages:
            z.writestr(name + "/data/" + s.key, s.bytes)
        z.writestr(name + "/version", "3\n")
    return b.getvalue()


def pth_legacy(proto=2):
    sd, storages = state_dict()
    out = pickled(0x1950A86A20F9469CFC6C, proto) + pickled(1001, proto)
    out += pickled({"protocol_version": 1001, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}, proto)
    out += pickled(sd, proto) + pickled([s.key for s in storages], proto)
    for s in storages:
        out += struct.pack("<q", s.numel) + s.bytes
    return out

put("pth", "zip_p2", pth_zip())
put("pth", "zip_p4", pth_zip(proto=4, name="model"))
put("pth", "zip_nested", pth_zip(wrap=lambda sd: {"model": sd, "epoch": 3, "lr": 0.5,
                                                    "tags": ["a", ("b", None, True)]}))
put("pth", "legacy_p2", pth_legacy())
put("pth", "legacy_p5", pth_legacy(proto=5))


# Whole-model pickles (torch.save(model)): stand-in module classes under the names the
# official code pickles, instances pickled as NEWOBJ + BUILD of their __dict__.
def module_class(modname, clsname):
    parts = modname.split(".")
    for i in range(1, len(parts) + 1):  # the packages too, so that pickle can import it
        name = ".".join(parts[:i])
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            sys.modules[name].__path__ = []
            if i > 1:
                setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], sys.modules[name])
    mod = sys.modules[modname]
    c = type(clsname, (), {})
    c.__module__, c.__qualname__ = modname, clsname
    setattr(mod, clsname, c)
    return c


def module(cls, params=(), buffers=(), modules=(), nonpersistent=(), **attrs):
    o = cls()
    o.__dict__.update({"training": False,
                       "_parameters": collections.OrderedDict(params),
                       "_buffers": collections.OrderedDict(buffers),
                       "_non_persistent_buffers_set": set(nonpersistent),
                       "_modules": collections.OrderedDict(modules)})
    o.__dict__.update(attrs)
    return o


def module_tree():
    Sam = module_class("modeling.sam", "Sam")
    Attention = module_class("modeling.tiny_vit_sam", "Attention")
    Linear = module_class("torch.nn.modules.linear", "Linear")
    Wrapper = module_class("my_project.wrappers", "Wrapper")
    QLinear = module_class("quantization_layer.layers", "InferQuantLinear")
    QPost = module_class("quantization_layer.layers", "InferQuantLinearPost")
    w = Storage("w", "F32", [0.5, -1, 2, 3, 4, 5, 0.25, -0.75])
    idx = Storage("i", "I64", [0, 1, 1, 0])
    ab = Storage("a", "F32", [0.1, 0.2, 0.2, 0.1])
    q = Storage("q", "F32", [0.01, 0.02, 0.5])
    n = Storage("n", "I32", [1])
    attn = module(Attention, params=[("attention_biases", Tensor(w, 0, [1, 2], [2, 1], True))],
                  buffers=[("attention_bias_idxs", Tensor(idx, 0, [2, 2], [2, 1])),
                           ("ab", Tensor(ab, 0, [1, 2, 2], [4, 2, 1]))],
                  nonpersistent=["ab", "attention_bias_idxs"], num_heads=1, scale=0.5)
    lin = module(Linear, params=[("weight", Tensor(w, 0, [2, 3], [3, 1], True)), ("bias", None)],
                 in_features=3, out_features=2)
    ql = module(QLinear, params=[("weight", Tensor(w, 2, [2, 3], [3, 1], True)),
                                 ("bias", Tensor(w, 0, [2], [1], True))],
                buffers=[("a_interval", Tensor(q, 0, [1, 1], [1, 1])),
                         ("w_interval", Tensor(q, 1, [2, 1, 1, 1], [1, 1, 1, 1])),
                         ("n_V", Tensor(n, 0, [], [])), ("n_H", Tensor(n, 0, [], [])),
                         ("n_a", Tensor(n, 0, [], []))],
                mode="quant_forward", w_bit=8, a_bit=8, w_qmax=128, a_qmax=128)
    qp = module(QPost, params=[("weight", Tensor(w, 0, [1, 2], [2, 1], True)), ("bias", None)],
                buffers=[("a_neg_interval", Tensor(q, 0, [], [])),
                         ("a_interval", Tensor(q, 2, [1, 1], [1, 1])),
                         ("w_interval", Tensor(q, 1, [1, 1, 1, 1], [1, 1, 1, 1]))],
                mode="raw")
    wrap = module(Wrapper, modules=[("inner", lin), ("none", None)])
    root = module(Sam, buffers=[("pixel_mean", Tensor(w, 0, [3, 1, 1], [1, 1, 1]))],
                  nonpersistent=["pixel_mean"],
                  modules=[("attn", attn), ("wrap", wrap), ("q", ql), ("qp", qp), ("shared", lin)])
    return root, [w, idx, ab, q, n]


def module_zip(proto):
    root, storages = module_tree()
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as z:
        z.writestr("whole/data.pkl", pickled(root, proto))
        z.writestr("whole/byteorder", "little")
        for s in storages:
            z.writestr("whole/data/" + s.key, s.bytes)
        z.writestr("whole/version", "3\n")
    return b.getvalue()


put("pth", "module_tree_p2", module_zip(2))
put("pth", "module_tree_p4", module_zip(4))  # sets as EMPTY_SET + ADDITEMS
for name in ("whole_float_fp16", "qtinysam_like"):
    p = os.path.join(FIX, "whole/%s.pth" % name)
    if os.path.exists(p):
        with open(p, "rb") as f:
            put("pth", "fixture_%s_head" % name, f.read(4096))
# The real checkpoint's container, cut: its local headers and the start of its pickle.
b = None
p = os.path.join(FIX, "models/tinysam_vit_t_random.pth")
if os.path.exists(p):
    with open(p, "rb") as f:
        put("pth", "fixture_zip_head", f.read(2048))
p = os.path.join(FIX, "models/tinysam_vit_t_random_fp16_legacy.pth")
if os.path.exists(p):
    with open(p, "rb") as f:
        put("pth", "fixture_legacy_head", f.read(2048))

# ---------------------------------------------------------------- PNG (JPEGs: seed_jpeg.c)
def png(w, h, ctype, depth, rows, plte=None, trns=None, interlace=0):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    raw = b"".join(b"\0" + r for r in rows)
    if interlace:  # Adam7, 8-bit one-byte pixels only
        raw = b""
        for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4),
                               (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
            if x0 < w:
                raw += b"".join(b"\0" + rows[y][x0::dx] for y in range(y0, h, dy))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace))
    if plte:
        out += chunk(b"PLTE", plte)
    if trns:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")

W, H = 7, 5
def px(f):
    return [bytes(sum((list(f(x, y)) for x in range(W)), [])) for y in range(H)]

put("image", "png_rgb8", png(W, H, 2, 8, px(lambda x, y: (x * 30, y * 50, 99))))
put("image", "png_grey8", png(W, H, 0, 8, px(lambda x, y: (x * 30 + y,))))
put("image", "png_grey1", png(9, 3, 0, 1, [b"\xaa\x80", b"\x55\x00", b"\xff\x80"]))
put("image", "png_greya", png(W, H, 4, 8, px(lambda x, y: (x * 30, 255 - x))))
put("image", "png_rgba", png(W, H, 6, 8, px(lambda x, y: (x * 30, y * 50, 9, x * 40))))
put("image", "png_rgb16", png(W, H, 2, 16, [b"".join(struct.pack(">HHH", x * 9000, y * 9000, 257) for x in range(W)) for y in range(H)]))
put("image", "png_palette", png(W, H, 3, 8, px(lambda x, y: ((x + y) % 3,)),
                                plte=b"\xff\0\0\0\xff\0\0\0\xff", trns=b"\x80"))
put("image", "png_palette4", png(W, H, 3, 4, [bytes([0x01, 0x20, 0x10, 0x20]) for y in range(H)],
                                 plte=b"\xff\0\0\0\xff\0\0\0\xff"))
put("image", "png_interlaced", png(W, H, 0, 8, px(lambda x, y: (x * 30 + y,)), interlace=1))
for rel in ("images/shapes_grey.png", "images/shapes.png"):
    b = fixture(rel, 6000)
    if b:
        put("image", "fixture_" + os.path.basename(rel).replace(".", "_"), b)
