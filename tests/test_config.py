"""Config: defaults file in sync with the schema, partial overrides, --set, errors, round trip."""
import dataclasses

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


def test_every_shipped_argument_file_loads_and_changes_something():
    files = sorted(DEFAULT_YAML.parent.glob("*.yaml")) + sorted(DEFAULT_YAML.parent.glob("ablations/*.yaml"))
    files = [f for f in files if f != DEFAULT_YAML]
    assert len(files) >= 12
    base = to_dict(Config())
    for f in files:
        assert to_dict(load_config([f])) != base, f
