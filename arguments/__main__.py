"""``python -m arguments --write-default`` regenerates arguments/default.yaml from the schema;
``python -m arguments [-c FILE ...] [--set k=v ...]`` prints the resolved config."""
import argparse
import sys

import yaml

from .config import DEFAULT_YAML, ConfigError, add_config_args, default_yaml_text, load_config, to_dict


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m arguments", description=__doc__)
    p.add_argument("--write-default", action="store_true", help="rewrite arguments/default.yaml from the schema")
    add_config_args(p)
    a = p.parse_args(argv)
    if a.write_default:
        DEFAULT_YAML.write_text(default_yaml_text())
        print(f"wrote {DEFAULT_YAML}")
        return 0
    try:
        cfg = load_config(a.config, a.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
