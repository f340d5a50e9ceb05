"""SAM-like 4-level masks and CLIP-like per-mask vectors in LangSplat's file format.

From the ground-truth buffers of one view (``render.ViewRender``) this builds the two arrays of
``scene.language_features`` (which paints the id maps, ``id_maps``, and writes the files):

* ``_s``: float32 ``[4, H, W]``, levels 0 default, 1 s, 2 m, 3 l; every value >= 0 is a row of
  ``_f`` (level k ids are offset by the mask counts of levels < k); -1 = no mask;
* ``_f``: float32 ``[M, 512]``, unit rows: the hash text vector of what the mask shows plus
  noise, renormalised.

What the levels show (before noise):

* l (3): whole objects;
* m (2): the object's part groups (a mug's body / handle) or the whole object if it has one;
* s (1): single parts (a chair's legs, seat, back) or, for one-part objects, top/bottom halves;
* default (0): per object, one of the three decompositions above, drawn at random;
* background regions (table, floor, wall, sky) may get masks with generic vectors.

Noise (``config.NoiseKnobs``): level-3 over-segmentation (object -> its s-level pieces) and
under-segmentation (objects touching in the image merged), missed masks, boundary dilation /
erosion, masks under a minimum area dropped, CLIP noise and confusion, misleading background
vectors. Masks are painted largest first, so later (smaller) masks overwrite earlier ones.

Failure modes of real per-mask CLIP features (each off at 0; see ``config.NoiseKnobs``), applied
to the text-side vector before the CLIP noise and the modality gap:

* ``shared_word_mix``: an object's name vector is pulled towards the words its name shares with
  other scene objects (CLIP binds attributes weakly: a green apple's crop reads as "apple");
* ``part_name_drop``: a named part's vector keeps only (1 - d) of the object name (LangSplat /
  OpenGaussian: small masks describe the part); applies to the "parts" decomposition (every s
  mask, default / over-segmented l masks that split an object into parts), not to m-level groups
  nor to the top/bottom halves of one-part objects (half an apple still reads as an apple);
* ``surface_drift``: table / floor / wall masks drift towards generic phrases (LERF / COS3D: large
  surfaces pick up relevancy for many queries);
* ``similar_confusion``: per mask and view, a single object's mask gets a look-alike's name vector
  (``look_alikes``: another scene object of the same colour key, or of the same main primitive
  kind and about the same size);
* ``crop_context``: LangSplat embeds the mask's bounding-box crop, so the vector leaks towards what
  else the box covers (``_crop_mix``). LangSplat blacks out the pixels outside the mask, but the
  imprecise boundary, the silhouette and the padding still carry context; the knob is the leak
  strength (1 = an unmasked box crop), not a property of one pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from scene.encoders import HashTextEncoder, tokenize
from scene.language_features import LEVEL_INDEX, LEVELS, id_maps

from .config import NoiseKnobs
from .layout import REGION_NAMES, SyntheticLayout
from .render import ViewRender

GENERIC = "object"
LEVEL_S, LEVEL_M, LEVEL_L = LEVEL_INDEX["s"], LEVEL_INDEX["m"], LEVEL_INDEX["l"]


@dataclass
class VectorBank:
    """Unit float64 vectors [*, dim] for every phrase a mask can show."""
    obj: np.ndarray        # [n_obj, dim] object names
    word: dict             # part / half word -> [dim]
    region: dict           # region id -> [dim] ("table", "floor", "wall", "sky")
    generic: np.ndarray    # [dim] "object"
    name_words: list = field(default_factory=list)  # per object: {word: [dim]} of the words its name
                                                    # shares with another scene object's name

    @staticmethod
    def build(layout: SyntheticLayout, encoder: HashTextEncoder) -> "VectorBank":
        words = sorted(set(layout.part_words) | {"top", "bottom"})
        wv = encoder.encode_numpy(words)
        rv = encoder.encode_numpy([REGION_NAMES[r] for r in sorted(REGION_NAMES)])
        toks = [tokenize(o.name) for o in layout.objects]
        shared = [sorted({w for w in t if any(w in u for j, u in enumerate(toks) if j != i)})
                  for i, t in enumerate(toks)]
        return VectorBank(encoder.encode_numpy([o.name for o in layout.objects]),
                          dict(zip(words, wv)), dict(zip(sorted(REGION_NAMES), rv)),
                          encoder.encode_numpy([GENERIC])[0],
                          [dict(zip(sh, encoder.encode_numpy(sh))) if sh else {} for sh in shared])

    def seen_names(self, mix: float) -> np.ndarray:
        """[n_obj, dim] object vectors as an image crop shows them: unit((1 - b) * name + b *
        unit(sum of the shared words)) for names sharing words (``noise.shared_word_mix`` = b)."""
        if mix == 0:
            return self.obj
        out = self.obj.copy()
        for o, ws in enumerate(self.name_words):
            if ws:
                out[o] = _unit((1 - mix) * self.obj[o] + mix * _unit(sum(ws.values())))
        return out

    def drift_target(self) -> np.ndarray:
        """The generic direction large surfaces drift to: unit(unit(mean object name) + "object")."""
        return _unit(_unit(self.obj.mean(0)) + self.generic)


def _unit(v):
    return v / np.linalg.norm(v)


def image_gap_direction(dim: int) -> np.ndarray:
    """The fixed unit "image modality" direction (the same for every scene and seed)."""
    return _unit(np.random.default_rng(0x1A6E).standard_normal(dim))


def to_image_space(v: np.ndarray, c: float) -> np.ndarray:
    """unit(c * unit(v) + sqrt(1 - c^2) * gap): a CLIP-like image embedding of text-side vector(s) ``v``
    [..., dim] whose cosine with the text vector is ~c (the modality gap of real CLIP)."""
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    out = c * v + np.sqrt(max(1.0 - c * c, 0.0)) * image_gap_direction(v.shape[-1])
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


def _pieces(o, kind, view, layout):
    """List of (pixel mask [H,W] bool, part words) of object ``o`` for a decomposition kind:
    'whole', 'groups' (m), 'parts' (s)."""
    on = view.obj == o
    pids = layout.objects[o].part_ids
    if kind == "whole":
        return [(on, ())]
    if kind == "groups":
        groups = sorted({layout.part_groups[p] for p in pids})
        if len(groups) < 2:
            return [(on, ())]
        out = []
        for g in groups:
            ps = [p for p in pids if layout.part_groups[p] == g]
            out.append((np.isin(view.part, ps), tuple(sorted({layout.part_words[p] for p in ps}))))
        return out
    if len(pids) >= 2:  # parts
        return [(view.part == p, (layout.part_words[p],)) for p in pids]
    return [(on & view.upper, ("top",)), (on & ~view.upper, ("bottom",))]


def _adjacent_pairs(obj: np.ndarray) -> set:
    """Pairs (a<b) of object ids with 4-neighbouring pixels in ``obj`` [H,W]."""
    pairs = set()
    for a, b in ((obj[:, 1:], obj[:, :-1]), (obj[1:, :], obj[:-1, :])):
        m = (a != b) & (a >= 0) & (b >= 0)
        for x, y in zip(a[m].tolist(), b[m].tolist()):
            pairs.add((min(x, y), max(x, y)))
    return pairs


def _jitter(mask: np.ndarray, k: int) -> np.ndarray:
    if k == 0:
        return mask
    ker = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(k) + 1, 2 * abs(k) + 1))
    op = cv2.dilate if k > 0 else cv2.erode
    return op(mask.astype(np.uint8), ker) > 0


LOOK_ALIKE_SIZE = 1.5  # footprints within this factor count as "the same size"


def look_alikes(layout: SyntheticLayout) -> list[list[int]]:
    """Per object, the other scene objects that look like it: the same colour key, or the same main
    primitive kind at about the same size (``SceneObject.color`` / ``.shape`` / ``.footprint``)."""
    objs = layout.objects

    def alike(a, b):
        size = max(a.footprint, b.footprint) <= LOOK_ALIKE_SIZE * min(a.footprint, b.footprint)
        return a.color == b.color or (a.shape == b.shape and size)

    return [[k for k, b in enumerate(objs) if k != o and alike(a, b)] for o, a in enumerate(objs)]


def _crop_mix(pix, v, view, names, bank, a):
    """``crop_context``: unit((1 - a * f_out) * v + a * sum_k c_k * vec_k) over the mask's bounding
    box, c_k = fraction of the box's pixels that show object / region k outside the mask (the mask's
    own object counts too: a handle's box shows the mug), f_out = sum_k c_k."""
    ys, xs = np.flatnonzero(pix.any(1)), np.flatnonzero(pix.any(0))
    box = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    out, obj, reg = ~pix[box], view.obj[box], view.region[box]
    n = out.size
    co = np.bincount(obj[out & (obj >= 0)], minlength=len(names)) / n
    mix = co @ names
    for r, rv in bank.region.items():
        mix = mix + (np.count_nonzero(out & (obj < 0) & (reg == r)) / n) * rv
    f_out = np.count_nonzero(out) / n
    return _unit((1 - a * f_out) * v + a * mix)


class _Decisions:
    """Seeded generators for the segmentation decisions: one stream per (object or pair, level),
    keyed by the view only when ``per_view`` (so decisions are view-consistent otherwise)."""

    def __init__(self, seed: int, view: int, per_view: bool):
        self.base = [int(seed), 0x5A, (view + 1) if per_view else 0]

    def rng(self, *key) -> np.random.Generator:
        # SeedSequence pads entropy with zeros ([1, 2] == [1, 2, 0]), so keys end in a non-zero
        # length marker to keep keys of different lengths apart
        return np.random.default_rng(self.base + [int(k) for k in key] + [len(key) + 1])


def build_language_features(view: ViewRender, layout: SyntheticLayout, bank: VectorBank,
                            knobs: NoiseKnobs, seed: int, view_index: int, min_area: int
                            ) -> tuple[np.ndarray, np.ndarray]:
    """The ``_s`` [4,H,W] float32 and ``_f`` [M,dim] float32 arrays of one view.

    Deterministic in (seed, view_index) and independent of the order views are processed in."""
    H, W = view.obj.shape
    dim = bank.generic.shape[0]
    dec = _Decisions(seed, view_index, knobs.per_view)
    noise_rng = np.random.default_rng([int(seed), 0x6B, int(view_index)])
    names = bank.seen_names(knobs.shared_word_mix)      # == bank.obj while shared_word_mix is 0
    similar = look_alikes(layout) if knobs.similar_confusion > 0 else None
    drift = bank.drift_target() if knobs.surface_drift > 0 else None
    n_obj = len(layout.objects)
    area = np.bincount(view.obj[view.obj >= 0].ravel(), minlength=n_obj)
    visible = [o for o in range(n_obj) if area[o] >= min_area]
    adj = {p for p in _adjacent_pairs(view.obj) if p[0] in visible and p[1] in visible}
    neighbours = {o: sorted({b if a == o else a for a, b in adj if o in (a, b)}) for o in visible}

    # level-3 under-segmentation: union-find over touching pairs
    parent = {o: o for o in visible}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in sorted(adj):
        if dec.rng(1, a, b).random() < knobs.under_seg:
            parent[find(b)] = find(a)
    merged = {}
    for o in visible:
        merged.setdefault(find(o), []).append(o)

    rows: list[np.ndarray] = []

    def level_masks():
        """Per level, the kept masks' pixels in painting order (largest first); their vectors go
        to ``rows``. A generator, so only one level's masks are held at a time."""
        for level in range(len(LEVELS)):
            masks = []  # (pixels, base vector, owner objects (for confusion), decision slot)
            for o in visible:
                r = dec.rng(2, o, level)
                if level == LEVEL_L:
                    group = merged[find(o)]
                    if len(group) > 1:
                        if o == group[0]:
                            pix = np.isin(view.obj, group)
                            masks.append((pix, _unit(names[group].sum(0)), group, (1000 + o, 0)))
                        continue
                    kind = "parts" if r.random() < knobs.over_seg else "whole"
                elif level == LEVEL_M:
                    kind = "groups"
                elif level == LEVEL_S:
                    kind = "parts"
                else:
                    kind = ("whole", "groups", "parts")[r.integers(3)]
                for k, (pix, words) in enumerate(_pieces(o, kind, view, layout)):
                    v = names[o]
                    if words:
                        named_part = kind == "parts" and words[0] not in ("top", "bottom")
                        if knobs.part_name_drop > 0 and named_part:
                            v = (1 - knobs.part_name_drop) * v
                        v = _unit(v + knobs.part_weight * _unit(sum(bank.word[w] for w in words)))
                    masks.append((pix, v, [o], (o, k)))
            for reg in sorted(REGION_NAMES):
                pix = view.region == reg
                if pix.sum() < min_area:
                    continue
                r = dec.rng(3, reg, level)
                if r.random() >= knobs.background_masks:
                    continue
                v = bank.region[reg]
                if visible and r.random() < knobs.background_misleading:
                    v = names[visible[r.integers(len(visible))]]
                elif drift is not None and REGION_NAMES[reg] in ("table", "floor", "wall"):
                    v = _unit((1 - knobs.surface_drift) * v + knobs.surface_drift * drift)
                masks.append((pix, v, [], (2000 + reg, 0)))
            # per-mask noise: miss, boundary jitter, minimum area, CLIP confusion + noise
            kept = []
            for j, (pix, v, owners, slot) in enumerate(masks):
                r = dec.rng(4, level, *slot)
                u_miss, k, u_conf, u_kind = r.random(), int(r.integers(-knobs.boundary_jitter,
                                                                     knobs.boundary_jitter + 1)), r.random(), r.random()
                if u_miss < knobs.miss:
                    continue
                pix = _jitter(pix, k)
                a = int(pix.sum())
                if a < min_area:
                    continue
                if owners and u_conf < knobs.clip_confusion:
                    nb = sorted({n for o in owners for n in neighbours.get(o, []) if n not in owners})
                    if u_kind < 0.5 and nb:
                        v = names[nb[int(u_kind * 2 * len(nb)) % len(nb)]]
                    else:
                        v = bank.generic
                elif similar is not None and len(owners) == 1 and similar[owners[0]]:
                    # its own stream, keyed by the view even when not per_view: the swap is view-dependent
                    sr = np.random.default_rng([int(seed), 0x7C, int(view_index), level, *slot])
                    if sr.random() < knobs.similar_confusion:
                        sim = similar[owners[0]]
                        v = names[sim[int(sr.integers(len(sim)))]]
                if knobs.crop_context > 0:
                    v = _crop_mix(pix, v, view, names, bank, knobs.crop_context)
                kept.append((a, j, pix, v))
            kept.sort(key=lambda x: (-x[0], x[1]))
            for _, _, _, v in kept:
                if knobs.clip_noise > 0:
                    v = v + knobs.clip_noise * noise_rng.standard_normal(dim) / np.sqrt(dim)
                rows.append(to_image_space(v, knobs.image_text_cos))
            yield [pix for _, _, pix, _ in kept]

    s_out, _ = id_maps(level_masks(), H, W)
    f = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    return s_out, f
