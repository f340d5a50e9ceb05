"""Config: defaults file in sync with the schema, partial overrides, --set, errors, round trip."""
import dataclasses
import re

import pytest
import yaml

from arguments import Config, ConfigError, default_yaml_text, load_config, read_saved_config, save_config
from arguments.config import DEFAULT_YAML, to_dict


def test_default_yaml_is_generated_from_schema():
    assert DEFAULT_YAML.read_text() == default_yaml_text(), "run `python -m arguments --write-default`"
    assert yaml.safe_load(DEFAULT_YAML.read_text()) == to_dict(Config())


def test_every_field_has_a_comment():
    for line in DEFAULT_YAML.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "  # " in line and line.split("  # ", 1)[1].strip(), line


def test_partial_argfile_keeps_other_keys(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("rgb:\n  iterations: 123\n  densify:\n    refine_every: 7\n")
    cfg = load_config([f])
    assert cfg.rgb.iterations == 123 and cfg.rgb.densify.refine_every == 7
    d = Config()
    assert cfg.rgb.sh0_lr == d.rgb.sh0_lr and cfg.rgb.densify.prune_opa == d.rgb.densify.prune_opa


def test_set_overrides_after_argfiles(tmp_path):
    f1, f2 = tmp_path / "a.yaml", tmp_path / "b.yaml"
    f1.write_text("rgb: {iterations: 10, lambda_dssim: 0.5}\n")
    f2.write_text("rgb: {iterations: 20}\n")
    cfg = load_config([f1, f2], ["rgb.iterations=30", "renderer.far=1e10", "run.device=cpu"])
    assert cfg.rgb.iterations == 30 and cfg.rgb.lambda_dssim == 0.5
    assert cfg.renderer.far == 1e10 and cfg.run.device == "cpu"
    cfg = load_config([], ["rgb.lambda_dssim=1"])  # an int is a valid float
    assert isinstance(cfg.rgb.lambda_dssim, float) and cfg.rgb.lambda_dssim == 1.0


@pytest.mark.parametrize("override, needle", [
    ("rgb.iteratons=5", "unknown key 'iteratons'"),
    ("nosection.x=1", "unknown section 'nosection'"),
    ("rgb.iterations=abc", "expected an integer"),
    ("rgb.iterations=1.5", "expected an integer"),
    ("rgb.densify.enabled=3", "expected true/false"),
    ("rgb.densify=3", "expected a mapping"),
    ("iterations", "expected section.key=value"),
])
def test_bad_overrides(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_config([], [override])


def test_bad_argfiles_name_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("rgb:\n  iterations: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config([f])
    f.write_text("rgb:\n  sh_degree: three\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: rgb.sh_degree: expected an integer"):
        load_config([f])
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config([tmp_path / "missing.yaml"])


def test_save_and_parse_back(tmp_path):
    cfg = load_config([], ["rgb.iterations=77", "data.source_path=/x/y"])
    save_config(cfg, tmp_path / "config.yaml", meta={"git": "abc", "argfiles": []})
    back, meta = read_saved_config(tmp_path / "config.yaml")
    assert dataclasses.asdict(back) == dataclasses.asdict(cfg) and meta["git"] == "abc"


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested dict -> {"section.key[.sub]": value} (lists stay values)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# What each ablation's hypothesis changes, written here by hand from the README's table and each
# file's comment (paper Tab. 1 / inference-scheme / training-scheme rows and our own ablations).
# Exactly these keys, to exactly these values; nothing else.
ABLATIONS = {
    "feature_dim_8.yaml": {"instance.feature_dim": 8},
    "feature_dim_32.yaml": {"instance.feature_dim": 32},
    "instance_3k.yaml": {"instance.iterations": 3000},
    "instance_only.yaml": {"query.mode": "instance_only"},
    "instance_seed.yaml": {"query.mode": "instance_seed"},
    "language_only.yaml": {"query.mode": "language_only"},
    "mlp_mapping.yaml": {"mapping.kind": "mlp"},
    "no_3d_smoothing.yaml": {"mapping.smooth_k": 1},
    # the SAM level supervises the field AND forms the mapping pairs (the two must agree)
    "sam_level_0.yaml": {"instance.sam_level": 0, "mapping.sam_level": 0},
    "sam_level_1.yaml": {"instance.sam_level": 1, "mapping.sam_level": 1},
    "sam_level_2.yaml": {"instance.sam_level": 2, "mapping.sam_level": 2},
}
# The paper / official-code defaults the ablations move away from (independent of the schema).
PAPER_DEFAULTS = {"instance.feature_dim": 16, "instance.iterations": 30000, "query.mode": "collaborative",
                  "mapping.kind": "kernel", "mapping.smooth_k": 10, "instance.sam_level": 3,
                  "mapping.sam_level": 3}
# Other shipped argument files: lerf_openclip changes the text encoder only; synthetic_cpu only
# shortens schedules (iteration counts and the periods tied to them), it never changes the method.
OTHER_FILES = {"lerf_openclip.yaml": {"query.text_encoder": "openclip"},
               "cos3d_plus.yaml": {"query.connect_radius": 3.0, "query.mask_coverage_min": 0.5},
               "scannet.yaml": {"data.resolution": 2, "rgb.freeze_means": True, "rgb.densify.enabled": False,
                                "instance.sam_level": 0, "mapping.sam_level": 0}}
SCHEDULE_KEYS = {"rgb.iterations", "rgb.sh_degree_interval", "rgb.eval_every", "rgb.checkpoint_every",
                 "rgb.densify.refine_start_iter", "rgb.densify.refine_stop_iter", "rgb.densify.refine_every",
                 "rgb.densify.reset_every", "instance.iterations", "instance.preview_every",
                 "instance.checkpoint_every"}


def _check_argfile(path, expected: dict) -> None:
    """The file names exactly ``expected``'s keys, and loading it changes exactly those keys of the
    resolved config, to exactly those values."""
    named = _flat(yaml.safe_load(path.read_text()) or {})
    assert set(named) == set(expected), f"{path.name} sets {sorted(named)}, its hypothesis names {sorted(expected)}"
    base = _flat(to_dict(Config()))
    got = _flat(to_dict(load_config([path])))
    changed = {k: got[k] for k in got if got[k] != base[k]}
    assert changed == expected, f"{path.name}: changes {changed}, expected {expected}"


def test_ablation_table_covers_every_ablation_file():
    shipped = {f.name for f in (DEFAULT_YAML.parent / "ablations").glob("*.yaml")}
    assert shipped == set(ABLATIONS), (sorted(shipped ^ set(ABLATIONS)), "update ABLATIONS for new/removed files")
    others = {f.name for f in DEFAULT_YAML.parent.glob("*.yaml")} - {DEFAULT_YAML.name}
    assert others == set(OTHER_FILES) | {"synthetic_cpu.yaml"}, sorted(others)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_each_ablation_changes_exactly_its_hypothesis_key(name):
    expected = ABLATIONS[name]
    base = _flat(to_dict(Config()))
    for k in expected:  # the ablation moves away from the paper's value, which the schema defaults to
        assert base[k] == PAPER_DEFAULTS[k], (k, base[k])
    _check_argfile(DEFAULT_YAML.parent / "ablations" / name, expected)


@pytest.mark.parametrize("name", sorted(OTHER_FILES))
def test_other_argument_files_change_exactly_their_key(name):
    _check_argfile(DEFAULT_YAML.parent / name, OTHER_FILES[name])


def test_synthetic_cpu_file_only_shortens_schedules():
    path = DEFAULT_YAML.parent / "synthetic_cpu.yaml"
    named = set(_flat(yaml.safe_load(path.read_text())))
    assert named <= SCHEDULE_KEYS, sorted(named - SCHEDULE_KEYS)
    cfg, d = load_config([path]), Config()
    assert cfg.rgb.iterations < d.rgb.iterations and cfg.instance.iterations < d.instance.iterations
    # the periods keep their order inside the shorter schedule
    den = cfg.rgb.densify
    assert den.refine_start_iter < den.refine_stop_iter <= cfg.rgb.iterations
    assert den.reset_every <= den.refine_stop_iter


@pytest.mark.parametrize("text, expected", [
    ("mapping:\n  smooth_k: 1\n", None),                                  # the right key: passes
    ("mapping:\n  top_k: 1\n", "sets ['mapping.top_k']"),                 # a different key
    # an extra key set to its default value (the resolved config alone would not show it)
    ("mapping:\n  smooth_k: 1\n  sigma: 0.1\n", "sets ['mapping.sigma', 'mapping.smooth_k']"),
    ("mapping:\n  smooth_k: 10\n", "changes {}"),                         # the right key, the default value
    ("mapping:\n  smooth_k: 2\n", "changes {'mapping.smooth_k': 2}"),    # the right key, another value
])
def test_the_check_refuses_a_file_that_sets_another_key(tmp_path, text, expected):
    f = tmp_path / "no_3d_smoothing.yaml"
    f.write_text(text)
    if expected is None:
        _check_argfile(f, ABLATIONS["no_3d_smoothing.yaml"])
    else:
        with pytest.raises(AssertionError, match=re.escape(expected)):
            _check_argfile(f, ABLATIONS["no_3d_smoothing.yaml"])
