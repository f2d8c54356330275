"""MODEL arguments: a preset name, an IR JSON file, a model config JSON, or a model directory
(ours from `import-hf`, or a local Hugging Face one). Parameters come from a safetensors file next
to the graph when there is one, else from a seeded initialisation."""

from __future__ import annotations

from pathlib import Path

from ..ir import COMPUTE_FLOATS, Graph, IRError, PortableMoeError, from_dict, load, parse_json, read_bounded
from ..models import PRESETS, build_model, build_moe_layer, config_from_dict, init_params, load_params, preset

DTYPES = tuple(d.value for d in COMPUTE_FLOATS)     # what a model computes in; integer dtypes only index


def add_model_args(parser, layer_flag: bool = True):
    parser.add_argument("model", metavar="MODEL",
                        help=f"preset ({', '.join(PRESETS)}), IR JSON, config JSON, or a model directory")
    if layer_flag:
        parser.add_argument("--layer", action="store_true", help="only one MoE layer of the model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial parameters (default 0)")


def from_config(cfg, layer: bool, seed: int, params: bool = True):
    graph = build_moe_layer(cfg) if layer else build_model(cfg)
    return graph, init_params(graph, seed) if params else None


def params_beside(path: Path, graph: Graph, seed: int, params: bool = True) -> dict | None:
    if not params:
        return None
    for candidate in (path.with_suffix(".safetensors"), path.parent / "params.safetensors"):
        if candidate.exists():
            return load_params(candidate)
    return init_params(graph, seed)


def resolve_model(spec: str, layer: bool = False, seed: int = 0, params: bool = True) -> tuple[Graph, dict | None]:
    """The graph and, unless params is False (nothing is allocated then), its parameters."""
    if spec in PRESETS:
        return from_config(preset(spec), layer, seed, params)
    path = Path(spec)
    if path.is_dir():
        if (path / "graph.json").exists():
            graph = load(path / "graph.json")
            return graph, params_beside(path / "graph.json", graph, seed, params)
        if (path / "config.json").exists():
            from ..hf import from_hf
            imported = from_hf(path, block_only=layer)
            return imported.graph, imported.params
        raise PortableMoeError(f"directory {spec} holds neither graph.json nor a Hugging Face config.json")
    if not path.exists():
        raise PortableMoeError(f"MODEL '{spec}' is neither a preset ({', '.join(PRESETS)}) nor an existing file")
    try:
        obj = parse_json(read_bounded(path, "MODEL file"))
    except PortableMoeError as e:
        raise PortableMoeError(f"{spec}: not a readable JSON file ({e})") from None
    if isinstance(obj, dict) and "format" in obj:
        try:
            graph = from_dict(obj)
        except IRError as e:
            raise IRError(f"{spec}: {e}") from None
        return graph, params_beside(path, graph, seed, params)
    return from_config(config_from_dict(obj, spec), layer, seed, params)
