"""COLMAP sparse models (cameras, images, points3D): reader and writer, pure numpy + struct.

The formats are COLMAP's documented ones (https://colmap.github.io/format.html):

* **text** (``cameras.txt``, ``images.txt``, ``points3D.txt``): ``#`` starts a comment line;
  ``cameras.txt``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]``;
  ``images.txt``: two lines per image, ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then
  ``POINTS2D[] as (X Y POINT3D_ID)`` (the second line may be empty);
  ``points3D.txt``: ``POINT3D_ID X Y Z R G B ERROR TRACK[] as (IMAGE_ID POINT2D_IDX)``.
* **binary**, little endian: ``cameras.bin``: uint64 count, then per camera int32 id,
  int32 model_id, uint64 width, uint64 height, float64 params[num_params(model)];
  ``images.bin``: uint64 count, then per image int32 id, float64 qvec[4], float64 tvec[3],
  int32 camera_id, NUL-terminated name, uint64 num_points2D, (float64 x, float64 y,
  int64 point3D_id) each;
  ``points3D.bin``: uint64 count, then per point uint64 id, float64 xyz[3], uint8 rgb[3],
  float64 error, uint64 track_length, (int32 image_id, int32 point2D_idx) each.

Poses are world-to-camera: ``x_cam = qvec2rotmat(qvec) @ x_world + tvec``, OpenCV camera axes,
pixel centres at +0.5 (the project convention, see ``scene/cameras.py``).

Every malformed input raises ``ValueError`` naming the file and the problem.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

PathLike = Union[str, Path]

# COLMAP's camera model table (src/colmap/sensor/models.h): id -> (name, number of params).
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
CAMERA_MODEL_IDS: dict[str, int] = {name: i for i, (name, _) in CAMERA_MODELS.items()}
CAMERA_MODEL_NUM_PARAMS: dict[str, int] = {name: n for name, n in CAMERA_MODELS.values()}


@dataclass
class ColmapCamera:
    id: int
    model: str              # COLMAP model name, e.g. "PINHOLE"
    width: int
    height: int
    params: np.ndarray      # [num_params] float64, COLMAP's order for the model


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray        # [4] float64, w, x, y, z (world -> camera rotation)
    tvec: np.ndarray        # [3] float64, world -> camera translation
    camera_id: int
    name: str               # image file name relative to the image folder
    xys: np.ndarray         # [P,2] float64 keypoint pixels
    point3D_ids: np.ndarray  # [P] int64, -1 = not triangulated


@dataclass
class ColmapPoints:
    ids: np.ndarray         # [P] int64
    xyz: np.ndarray         # [P,3] float64
    rgb: np.ndarray         # [P,3] uint8
    error: np.ndarray       # [P] float64 reprojection error
    tracks: Optional[list] = None  # P x (image_ids int32 [T], point2D_idxs int32 [T]) or None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @staticmethod
    def empty() -> "ColmapPoints":
        return ColmapPoints(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3), np.uint8),
                            np.zeros(0), [])


# ---------------------------------------------------------------------------------------------
# rotations
# ---------------------------------------------------------------------------------------------
def qvec2rotmat(qvec) -> np.ndarray:
    """[4] quaternion (w, x, y, z), normalised here -> [3,3] rotation matrix."""
    q = np.asarray(qvec, dtype=np.float64).reshape(-1)
    if q.shape != (4,):
        raise ValueError(f"qvec must have 4 entries, got shape {np.shape(qvec)}")
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"qvec {q.tolist()} is not a valid rotation quaternion")
    w, x, y, z = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotmat2qvec(R) -> np.ndarray:
    """[3,3] rotation matrix -> [4] unit quaternion (w, x, y, z) with w >= 0.

    Shepperd's method: start from the largest of (trace, R00, R11, R22) for stability."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        raise ValueError(f"rotation matrix must be 3x3, got shape {R.shape}")
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    k = int(np.argmax([tr, R[0, 0], R[1, 1], R[2, 2]]))
    if k == 0:
        s = 2.0 * np.sqrt(max(1.0 + tr, 0.0))
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif k == 1:
        s = 2.0 * np.sqrt(max(1.0 + R[0, 0] - R[1, 1] - R[2, 2], 0.0))
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif k == 2:
        s = 2.0 * np.sqrt(max(1.0 - R[0, 0] + R[1, 1] - R[2, 2], 0.0))
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(max(1.0 - R[0, 0] - R[1, 1] + R[2, 2], 0.0))
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


# ---------------------------------------------------------------------------------------------
# text format
# ---------------------------------------------------------------------------------------------
def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read as text: {e}") from None


def _data_lines(lines: list[str]):
    """(line number, stripped line) for the non-empty, non-comment lines."""
    for i, line in enumerate(lines):
        s = line.strip()
        if s and not s.startswith("#"):
            yield i + 1, s


def read_cameras_text(path: PathLike) -> dict[int, ColmapCamera]:
    path = Path(path)
    cams: dict[int, ColmapCamera] = {}
    for ln, s in _data_lines(_read_lines(path)):
        tok = s.split()
        try:
            if len(tok) < 4:
                raise ValueError("expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]")
            cid, model = int(tok[0]), tok[1]
            params = np.array([float(v) for v in tok[4:]], dtype=np.float64)
            n = CAMERA_MODEL_NUM_PARAMS.get(model)
            if n is not None and len(params) != n:
                raise ValueError(f"model {model} takes {n} params, got {len(params)}")
            cams[cid] = ColmapCamera(cid, model, int(tok[2]), int(tok[3]), params)
        except ValueError as e:
            raise ValueError(f"{path}:{ln}: malformed camera line ({e}): {s[:80]!r}") from None
    return cams


def read_images_text(path: PathLike) -> dict[int, ColmapImage]:
    path = Path(path)
    lines = _read_lines(path)
    images: dict[int, ColmapImage] = {}
    i = 0
    while i < len(lines):
        s = lines[i].strip()
        i += 1
        if not s or s.startswith("#"):
            continue
        ln = i
        pts = lines[i].strip() if i < len(lines) else ""  # the 2nd line may be empty or absent
        i += 1
        if pts.startswith("#"):
            pts = ""
        try:
            tok = s.split(None, 9)
            if len(tok) < 10:
                raise ValueError("expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
            vals = np.array([float(v) for v in tok[1:8]], dtype=np.float64)
            p = pts.split()
            if len(p) % 3:
                raise ValueError(f"points line has {len(p)} values, not a multiple of 3 (X Y POINT3D_ID)")
            xys = np.stack([np.array(p[0::3], dtype=np.float64), np.array(p[1::3], dtype=np.float64)], 1)
            ids = np.array(p[2::3], dtype=np.int64)
            iid = int(tok[0])
            images[iid] = ColmapImage(iid, vals[:4], vals[4:7], int(tok[8]), tok[9].strip(), xys, ids)
        except ValueError as e:
            raise ValueError(f"{path}:{ln}: malformed image entry ({e}): {s[:80]!r}") from None
    return images


def read_points3D_text(path: PathLike, tracks: bool = True) -> ColmapPoints:
    path = Path(path)
    ids, xyz, rgb, err, trk = [], [], [], [], []
    for ln, s in _data_lines(_read_lines(path)):
        tok = s.split()
        try:
            if len(tok) < 8 or (len(tok) - 8) % 2:
                raise ValueError("expected POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)*")
            ids.append(int(tok[0]))
            xyz.append([float(tok[1]), float(tok[2]), float(tok[3])])
            c = [int(tok[4]), int(tok[5]), int(tok[6])]
            if min(c) < 0 or max(c) > 255:
                raise ValueError(f"colour {c} outside 0..255")
            rgb.append(c)
            err.append(float(tok[7]))
            if tracks:
                t = np.array([int(v) for v in tok[8:]], dtype=np.int32).reshape(-1, 2)
                trk.append((t[:, 0].copy(), t[:, 1].copy()))
        except ValueError as e:
            raise ValueError(f"{path}:{ln}: malformed point line ({e}): {s[:80]!r}") from None
    return ColmapPoints(np.array(ids, dtype=np.int64), np.array(xyz, dtype=np.float64).reshape(-1, 3),
                        np.array(rgb, dtype=np.uint8).reshape(-1, 3), np.array(err, dtype=np.float64),
                        trk if tracks else None)


# ---------------------------------------------------------------------------------------------
# binary format
# ---------------------------------------------------------------------------------------------
class _Buf:
    """Bounds-checked little-endian reader over a file's bytes."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise ValueError(f"{path}: file not found")
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
        if not self.data:
            raise ValueError(f"{path}: empty file (0 bytes), truncated or never written: re-export the model "
                             f"(e.g. colmap model_converter --output_type BIN)")
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"{self.path}: truncated or malformed file: {what} needs {n} bytes at "
                             f"offset {self.pos}, file has {len(self.data)}")

    def unpack(self, fmt: str, what: str) -> tuple:
        n = struct.calcsize(fmt)
        self.need(n, what)
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += n
        return out

    def array(self, dtype, count: int, what: str) -> np.ndarray:
        dtype = np.dtype(dtype)
        self.need(dtype.itemsize * count, what)
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += dtype.itemsize * count
        return out

    def count(self, min_record: int, what: str) -> int:
        (n,) = self.unpack("<Q", f"number of {what}")
        if n * min_record > len(self.data) - self.pos:
            raise ValueError(f"{self.path}: truncated or malformed file: header says {n} {what}, "
                             f"but only {len(self.data) - self.pos} bytes follow")
        return n

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ValueError(f"{self.path}: malformed file: {len(self.data) - self.pos} unexpected "
                             f"trailing bytes at offset {self.pos}")


def read_cameras_bin(path: PathLike) -> dict[int, ColmapCamera]:
    b = _Buf(Path(path))
    cams: dict[int, ColmapCamera] = {}
    for _ in range(b.count(24, "cameras")):
        cid, mid, w, h = b.unpack("<iiQQ", "camera header")
        if mid not in CAMERA_MODELS:
            raise ValueError(f"{b.path}: camera {cid} has unknown COLMAP model id {mid}")
        name, n = CAMERA_MODELS[mid]
        cams[cid] = ColmapCamera(cid, name, int(w), int(h), b.array("<f8", n, f"camera {cid} params").copy())
    b.done()
    return cams


_IMG_HEAD = struct.Struct("<i4d3di")  # id, qvec, tvec, camera_id (64 bytes)
_P2D = np.dtype([("xy", "<f8", (2,)), ("id", "<i8")])


def read_images_bin(path: PathLike) -> dict[int, ColmapImage]:
    b = _Buf(Path(path))
    images: dict[int, ColmapImage] = {}
    for _ in range(b.count(_IMG_HEAD.size + 9, "images")):
        b.need(_IMG_HEAD.size, "image header")
        v = _IMG_HEAD.unpack_from(b.data, b.pos)
        b.pos += _IMG_HEAD.size
        end = b.data.find(b"\x00", b.pos)
        if end < 0:
            raise ValueError(f"{b.path}: truncated or malformed file: image {v[0]} name has no NUL terminator")
        try:
            name = b.data[b.pos:end].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{b.path}: image {v[0]} name is not valid UTF-8") from None
        b.pos = end + 1
        (n,) = b.unpack("<Q", f"image {v[0]} number of points2D")
        p = b.array(_P2D, n, f"image {v[0]} points2D")
        images[v[0]] = ColmapImage(v[0], np.array(v[1:5]), np.array(v[5:8]), v[8], name,
                                   p["xy"].astype(np.float64), p["id"].astype(np.int64))
    b.done()
    return images


_P3D_HEAD = np.dtype([("id", "<u8"), ("xyz", "<f8", (3,)), ("rgb", "u1", (3,)),
                      ("error", "<f8"), ("T", "<u8")])  # 51 bytes, packed
_TRACK = np.dtype([("image_id", "<i4"), ("point2D_idx", "<i4")])


def read_points3D_bin(path: PathLike, tracks: bool = True) -> ColmapPoints:
    """Reads ``points3D.bin``; one cheap Python pass finds the record offsets, numpy gathers the
    fields (1M points take about a second). ``tracks=False`` skips building the track list."""
    b = _Buf(Path(path))
    hs = _P3D_HEAD.itemsize
    n = b.count(hs, "points")
    data, size = b.data, len(b.data)
    offsets = np.empty(n, dtype=np.int64)
    lengths = np.empty(n, dtype=np.int64)
    pos = b.pos
    unpack_T = struct.Struct("<Q").unpack_from
    for i in range(n):
        if pos + hs > size:
            b.pos = pos
            b.need(hs, f"point #{i} record")
        (T,) = unpack_T(data, pos + hs - 8)
        if pos + hs + 8 * T > size:
            b.pos = pos + hs
            b.need(8 * T, f"point #{i} track of length {T}")
        offsets[i], lengths[i] = pos, T
        pos += hs + 8 * T
    b.pos = pos
    b.done()
    if n == 0:
        empty = ColmapPoints.empty()
        empty.tracks = empty.tracks if tracks else None
        return empty
    raw = np.frombuffer(data, dtype=np.uint8)
    win = np.lib.stride_tricks.as_strided(raw, shape=(size - hs + 1, hs), strides=(1, 1))
    head = np.ascontiguousarray(win[offsets]).view(_P3D_HEAD).reshape(n)
    trk = None
    if tracks:
        total = int(lengths.sum())
        if total:
            first = np.repeat(offsets + hs - 8 * np.cumsum(np.concatenate([[0], lengths[:-1]])), lengths)
            starts = first + 8 * np.arange(total)
            win8 = np.lib.stride_tricks.as_strided(raw, shape=(size - 7, 8), strides=(1, 1))
            tr = np.ascontiguousarray(win8[starts]).view(_TRACK).reshape(total)
        else:
            tr = np.zeros(0, dtype=_TRACK)
        img = tr["image_id"].astype(np.int32)
        idx = tr["point2D_idx"].astype(np.int32)
        cuts = np.cumsum(lengths)[:-1]
        trk = list(zip(np.split(img, cuts), np.split(idx, cuts)))
    return ColmapPoints(head["id"].astype(np.int64), head["xyz"].astype(np.float64),
                        head["rgb"].astype(np.uint8), head["error"].astype(np.float64), trk)


# ---------------------------------------------------------------------------------------------
# model folder
# ---------------------------------------------------------------------------------------------
_NAMES = ("cameras", "images", "points3D")


def read_model(sparse_dir: PathLike, tracks: bool = True
               ) -> tuple[dict[int, ColmapCamera], dict[int, ColmapImage], ColmapPoints]:
    """Reads ``cameras``, ``images``, ``points3D`` from ``sparse_dir`` (e.g. ``<scene>/sparse/0``).

    The binary files are used when all three exist, else the text files; a format with only
    some of its three files present is an error."""
    d = Path(sparse_dir)
    if not d.is_dir():
        raise ValueError(f"{d}: COLMAP model folder not found")
    have = {ext: [(d / f"{n}{ext}").is_file() for n in _NAMES] for ext in (".bin", ".txt")}
    if all(have[".bin"]):
        return (read_cameras_bin(d / "cameras.bin"), read_images_bin(d / "images.bin"),
                read_points3D_bin(d / "points3D.bin", tracks=tracks))
    if all(have[".txt"]):
        return (read_cameras_text(d / "cameras.txt"), read_images_text(d / "images.txt"),
                read_points3D_text(d / "points3D.txt", tracks=tracks))
    found = [f"{n}{e}" for e in have for n, h in zip(_NAMES, have[e]) if h]
    raise ValueError(f"{d}: incomplete COLMAP model: need cameras, images and points3D all as .bin or "
                     f"all as .txt; found {found or 'none of them'}")


def _f(x) -> str:
    return repr(float(x))  # shortest string that round-trips the float64 exactly


def write_model(sparse_dir: PathLike, cameras: dict[int, ColmapCamera], images: dict[int, ColmapImage],
                points: Optional[ColmapPoints], ext: str = ".txt") -> Path:
    """Writes the three files in ``ext`` (".txt" or ".bin") format into ``sparse_dir`` (created).

    Text output uses the shortest round-trip float repr, so text and binary read back equal.
    ``points=None`` writes an empty points3D file; ``points.tracks=None`` writes empty tracks."""
    if ext not in (".txt", ".bin"):
        raise ValueError(f"write_model: ext must be '.txt' or '.bin', got {ext!r}")
    d = Path(sparse_dir)
    d.mkdir(parents=True, exist_ok=True)
    points = ColmapPoints.empty() if points is None else points
    for c in cameras.values():
        n = CAMERA_MODEL_NUM_PARAMS.get(c.model)
        if n is None or len(c.params) != n:
            raise ValueError(f"write_model: camera {c.id} model {c.model!r} with {len(c.params)} params is "
                             f"not a valid COLMAP camera")
    P = len(points)
    tracks = points.tracks if points.tracks is not None else [
        (np.zeros(0, np.int32), np.zeros(0, np.int32))] * P
    if len(tracks) != P:
        raise ValueError(f"write_model: {P} points but {len(tracks)} tracks")
    imgs = [images[k] for k in sorted(images)]
    if ext == ".txt":
        with open(d / "cameras.txt", "w", encoding="utf-8") as fh:
            fh.write("# Camera list with one line of data per camera:\n"
                     "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
                     f"# Number of cameras: {len(cameras)}\n")
            for k in sorted(cameras):
                c = cameras[k]
                fh.write(" ".join([str(c.id), c.model, str(int(c.width)), str(int(c.height))]
                                  + [_f(p) for p in c.params]) + "\n")
        with open(d / "images.txt", "w", encoding="utf-8") as fh:
            mean_obs = np.mean([len(im.point3D_ids) for im in imgs]) if imgs else 0
            fh.write("# Image list with two lines of data per image:\n"
                     "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
                     "#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
                     f"# Number of images: {len(imgs)}, mean observations per image: {mean_obs}\n")
            for im in imgs:
                fh.write(" ".join([str(im.id)] + [_f(v) for v in im.qvec] + [_f(v) for v in im.tvec]
                                  + [str(im.camera_id), im.name]) + "\n")
                xys = np.asarray(im.xys, dtype=np.float64).reshape(-1, 2)
                fh.write(" ".join(f"{_f(x)} {_f(y)} {int(p)}" for (x, y), p in zip(xys, im.point3D_ids)) + "\n")
        with open(d / "points3D.txt", "w", encoding="utf-8") as fh:
            fh.write("# 3D point list with one line of data per point:\n"
                     "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
                     f"# Number of points: {P}\n")
            for i in range(P):
                a, b = tracks[i]
                x, y, z = points.xyz[i]
                r, g, bl = (int(v) for v in points.rgb[i])
                fh.write(" ".join([str(int(points.ids[i])), _f(x), _f(y), _f(z), str(r), str(g), str(bl),
                                   _f(points.error[i])] + [f"{int(u)} {int(v)}" for u, v in zip(a, b)]) + "\n")
        return d
    with open(d / "cameras.bin", "wb") as fh:
        fh.write(struct.pack("<Q", len(cameras)))
        for k in sorted(cameras):
            c = cameras[k]
            fh.write(struct.pack("<iiQQ", c.id, CAMERA_MODEL_IDS[c.model], int(c.width), int(c.height)))
            fh.write(np.asarray(c.params, dtype="<f8").tobytes())
    with open(d / "images.bin", "wb") as fh:
        fh.write(struct.pack("<Q", len(imgs)))
        for im in imgs:
            fh.write(_IMG_HEAD.pack(im.id, *map(float, im.qvec), *map(float, im.tvec), im.camera_id))
            fh.write(im.name.encode("utf-8") + b"\x00")
            p = np.zeros(len(im.point3D_ids), dtype=_P2D)
            p["xy"] = np.asarray(im.xys, dtype=np.float64).reshape(-1, 2)
            p["id"] = im.point3D_ids
            fh.write(struct.pack("<Q", len(p)) + p.tobytes())
    with open(d / "points3D.bin", "wb") as fh:
        fh.write(struct.pack("<Q", P))
        head = np.zeros(P, dtype=_P3D_HEAD)
        head["id"], head["xyz"], head["rgb"], head["error"] = points.ids, points.xyz, points.rgb, points.error
        head["T"] = [len(t[0]) for t in tracks]
        parts = []
        for i in range(P):
            tr = np.zeros(len(tracks[i][0]), dtype=_TRACK)
            tr["image_id"], tr["point2D_idx"] = tracks[i]
            parts.append(head[i:i + 1].tobytes() + tr.tobytes())
        fh.write(b"".join(parts))
    return d
