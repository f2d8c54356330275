"""The ONNX Runtime backend: a graph is exported to standard ONNX (portable_moe.ir.onnx) and run by
onnxruntime with the execution provider that serves the device (CPU, CUDA/TensorRT, ROCm/MIGraphX,
OpenVINO/DirectML, CoreML). Parameters become initializers, so onnxruntime folds the weight
transposes and slices once; the session is rebuilt only when a parameter tensor changes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ...ir import ALL_OPS, DType, Graph
from ...ir.arrays import to_numpy
from ...ir.onnx.export import export, save
from ..base import Backend, BackendError, BackendOptions, Executable, Support, write_manifest
from ..cache import safe_name
from ..devices import Device
from .convert import param_key, to_torch
from .providers import available_providers, choose, provider_options

LARGE_MODEL_BYTES = 1 << 30
DTYPES = frozenset({DType.float32, DType.float16})


@dataclass(frozen=True)
class OrtOptions(BackendOptions):
    threads: int = 0                   # intra-op threads; 0 lets onnxruntime decide
    params_as_inputs: bool = False     # feed weights per call instead of baking them into the session
    optimization: str = "all"          # none | basic | extended | all

    def __post_init__(self):
        super().__post_init__()
        if self.optimization not in ("none", "basic", "extended", "all"):
            raise BackendError(f"option optimization={self.optimization!r}: use none, basic, extended or all")


def session_options(options: OrtOptions):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = options.threads
    so.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[options.optimization]
    return so


class OrtExecutable(Executable):
    differentiable = False

    def __init__(self, graph: Graph, device: Device, providers: list[str], options: OrtOptions):
        super().__init__(graph, device)
        self.providers, self.options = providers, options
        self._session, self._key, self._held = None, None, []
        if options.params_as_inputs:
            self._session = self._make_session(export(graph, params_as_inputs=True))

    def _model_source(self, model) -> bytes | str:
        """The serialized model, or past protobuf's 2 GiB limit a file with external data in the cache."""
        weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
        if weight_bytes < LARGE_MODEL_BYTES:
            return model.SerializeToString()
        cache = self.options.cache_root("onnxruntime")
        path = cache / f"{safe_name(self.graph.name)}-{id(self)}" / "model.onnx"
        return str(save(model, path, external_data=True))

    def _make_session(self, model):
        import onnxruntime as ort

        try:
            return ort.InferenceSession(self._model_source(model), session_options(self.options),
                                        providers=self.providers,
                                        provider_options=provider_options(self.providers, self.device))
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise BackendError(f"onnxruntime could not build a session for '{self.graph.name}': {e}") from None

    def session_for(self, params: Mapping):
        if self.options.params_as_inputs:
            return self._session
        key = param_key(params, self.graph.param_names())
        if key != self._key:
            arrays = {n: to_numpy(params[n]) for n in self.graph.param_names()}
            self._session, self._key = self._make_session(export(self.graph, arrays)), key
            self._held = [params[n] for n in self.graph.param_names()]   # keeps ids in the key unique
        return self._session

    def run(self, inputs: Mapping, params: Mapping) -> list:
        missing = [v.name for v in self.graph.inputs if v.name not in inputs]
        if missing:
            raise BackendError(f"onnxruntime: missing graph input(s) {missing} for '{self.graph.name}'")
        feed = {v.name: to_numpy(inputs[v.name]) for v in self.graph.inputs}
        if self.options.params_as_inputs:
            feed.update((n, to_numpy(params[n])) for n in self.graph.param_names())
        try:
            outs = self.session_for(params).run(None, feed)
        except BackendError:
            raise
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"onnxruntime failed running '{self.graph.name}': {e}") from None
        return [to_torch(o, self.device.torch_device) for o in outs]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    Options = OrtOptions
    targets = ("onnx",)

    def availability(self, device: Device) -> str | None:
        available = available_providers()
        if isinstance(available, str):
            return available
        chosen = choose(device, available)
        return chosen if isinstance(chosen, str) else None

    def support(self, device: Device) -> Support:
        declined = {"float64": "float64 is the reference's oracle precision; onnxruntime's float64 kernels "
                               "(e.g. Gelu, ~1e-9 relative) are not bit-faithful, use the reference backend",
                    "bfloat16": "onnxruntime's CPU and GPU kernels lack bfloat16 Gemm/TopK; use float32",
                    "float8_e4m3fn": "fp8 compute is not defined in the IR yet",
                    "float8_e4m3fnuz": "fp8 compute is not defined in the IR yet"}
        return Support({op: DTYPES for op in ALL_OPS}, declined)

    def compile(self, graph: Graph, device: Device, options: BackendOptions) -> Executable:
        self.require_supported(graph, device)
        reason = self.availability(device)
        if reason:
            raise BackendError(reason)
        return OrtExecutable(graph, device, choose(device, available_providers()), OrtOptions.of(options))

    def lower(self, graph: Graph, target: str, out_dir: Path, options: BackendOptions) -> dict:
        """One ONNX file with the weights as model inputs (no parameters are given to lower)."""
        self.check_target(target)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save(export(graph, params_as_inputs=True), out_dir / "model.onnx")
        kernels = [{"kernel": "graph", "op": "graph", "artifacts": {"onnx": "model.onnx"}}]
        return write_manifest(out_dir, self.name, target, graph, kernels,
                              inputs=[v.name for v in graph.inputs + graph.params])
