"""Your own capture -> a 3DGS scene: camera poses by structure from motion (COLMAP through pycolmap).

    python -m preprocess.capture -s <scene> [--video clip.mp4 --fps 2] [--force]

Input: the photos in <scene>/input/ (graphdeco's convert.py layout) or <scene>/images/, or --video
(its sharpest frame per 1/fps s goes to <scene>/input/). Steps: feature extraction (SIFT), matching,
incremental mapping, undistortion to PINHOLE images at most --max-width wide (3DGS's -r -1 rule).
Output: <scene>/images/ (undistorted; originals that were in images/ move to input/), <scene>/sparse/0
(binary COLMAP model + summary.json). Work files: <scene>/.capture/ (a failed or interrupted run is
simply run again). The SfM steps run in child processes (numpy, PIL, cv2 imported before pycolmap
there; see docs/capture.md).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from scene.atomic import atomic_path, write_json
from scene.errors import StageError, UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")   # what COLMAP's image reader reads
MIN_IMAGES = 3            # fewer cannot give a useful 3DGS scene (COLMAP itself needs 2)
EXHAUSTIVE_MAX = 200      # auto matcher: all pairs up to this many images, else sequential
SMALL_IMAGE = 640         # long side below this: lower mapper thresholds (--min-inliers auto)
CAMERA_MODELS = ("OPENCV", "SIMPLE_RADIAL", "RADIAL", "PINHOLE", "SIMPLE_PINHOLE")
TAG = "@@"                # prefix of the lines a worker prints for its parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m preprocess.capture", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-s", "--source_path", required=True, help="scene folder (created for --video)")
    p.add_argument("--video", help="a video file: its frames are the images (written to <scene>/input/)")
    p.add_argument("--fps", type=float, default=2.0,
                   help="frames kept per second of video: the sharpest (variance of the Laplacian) of each interval")
    p.add_argument("--max-frames", type=int, default=0, help="stop reading the video after this many frames (0: all)")
    p.add_argument("--engine", default="auto", choices=("auto", "pycolmap", "colmap"),
                   help="auto: pycolmap when installed, else a `colmap` binary on PATH")
    p.add_argument("--camera-model", default="OPENCV", choices=CAMERA_MODELS,
                   help="model estimated for the one shared camera (OPENCV as graphdeco's convert.py); the "
                        "written images are undistorted to PINHOLE whatever this is")
    p.add_argument("--matcher", default="auto", choices=("auto", "exhaustive", "sequential"),
                   help=f"auto: exhaustive up to {EXHAUSTIVE_MAX} images, else sequential (for ordered frames)")
    p.add_argument("--min-inliers", type=int, default=0,
                   help=f"inliers the initial image pair needs (COLMAP: 100); 0: 100, or 30 for images under "
                        f"{SMALL_IMAGE} px; images then need max(15, 0.3 x this) to register")
    p.add_argument("--min-registered", type=float, default=0.8,
                   help="fail unless at least this fraction of the images registers (0: accept any model)")
    p.add_argument("--max-width", type=int, default=1600,
                   help="written images are at most this wide, intrinsics scaled to match (3DGS -r -1: 1600)")
    p.add_argument("--threads", type=int, default=-1, help="CPU threads of the SfM steps (-1: all)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing sparse/0 (the old model and images are kept in <scene>/.capture/replaced)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("--worker", help=argparse.SUPPRESS)       # internal: run one pycolmap step (JSON job)
    return p


# ------------------------------------------------------------------ the pycolmap side (child process)
def worker(job: dict) -> dict:
    """One SfM step with pycolmap. numpy, PIL and cv2 are imported first: pycolmap loaded before
    them once corrupted the heap (docs/capture.md)."""
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401
    import cv2  # noqa: F401
    import pycolmap

    step, threads = job["step"], job.get("threads", -1)
    pycolmap.set_random_seed(0)
    if step == "probe":
        order = [m for m in sys.modules if m in ("numpy", "PIL", "cv2", "pycolmap")]
        return {"version": pycolmap.__version__, "import_order": order}
    if step == "extract":
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = job["camera_model"]
        opts = pycolmap.FeatureExtractionOptions()
        opts.num_threads = threads
        pycolmap.extract_features(job["db"], job["images"], image_names=job["names"],
                                  camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                                  extraction_options=opts, device=pycolmap.Device.auto)
    elif step == "match":
        opts = pycolmap.FeatureMatchingOptions()
        opts.num_threads = threads
        opts.guided_matching = True   # re-match under the verified geometry: more inliers on small images
        match = pycolmap.match_sequential if job["matcher"] == "sequential" else pycolmap.match_exhaustive
        match(job["db"], matching_options=opts, device=pycolmap.Device.auto)
    elif step == "map":
        opts = pycolmap.IncrementalPipelineOptions()
        opts.num_threads = threads
        opts.mapper.init_min_num_inliers = job["min_inliers"]
        opts.mapper.abs_pose_min_num_inliers = job["abs_inliers"]
        count = iter(range(1, 1 << 30))
        recs = pycolmap.incremental_mapping(job["db"], job["images"], job["out"], opts,
                                            next_image_callback=lambda: print(f"{TAG}progress {next(count)}",
                                                                              flush=True))
        return {str(k): {"registered": r.num_reg_images(), "error": r.compute_mean_reprojection_error()}
                for k, r in recs.items()}
    elif step == "undistort":
        pycolmap.undistort_images(job["out"], job["model"], job["images"], output_type="COLMAP",
                                  num_threads=threads)
    return {}


# ------------------------------------------------------------------ the engines, as command lines
def pycolmap_command(job: dict) -> list[str]:
    return [sys.executable, "-m", "preprocess.capture", "-s", ".", "--worker", json.dumps(job)]


def colmap_command(job: dict, colmap: str = "colmap") -> list[str]:
    """The COLMAP CLI call of a step (the option names of COLMAP's documented command-line interface)."""
    step = job["step"]
    if step == "extract":
        return [colmap, "feature_extractor", "--database_path", job["db"], "--image_path", job["images"],
                "--ImageReader.camera_model", job["camera_model"], "--ImageReader.single_camera", "1"]
    if step == "match":
        return [colmap, f"{job['matcher']}_matcher", "--database_path", job["db"],
                "--FeatureMatching.guided_matching", "1"]
    if step == "map":
        return [colmap, "mapper", "--database_path", job["db"], "--image_path", job["images"],
                "--output_path", job["out"], "--Mapper.init_min_num_inliers", str(job["min_inliers"]),
                "--Mapper.abs_pose_min_num_inliers", str(job["abs_inliers"])]
    if step == "undistort":
        return [colmap, "image_undistorter", "--image_path", job["images"], "--input_path", job["model"],
                "--output_path", job["out"], "--output_type", "COLMAP"]
    raise ValueError(f"no colmap command for step {step!r}")


def pick_engine(engine: str) -> str:
    have_py, have_bin = importlib.util.find_spec("pycolmap") is not None, shutil.which("colmap") is not None
    if engine == "auto":
        engine = "pycolmap" if have_py else "colmap" if have_bin else ""
    if not engine or (engine == "pycolmap" and not have_py) or (engine == "colmap" and not have_bin):
        raise UserError("no SfM engine: install pycolmap (pip install 'pycolmap>=3.11') or put a `colmap` binary "
                        "on PATH" if not engine else f"--engine {engine}: " +
                        ("pycolmap is not installed" if engine == "pycolmap" else "no `colmap` binary on PATH"))
    return engine


def run_step(job: dict, engine: str, log_file: Path, bar=None) -> dict:
    """Runs one step as a child process; its log goes to ``log_file``; a failure is one StageError line."""
    cmd = pycolmap_command(job) if engine == "pycolmap" else colmap_command(job)
    result = {}
    with open(log_file, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                cwd=Path(__file__).resolve().parent.parent)
        for line in proc.stdout:
            if line.startswith(f"{TAG}progress") and bar is not None:
                bar.update(1)
            elif line.startswith(f"{TAG}result "):
                result = json.loads(line[len(TAG) + 7:])
            else:
                log.write(line)
        rc = proc.wait()
    if rc != 0:
        lines = [s for s in log_file.read_text(encoding="utf-8", errors="replace").splitlines() if s.strip()]
        raise StageError(f"SfM step {job['step']} failed (exit {rc}): {lines[-1][:200] if lines else 'no output'} "
                         f"(full log: {log_file})")
    return result


# ------------------------------------------------------------------ the parent
def list_images(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                  and not p.name.startswith("."))


def finalize(undist: Path, out: Path, max_width: int) -> tuple[dict, dict]:
    """Undistorted model + images -> ``out``/images and ``out``/sparse/0 (binary), images resized to at
    most ``max_width`` wide (intrinsics and keypoints scaled); reads the result back as a check."""
    import cv2
    import numpy as np

    from scene.colmap import read_model, write_model
    from scene.views import target_size_3dgs

    cams, imgs, pts = read_model(undist / "sparse")
    scale = {}
    for c in cams.values():
        if c.model != "PINHOLE":
            raise StageError(f"undistortion gave a {c.model} camera, expected PINHOLE")
        w, h = target_size_3dgs(c.width, c.height, -1, max_width)
        scale[c.id] = (w / c.width, h / c.height)
        c.params = c.params * np.array([scale[c.id][0], scale[c.id][1], scale[c.id][0], scale[c.id][1]])
        c.width, c.height = w, h
    (out / "images").mkdir(parents=True, exist_ok=True)
    for im in imgs.values():
        c, (sx, sy) = cams[im.camera_id], scale[im.camera_id]
        src, dst = undist / "images" / im.name, out / "images" / im.name
        if (sx, sy) == (1.0, 1.0):
            os.replace(src, dst)
        else:
            small = cv2.resize(cv2.imread(str(src), cv2.IMREAD_COLOR), (c.width, c.height),
                               interpolation=cv2.INTER_AREA)
            with atomic_path(dst) as tmp:
                if not cv2.imwrite(str(tmp), small):
                    raise OSError(f"{dst}: cv2.imwrite failed")
            im.xys = im.xys * np.array([sx, sy])
    write_model(out / "sparse" / "0", cams, imgs, pts, ext=".bin")   # out/ appears by a rename (commit)
    cams2, imgs2, _ = read_model(out / "sparse" / "0", tracks=False)
    for im in imgs2.values():
        c = cams2[im.camera_id]
        got = cv2.imread(str(out / "images" / im.name), cv2.IMREAD_UNCHANGED)
        if got is None or got.shape[:2] != (c.height, c.width):
            raise StageError(f"{out / 'images' / im.name}: written image does not match its camera "
                             f"{c.width}x{c.height}")
    return cams2, imgs2


def commit(scene: Path, work: Path, raw: Path) -> None:
    """Moves the result into place by renames; what was there goes to ``work``/replaced."""
    keep = work / "replaced" / time.strftime("%Y%m%d-%H%M%S")
    if raw == scene / "images":
        os.replace(raw, scene / "input")
    elif (scene / "images").exists():
        keep.mkdir(parents=True, exist_ok=True)
        os.replace(scene / "images", keep / "images")
    if (scene / "sparse" / "0").exists():
        keep.mkdir(parents=True, exist_ok=True)
        os.replace(scene / "sparse" / "0", keep / "sparse_0")
    if raw == work / "frames":
        if (scene / "input").exists():
            keep.mkdir(parents=True, exist_ok=True)
            os.replace(scene / "input", keep / "input")
        os.replace(raw, scene / "input")
    (scene / "sparse").mkdir(exist_ok=True)
    os.replace(work / "out" / "images", scene / "images")
    os.replace(work / "out" / "sparse" / "0", scene / "sparse" / "0")


def run(args) -> int:
    from tqdm import tqdm

    if args.worker:
        print(f"{TAG}result {json.dumps(worker(json.loads(args.worker)))}", flush=True)
        return 0
    scene = Path(args.source_path).resolve()
    if (scene / "sparse" / "0").exists() and not args.force:
        raise StageError(f"{scene / 'sparse' / '0'} already exists: pass --force to replace it (the old model "
                         f"is kept in {scene / '.capture' / 'replaced'})")
    if not 0 <= args.min_registered <= 1 or args.max_width < 1:
        raise UserError("--min-registered must be in [0, 1] and --max-width >= 1")
    work = scene / ".capture"
    for d in ("frames", "sparse", "undistorted", "out", "database.db"):   # a previous run's work files
        p = work / d
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    log_file = work / "sfm.log"
    log_file.write_text("", encoding="utf-8")
    seconds = {}
    if args.video:
        from preprocess.video import extract_frames

        t = time.time()
        extract_frames(args.video, work / "frames", args.fps, args.max_frames, args.progress)
        seconds["frames"] = time.time() - t
        raw = work / "frames"
    elif (scene / "input").is_dir():
        raw = scene / "input"
    elif (scene / "images").is_dir():
        raw = scene / "images"
    else:
        raise UserError(f"{scene}: no images: put the photos in {scene / 'input'} (or images/), or pass --video")
    names = list_images(raw)
    if len(names) < MIN_IMAGES:
        raise UserError(f"{raw}: {len(names)} image(s), SfM needs at least {MIN_IMAGES} overlapping views")
    engine = pick_engine(args.engine)
    from PIL import Image

    with Image.open(raw / names[0]) as im0:
        size = im0.size
    min_inliers = args.min_inliers or (30 if max(size) < SMALL_IMAGE else 100)   # COLMAP's default: 100
    matcher = args.matcher if args.matcher != "auto" else (
        "exhaustive" if len(names) <= EXHAUSTIVE_MAX else "sequential")
    base = {"db": str(work / "database.db"), "images": str(raw), "threads": args.threads}
    steps = [("extract", {"names": names, "camera_model": args.camera_model}), ("match", {"matcher": matcher}),
             ("map", {"out": str(work / "sparse"), "min_inliers": min_inliers,
                      "abs_inliers": max(15, round(0.3 * min_inliers))})]   # COLMAP: 100 -> 30
    version = run_step({"step": "probe"}, engine, log_file)["version"] if engine == "pycolmap" else None
    for step, extra in steps:
        t = time.time()
        with tqdm(total=len(names), desc=step, unit="img", disable=not args.progress, leave=False) as bar:
            run_step({**base, "step": step, **extra}, engine, log_file, bar if step == "map" else None)
            bar.update(len(names) - bar.n)
        seconds[step] = time.time() - t

    from scene.colmap import read_model

    models = {}
    for d in sorted((work / "sparse").glob("*")) if (work / "sparse").is_dir() else []:
        if d.is_dir() and any(d.glob("images.*")):
            models[d] = read_model(d, tracks=False)
    if not models:
        raise StageError(f"SfM found no model in {len(names)} images of {raw}: they do not overlap enough or have "
                         f"too little texture (too few matching features; see {log_file})")
    best = max(models, key=lambda d: len(models[d][1]))
    cams, imgs, pts = models[best]
    registered = {im.name for im in imgs.values()}
    missing = [n for n in names if n not in registered]
    frac = len(registered) / len(names)
    listed = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    if frac < args.min_registered:
        raise StageError(f"only {len(registered)} of {len(names)} images registered ({100 * frac:.0f}% < "
                         f"--min-registered {args.min_registered:g}); not registered: {listed} (they do not "
                         f"overlap the others; {len(models)} separate model(s) found)")
    err = float(pts.error.mean()) if len(pts) else float("nan")   # COLMAP's mean reprojection error

    t = time.time()
    with tqdm(total=len(registered), desc="undistort", unit="img", disable=not args.progress, leave=False) as bar:
        run_step({**base, "step": "undistort", "model": str(best), "out": str(work / "undistorted")}, engine, log_file)
        out_cams, out_imgs = finalize(work / "undistorted", work / "out", args.max_width)
        bar.update(len(registered))
    seconds["undistort"] = time.time() - t
    cam = next(iter(out_cams.values()))
    count = {"frames": len(names), "extract": len(names), "match": len(names), "map": len(names),
             "undistort": len(registered)}
    summary = {
        "engine": engine, "pycolmap_version": version, "camera_model": args.camera_model,
        "output_camera_model": cam.model, "matcher": matcher, "min_inliers": min_inliers,
        "images_total": len(names), "images_registered": len(registered), "registered_fraction": frac,
        "unregistered": missing, "models_found": len(models), "points3D": len(pts),
        "mean_reprojection_error_px": err, "input_size": list(size), "output_size": [cam.width, cam.height],
        "video": str(Path(args.video).resolve()) if args.video else None, "fps": args.fps if args.video else None,
        "steps": {k: {"seconds": round(s, 3), "images_per_s": round(count[k] / s, 2) if s > 0 else None}
                  for k, s in seconds.items()},
    }
    write_json(work / "out" / "sparse" / "0" / "summary.json", summary)
    commit(scene, work, raw)
    print(f"[capture] {scene}: {len(registered)} of {len(names)} images registered, mean reprojection error "
          f"{err:.3f} px, {len(pts)} points; PINHOLE {cam.width}x{cam.height} -> {scene / 'images'}, "
          f"{scene / 'sparse' / '0'}")
    if missing:
        print(f"[capture] warning: not registered (left out of images/): {listed}")
    return 0


def main(argv=None) -> int:
    from arguments.cli import run_cli

    return run_cli(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
