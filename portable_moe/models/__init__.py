"""Model configs, presets and IR builders."""

from .builder import build_model, build_moe_layer, expert_ffn_graph
from .config import PRESETS, ConfigError, MoEConfig, config_from_dict, load_config, preset
from .params import ParamsError, check_params, init_params, load_params, save_params

__all__ = ["PRESETS", "ConfigError", "MoEConfig", "ParamsError", "build_model", "build_moe_layer", "check_params",
           "expert_ffn_graph", "config_from_dict", "init_params", "load_config", "load_params", "preset", "save_params"]
