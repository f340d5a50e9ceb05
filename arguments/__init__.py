"""Typed configuration: the schema (``schema.py``), YAML loading/merging (``config.py``)."""
from .config import (ConfigError, apply_argfiles, apply_overrides, add_config_args, default_yaml_text, load_config, read_saved_config,
                     save_config, to_dict)
from .schema import Config

__all__ = ["Config", "ConfigError", "apply_argfiles", "apply_overrides", "add_config_args", "default_yaml_text", "load_config",
           "read_saved_config", "save_config", "to_dict"]
