"""Synthetic LERF-OVS-shaped scenes (no SAM/CLIP weights or LERF data needed).

``python -m preprocess.synthetic --root data/synthetic --scene <name> --seed S [--preset ...]``
writes, with ground truth from an analytic numpy ray caster (not the Gaussian renderer):

```
<root>/<name>/images/frame_XXXXX.png              views on a hemisphere orbit (XXXXX = 00001..)
<root>/<name>/sparse/0/{cameras,images,points3D}.txt   COLMAP text model, PINHOLE camera
<root>/<name>/language_features/frame_XXXXX_s.npy float32 [4,H,W] mask ids (LangSplat format)
<root>/<name>/language_features/frame_XXXXX_f.npy float32 [M,512] unit per-mask vectors
<root>/<name>/queries.json        {"queries": [...], "frames": {frame: [categories]}, "negatives": [...]}
<root>/<name>/text_features.json  {phrase: [512 floats]} (queries, object names, canonical negatives)
<root>/<name>/synthetic.json      generator version, seed, preset, every knob (scene identity)
<root>/label/<name>/frame_XXXXX.json + .png      labelme-style polygons (LangSplat annotation)
<root>/label/<name>/gt/frame_XXXXX/<category>.png   0/255 ground-truth masks
```

The per-mask vectors are ``scene.encoders.HashTextEncoder`` vectors of what the mask shows plus
noise, so the ``hash`` text encoder (or the ``table`` encoder on ``text_features.json``)
produces queries in the same space. Python API: :func:`generate_scene`, :func:`build_scene`,
:func:`make_config`.
"""
from .config import GENERATOR_VERSION, PRESETS, NoiseKnobs, SceneConfig, make_config
from .generate import SceneExistsError, build_scene, generate_scene, label_frame_indices

__all__ = ["GENERATOR_VERSION", "PRESETS", "NoiseKnobs", "SceneConfig", "make_config",
           "SceneExistsError", "build_scene", "generate_scene", "label_frame_indices"]
