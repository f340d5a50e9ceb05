"""The language-field cache (``<run>/mapping/language_field.pt``, tagged with a hash of its inputs;
docs/method.md §4.5).

The query reuses the cached field only when everything it was computed from is unchanged: the
instance features, the Gaussian positions (3D smoothing), the mapping pairs and the mapping
settings (kind, top_k, sigma, smooth_k, the MLP's settings, the seed). Changing any of them
recomputes it (and re-caches it); settings that do not change the result (chunk sizes, query-time
settings) reuse it. Reuse vs recompute is observed with a counting wrapper around the compute
function and with the file's bytes and mtime; the recomputed values are compared with a dense
kernel-regression + KNN-smoothing reference written here from the method's formula.
"""
import io
import shutil

import numpy as np
import pytest
import torch

import query
import stages.mapping as mapping_stage
from scene.language_field import from_state
from arguments import apply_overrides, read_saved_config
from preprocess.synthetic import generate_scene
from train import main as train_main

TINY = {"n_views": 8, "width": 48, "height": 36, "n_objects": 3, "n_labelled": 2, "n_points": 800}
FAST = ["--set", "rgb.iterations=30", "--set", "rgb.eval_every=0", "--set", "rgb.checkpoint_every=0",
        "--set", "rgb.densify.enabled=false", "--set", "instance.iterations=30", "--set", "instance.preview_every=0",
        "--set", "instance.checkpoint_every=0", "--set", "instance.num_samples=2048", "--set", "run.progress=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lfcache")
    generate_scene(root, "s", seed=1, preset="clean", overrides=TINY, progress=False)
    run = root / "run"
    for stage in ("rgb", "instance", "mapping"):
        assert train_main(["--stage", stage, "-s", str(root / "s"), "-m", str(run), *FAST]) == 0, stage
    return run


@pytest.fixture()
def run(trained, tmp_path):
    r = tmp_path / "run"
    shutil.copytree(trained, r)
    return r


@pytest.fixture()
def computes(monkeypatch):
    """Counts the calls of the language-field computation (the real one still runs)."""
    calls = []
    real = mapping_stage.compute_language_field

    def counting(cfg, params, pairs):
        calls.append((cfg.mapping.kind, cfg.mapping.top_k, cfg.mapping.sigma, cfg.mapping.smooth_k))
        return real(cfg, params, pairs)

    monkeypatch.setattr(mapping_stage, "compute_language_field", counting)
    return calls


def field_file(run):
    return run / "mapping" / "language_field.pt"


def snapshot(run):
    p = field_file(run)
    return p.read_bytes(), p.stat().st_mtime_ns


def cfg_of(run, *overrides):
    cfg, _ = read_saved_config(run / "config.yaml")
    return apply_overrides(cfg, list(overrides))


def model(run):
    return mapping_stage.load_instance_model(run, torch.device("cpu"))


def pairs_of(run):
    return torch.load(run / "mapping" / "pairs.pt", map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------
# dense reference of the method (docs/method.md §4.2-4.3): every Gaussian against every anchor, plain loops of
# torch ops in float64, no top-k helper, no chunks, no KD-tree. Rows whose k nearest anchors or
# k nearest Gaussians are not unique (a tie at the k-th distance: the synthetic point cloud has
# equidistant points) have more than one right answer and are left out of the comparison.
def dense_field(ins_feat, means, anchors, clips, top_k, sigma, smooth_k, tie=1e-9):
    """numpy float64; returns (field [N,C], ok [N] bool: rows with a unique answer)."""
    f = ins_feat.double().numpy()
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    a, c = anchors.double().numpy(), clips.double().numpy()
    d = 1.0 - f @ a.T                                      # [N,M] cosine distance (anchors as stored)
    k = min(top_k, a.shape[0])
    out = np.empty((f.shape[0], c.shape[1]))
    ok = np.ones(f.shape[0], bool)
    for i in range(f.shape[0]):
        order = np.argsort(d[i], kind="stable")
        ds, near = d[i][order], order[:k]                  # the k smallest distances
        ok[i] = k == len(ds) or ds[k] - ds[k - 1] > tie
        w = np.exp(-(d[i, near] ** 2) / (2 * sigma ** 2))
        v = (w / w.sum()) @ c[near]
        out[i] = v / np.linalg.norm(v)
    if smooth_k <= 1:
        return out, ok
    x = means.double().numpy()
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # [N,N]
    sm, ok_sm = np.empty_like(out), np.ones_like(ok)
    kk = min(smooth_k, x.shape[0])
    for i in range(x.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        ds, nb = dist[i][order], order[:kk]                # self included (distance 0)
        ok_sm[i] = (kk == len(ds) or ds[kk] - ds[kk - 1] > tie) and ok[nb].all()
        v = out[nb].mean(0)
        sm[i] = v / np.linalg.norm(v)
    return sm, ok_sm


def stored(run):
    """The cached field as a dense [N, C] float32 tensor."""
    return from_state(torch.load(field_file(run), weights_only=True)).dense()


def assert_field(lang, ref_ok, atol):
    ref, ok = ref_ok
    if not isinstance(lang, torch.Tensor):  # a language field (scene/language_field.py)
        lang = lang.dense()
    assert tuple(lang.shape) == ref.shape
    assert ok.mean() > 0.8, ok.mean()                      # nearly every row is unambiguous
    err = np.abs(lang.double().numpy() - ref).max(axis=1)
    assert err[ok].max() < atol, err[ok].max()


def ref_of(params, pairs, top_k, sigma, smooth_k):
    return dense_field(params["ins_feat"], params["means"], pairs["feature"], pairs["clip"], top_k, sigma, smooth_k)


def ref_cfg(params, pairs, cfg):
    m = cfg.mapping
    return ref_of(params, pairs, m.top_k, m.sigma, m.smooth_k)


def test_cached_field_is_the_method_applied_to_its_inputs(run):
    """The field the mapping stage cached is the kernel regression + 10-NN smoothing of this run's
    instance features over this run's pairs (so a reuse returns the right thing)."""
    params, pairs, cfg = model(run), pairs_of(run), cfg_of(run)
    m = cfg.mapping
    saved = torch.load(field_file(run), weights_only=True)
    assert saved["form"] == "kernel" and saved["idx"].shape[1] == m.top_k and saved["nbr"].shape[1] == m.smooth_k
    cached = from_state(saved).dense()
    assert_field(cached, ref_cfg(params, pairs, cfg), 1e-5)          # factored: float32, exact
    # and it is not the field of other settings (the comparison above can tell them apart)
    other, _ = ref_of(params, pairs, 3, m.sigma, 1)
    assert np.abs(cached.double().numpy() - other).max() > 0.05


def test_unchanged_inputs_reuse_the_cache(run, computes, capsys):
    before = snapshot(run)
    cfg, params = cfg_of(run), model(run)
    cached = stored(run)
    for _ in range(2):
        lang, d = mapping_stage.load_language_field(cfg, run, params)
        assert torch.equal(lang.dense(), cached)
        assert d == pytest.approx(float(pairs_of(run)["median_distance"]))
    assert computes == [] and snapshot(run) == before
    # through the query command as well
    assert query.main(["-m", str(run), "--query", "red apple"]) == 0
    assert "recomputing" not in capsys.readouterr().out
    assert computes == [] and snapshot(run) == before


@pytest.mark.parametrize("override", [
    "query.temperature=3.0", "query.mode=language_only", "query.score_thresh=0.7",   # query-time only
    "mapping.chunk_size=7",                                                           # memory bound, not results
    "instance.lr=0.5", "rgb.iterations=5",                                            # settings of other stages
])
def test_settings_the_field_does_not_depend_on_reuse_it(run, computes, override):
    before = snapshot(run)
    cached = stored(run)
    lang, _ = mapping_stage.load_language_field(cfg_of(run, override), run, model(run))
    assert computes == [] and snapshot(run) == before
    assert torch.equal(lang.dense(), cached)


@pytest.mark.parametrize("override, top_k, sigma, smooth_k", [
    ("mapping.top_k=3", 3, 0.1, 10),
    ("mapping.sigma=0.03", 25, 0.03, 10),
    ("mapping.smooth_k=1", 25, 0.1, 1),
    ("mapping.smooth_k=4", 25, 0.1, 4),
])
def test_changed_kernel_setting_recomputes_with_the_new_value(run, computes, override, top_k, sigma, smooth_k):
    before = snapshot(run)
    params, pairs = model(run), pairs_of(run)
    cfg = cfg_of(run, override)
    lang, _ = mapping_stage.load_language_field(cfg, run, params)
    assert len(computes) == 1                                       # recomputed ...
    data, _ = snapshot(run)
    assert data != before[0]                                        # ... and re-cached
    saved = torch.load(field_file(run), weights_only=True)
    assert saved["hash"] != torch.load(io.BytesIO(before[0]), weights_only=True)["hash"]
    ref = ref_of(params, pairs, top_k, sigma, smooth_k)
    assert_field(lang, ref, 1e-5)                                   # with the NEW setting
    assert_field(from_state(saved), ref, 1e-5)
    # the same changed setting again: the new cache is reused
    again, _ = mapping_stage.load_language_field(cfg_of(run, override), run, model(run))
    assert len(computes) == 1 and torch.equal(again.dense(), from_state(saved).dense())
    # back to the run's own settings: recomputed again, to the original field
    back, _ = mapping_stage.load_language_field(cfg_of(run), run, model(run))
    assert len(computes) == 2
    orig = torch.load(io.BytesIO(before[0]), weights_only=True)
    assert torch.load(field_file(run), weights_only=True)["hash"] == orig["hash"]
    assert (back.dense() - from_state(orig).dense()).abs().max() < 1e-6


@pytest.mark.parametrize("override", ["mapping.kind=mlp", "mapping.mlp_epochs=3", "mapping.mlp_lr=0.01",
                                      "mapping.mlp_hidden=[8, 8]", "run.seed=5"])
def test_changed_mlp_or_seed_setting_recomputes(run, computes, override):
    # the MLP settings and the seed are in the hash whatever the kind (they change an MLP field)
    before = snapshot(run)
    cfg = cfg_of(run, override, *(["mapping.mlp_epochs=3"] if override == "mapping.kind=mlp" else []))
    mapping_stage.load_language_field(cfg, run, model(run))
    assert len(computes) == 1 and snapshot(run)[0] != before[0]
    assert torch.load(field_file(run), weights_only=True)["kind"] == cfg.mapping.kind


def test_changed_instance_features_recompute(run, computes):
    params, pairs, cfg = model(run), pairs_of(run), cfg_of(run)
    before = snapshot(run)
    params["ins_feat"][0] = -params["ins_feat"][0]                  # one Gaussian's feature changed
    lang, _ = mapping_stage.load_language_field(cfg, run, params)
    assert len(computes) == 1 and snapshot(run)[0] != before[0]
    assert_field(lang, ref_cfg(params, pairs, cfg), 1e-4)            # from the changed features


def test_changed_positions_recompute(run, computes):
    params, pairs, cfg = model(run), pairs_of(run), cfg_of(run)
    params["means"] = params["means"].flip(0).contiguous()          # other neighbourhoods for the smoothing
    lang, _ = mapping_stage.load_language_field(cfg, run, params)
    assert len(computes) == 1
    assert_field(lang, ref_cfg(params, pairs, cfg), 1e-4)


@pytest.mark.parametrize("what", ["feature", "clip"])
def test_changed_pairs_recompute(run, computes, monkeypatch, what):
    """Pairs that differ from the ones the cache was made from (the loader is wrapped so that the
    run's pairs.pt, which the stage bookkeeping guards, stays as it is)."""
    real_load = mapping_stage._load

    def load(path):
        data = real_load(path)
        if path.name == "pairs.pt":
            data[what] = data[what].clone()
            data[what][0] = data[what][0].flip(0)                          # one pair changed
        return data

    monkeypatch.setattr(mapping_stage, "_load", load)
    params, cfg = model(run), cfg_of(run)
    before = snapshot(run)
    lang, _ = mapping_stage.load_language_field(cfg, run, params)
    assert len(computes) == 1 and snapshot(run)[0] != before[0]
    pairs = load(run / "mapping" / "pairs.pt")
    assert_field(lang, ref_cfg(params, pairs, cfg), 1e-4)


def test_missing_or_foreign_cache_is_recomputed(run, computes):
    params, pairs, cfg = model(run), pairs_of(run), cfg_of(run)
    ref = ref_cfg(params, pairs, cfg)
    # a field of another run (other hash, other values) put in place: never returned
    saved = torch.load(field_file(run), weights_only=True)
    torch.save({**saved, "hash": "0" * 64, "weight": torch.zeros_like(saved["weight"])}, field_file(run))
    lang, _ = mapping_stage.load_language_field(cfg, run, params)
    assert len(computes) == 1
    assert_field(lang, ref, 1e-4)
    # no cache at all: computed and written
    field_file(run).unlink()
    lang, _ = mapping_stage.load_language_field(cfg, run, params)
    assert len(computes) == 2 and field_file(run).is_file()
    assert_field(lang, ref, 1e-4)


def test_query_command_recomputes_on_a_changed_setting_and_then_reuses(run, capsys):
    before = snapshot(run)
    assert query.main(["-m", str(run), "--query", "red apple", "--set", "mapping.top_k=3"]) == 0
    assert "recomputing" in capsys.readouterr().out
    after = snapshot(run)
    assert after[0] != before[0]
    assert query.main(["-m", str(run), "--query", "red apple", "--set", "mapping.top_k=3"]) == 0
    assert "recomputing" not in capsys.readouterr().out
    assert snapshot(run) == after
