"""`build()`: a Hugging Face causal LM -> TensorRT prefill and decode engines, a JSON manifest, and a disk cache.

model -> prepare (dtype, our attention function) -> export per step -> canonicalize/match/fuse -> KV-cache pass
-> [partition] -> FX-to-network conversion -> one optimization profile per engine -> serialized engine files.
Both steps take `input_ids`/`position_ids` [B, S], `cache_lengths` [B] and per-layer `k_cache_i`/`v_cache_i`
[B, Hkv, max_seq_len, D]; they return `logits` and the updated caches `k_cache_i_out`/`v_cache_i_out`, which
alias the cache inputs (TensorRT updates them in place). Prefill takes up to `max_num_tokens` tokens per sequence,
decode one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.fx

from trtllm_compile.parallel.config import TensorParallelConfig
from trtllm_compile.quantization.config import QuantConfig
from trtllm_compile.report import CompileReport, Fallback
from trtllm_compile.tensorrt import trt as flavour
from trtllm_compile.tensorrt.cache import MANIFEST, EngineCache, cache_key, load_timing_cache, save_timing_cache
from trtllm_compile.tensorrt.network import convert_graph, unsupported_error, unsupported_nodes
from trtllm_compile.tensorrt.partition import partition as split_graph
from trtllm_compile.tensorrt.progress import progress_monitor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildSettings:
    max_batch_size: int = 8
    max_seq_len: int = 512
    max_num_tokens: int | None = None  # prefill tokens per sequence; defaults to max_seq_len
    dtype: torch.dtype = torch.float16
    target_sm: str | None = flavour.DEFAULT_SM
    refittable: bool = False
    partition: bool = False
    tensor_parallel: TensorParallelConfig | None = None  # one rank's shard: part of the cache key

    def __post_init__(self):
        if self.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"dtype must be float16, bfloat16 or float32, got {self.dtype}")
        if min(self.max_batch_size, self.max_seq_len, self.prefill_tokens) < 1:
            raise ValueError("max_batch_size, max_seq_len and max_num_tokens must be positive")

    @property
    def prefill_tokens(self) -> int:
        return min(self.max_num_tokens or self.max_seq_len, self.max_seq_len)

    def as_dict(self) -> dict:
        return {**asdict(self), "dtype": str(self.dtype).removeprefix("torch."), "max_num_tokens": self.prefill_tokens}


@dataclass
class EngineInfo:
    step: str
    path: Path
    inputs: list[dict]
    outputs: list[dict]
    layer_counts: dict[str, int]
    num_bytes: int


@dataclass
class BuildResult:
    engines: dict[str, EngineInfo]
    layer_counts: dict[str, int]
    cache_hit: bool
    cache_key: str
    manifest: dict
    manifest_path: Path
    report: CompileReport | None = None
    torch_nodes: list[dict] = field(default_factory=list)  # nodes left in PyTorch by partition=True
    seconds: float = 0.0
    model: torch.nn.Module | None = field(default=None, repr=False)  # what `refit` re-captures new weights with

    @property
    def directory(self) -> Path:
        return self.manifest_path.parent

    def summary(self) -> str:
        origin = "from the engine cache" if self.cache_hit else f"built in {self.seconds:.1f}s"
        lines = [f"TensorRT engines ({self.manifest['tensorrt']}, {origin}) in {self.directory}"]
        for name, engine in self.engines.items():
            lines.append(f"  {name:<10} {engine.path.name}  {engine.num_bytes / 2**20:.1f} MiB")
        lines.append("  layers: " + ", ".join(f"{kind} {n}" for kind, n in sorted(self.layer_counts.items())))
        if self.torch_nodes:
            lines.append(f"  {len(self.torch_nodes)} node(s) run in PyTorch between engines:")
            lines += [f"    {n['step']}: %{n['name']} ({n['op']}): {n['reason']}" for n in self.torch_nodes[:10]]
        return "\n".join(lines)


def _load_default_model():
    from trtllm_compile import load_default_model

    return load_default_model()


def build(
    model: torch.nn.Module | None = None,
    *,
    max_batch_size: int = 8,
    max_seq_len: int = 512,
    max_num_tokens: int | None = None,
    dtype: torch.dtype = torch.float16,
    target_sm: str | None = flavour.DEFAULT_SM,
    refittable: bool = False,
    cache_dir=None,
    out_dir=None,
    partition: bool = False,
    tensor_parallel: TensorParallelConfig | None = None,
    tokenizer=None,
    progress: bool = True,
    quantization: QuantConfig | None = None,
) -> BuildResult:
    """Build (or fetch from the engine cache) the prefill and decode engines of `model` (default: SmolLM2-135M).

    `max_num_tokens` bounds the prefill's tokens per sequence (default and at most `max_seq_len`, the KV cache
    capacity); `target_sm` names the compute capability tensorrt_rtx compiles for (the full package builds for the
    local GPU); `partition=True` leaves ops without a converter in PyTorch between engines instead of raising;
    `out_dir` also places the files there (hard links). The engines hold the weights as constants.
    A calibrated `quantization` (`QuantConfig.from_name(fmt).with_calibration(...)`) stores the GEMM weights
    quantized (Q/DQ layers, see tensorrt/converters/quant.py).
    `tensor_parallel` builds one rank's engines (see `tensorrt.parallel.build_rank_engines` for every rank).
    """
    flavour.require_trt()
    if model is None:
        model, tokenizer = _load_default_model()
    settings = BuildSettings(
        max_batch_size, max_seq_len, max_num_tokens, dtype, target_sm, refittable, partition, tensor_parallel
    )
    start = time.perf_counter()
    cache = EngineCache(cache_dir)
    key = cache_key(model, {**settings.as_dict(), **_quantization_key(quantization)}, flavour.version())
    manifest = cache.lookup(key)
    cache_hit = manifest is not None
    if cache_hit:
        logger.info("engine cache hit %s", key)
        directory = cache.entry(key)
        report = None
    else:
        directory, manifest, report = _build_into_cache(model, settings, cache, key, tokenizer, progress, quantization)
    if out_dir is not None:
        directory = _copy_out(directory, Path(out_dir))
    result = _result(directory, manifest, cache_hit, key, report, time.perf_counter() - start)
    result.model = model
    logger.info("%s", result.summary())
    return result


def _build_into_cache(
    model, settings: BuildSettings, cache: EngineCache, key: str, tokenizer, progress: bool, quantization=None
):
    from trtllm_compile.tensorrt.export import export_step_graph

    if settings.refittable and flavour.IS_RTX and not torch.cuda.is_available():
        raise RuntimeError(
            f"{flavour.FLAVOUR} compiles refittable engines on the GPU (its compiler checks refittable weights on the "
            "device): build with refittable=False here, or on a machine with a GPU"
        )
    logger.info("exporting %s and building its engines", type(model).__name__)
    staging = cache.staging()
    try:
        graph = export_step_graph(
            model,
            settings.dtype,
            settings.max_batch_size,
            settings.max_seq_len,
            settings.prefill_tokens,
            tensor_parallel=settings.tensor_parallel,
            quantization=quantization,
        )
        engines, torch_nodes, weights = {}, [], set()
        for step, specialize in (("prefill", {}), ("decode", {graph.token_symbol: 1})):
            for info, nodes, names in _build_step(step, graph, specialize, settings, cache, staging, progress):
                engines[info.step] = info
                torch_nodes += nodes
                weights |= names
        report = graph.report
        report.fallbacks += [Fallback(n["name"], n["op"], "tensorrt", n["reason"]) for n in torch_nodes]
        manifest = _manifest(model, settings, engines, torch_nodes, sorted(weights), tokenizer is not None)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging / "tokenizer")
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return cache.commit(staging, key), manifest, report


def _quantization_key(quantization: QuantConfig | None) -> dict:
    """What of `quantization` decides the engines (a cache-key part): its options and a digest of its calibration."""
    if quantization is None:
        return {}
    calibration = hashlib.sha256(pickle.dumps(quantization.calibration)).hexdigest()[:16]
    return {"quantization": {**quantization.to_json(), "calibration": calibration}}


def _build_step(step: str, graph, specialize: dict, settings: BuildSettings, cache, directory: Path, progress: bool):
    """Yield (EngineInfo, torch nodes, weight names) per engine of one step (several when partitioned)."""
    gm = graph.graph_module
    bounds = symbol_bounds(graph, settings)
    build_one = functools.partial(
        _build_engine,
        specialize=specialize,
        bounds=bounds,
        settings=settings,
        cache=cache,
        directory=directory,
        progress=progress,
    )
    if not settings.partition:
        problems = unsupported_nodes(gm)
        if problems:
            raise unsupported_error(gm, problems)
        info, weights = build_one(step, gm, {}, _output_names(gm))
        yield info, [], weights
        return
    split = split_graph(gm)
    torch_nodes = [asdict(n) | {"step": step} for n in split.torch_nodes]
    for i, piece in enumerate(split.pieces):
        name = f"{step}.{piece.name}" if len(split.pieces) > 1 or split.torch_nodes else step
        info, weights = build_one(name, piece.graph_module, piece.constants, None)
        yield info, torch_nodes if i == 0 else [], weights


def _build_engine(name, gm, constants, output_names, *, specialize, bounds, settings, cache, directory, progress):
    trt = flavour.require_trt()
    builder = trt.Builder(flavour.trt_logger())
    network = builder.create_network(flavour.network_flags())
    converted = convert_graph(gm, network, output_names, constants, specialize)
    config = builder.create_builder_config()
    flavour.set_compute_target(config, settings.target_sm)
    if settings.refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    if flavour.has_timing_cache():
        load_timing_cache(config, cache.timing_cache_path)
    monitor = progress_monitor(f"building {name}") if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    profile = builder.create_optimization_profile()
    inputs = []
    for input_name, sizes in converted.dynamic_inputs.items():
        shapes = [[_bound(s, bounds)[k] for s in sizes] for k in range(3)]
        profile.set_shape(input_name, *shapes)
        tensor = next(
            network.get_input(i) for i in range(network.num_inputs) if network.get_input(i).name == input_name
        )
        inputs.append({"name": input_name, "dtype": tensor.dtype.name, "shape": list(tensor.shape), "profile": shapes})
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(
            f"TensorRT could not build the {name} engine; its log (logger 'trtllm_compile.tensorrt') says why"
        )
    if flavour.has_timing_cache():
        save_timing_cache(config, cache.timing_cache_path)
    path = directory / f"{name}.engine"
    path.write_bytes(serialized)
    outputs = []
    for i in range(network.num_outputs):
        tensor = network.get_output(i)
        entry = {"name": tensor.name, "dtype": tensor.dtype.name, "shape": list(tensor.shape)}
        if tensor.name.removesuffix("_out") in converted.dynamic_inputs and tensor.name.endswith("_out"):
            entry["aliases"] = tensor.name.removesuffix("_out")  # updated in place: bind the input's memory
        outputs.append(entry)
    info = EngineInfo(name, path, inputs, outputs, converted.layer_counts(), path.stat().st_size)
    return info, set(converted.context.named_weights)


def _output_names(gm: torch.fx.GraphModule) -> list[str]:
    """ "logits", then `<cache input>_out` for each updated KV cache (the runtime binds it to the input)."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    results = output.args[0] if isinstance(output.args[0], tuple | list) else (output.args[0],)
    names = []
    for i, result in enumerate(results):
        source = result.args[0] if result.op == "call_function" and result.args else None
        if isinstance(source, torch.fx.Node) and source.meta.get("kv_cache"):
            names.append(f"{source.name}_out")
        else:
            names.append("logits" if i == 0 else f"output_{i}")
    return names


def symbol_bounds(graph, settings: BuildSettings) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of each symbolic size: batch and prefill length from the settings, others from export."""
    bounds = {}
    for node in graph.graph_module.graph.nodes:
        if node.op != "placeholder":
            continue
        for size in node.meta["val"].shape:
            if isinstance(size, torch.SymInt):
                upper = int(size.node.shape_env.var_to_range[size.node.expr].upper)
                bounds[str(size.node.expr)] = (1, upper, upper)
    bounds[graph.batch_symbol] = (1, settings.max_batch_size, settings.max_batch_size)
    bounds[graph.token_symbol] = (1, max(1, settings.prefill_tokens // 2), settings.prefill_tokens)
    return bounds


def _bound(size, bounds) -> tuple[int, int, int]:
    if isinstance(size, int):
        return (size, size, size)
    key = str(size)
    if key not in bounds:
        raise ValueError(f"no profile bounds for the symbolic size {key}")
    return bounds[key]


def _manifest(model, settings: BuildSettings, engines, torch_nodes, weights, has_tokenizer: bool) -> dict:
    config = getattr(model, "config", None)
    return {
        "model": getattr(config, "name_or_path", None) or type(model).__name__,
        "architecture": type(model).__name__,
        "settings": settings.as_dict(),
        "tensorrt": flavour.version(),
        "engines": {
            name: {
                "file": info.path.name,
                "bytes": info.num_bytes,
                "inputs": info.inputs,
                "outputs": info.outputs,
                "layer_counts": info.layer_counts,
            }
            for name, info in engines.items()
        },
        "layer_counts": _sum_counts(info.layer_counts for info in engines.values()),
        "torch_nodes": torch_nodes,
        "refittable_weights": weights if settings.refittable else [],
        "tokenizer": "tokenizer" if has_tokenizer else None,
    }


def _sum_counts(counts) -> dict[str, int]:
    total: dict[str, int] = {}
    for layer_counts in counts:
        for kind, n in layer_counts.items():
            total[kind] = total.get(kind, 0) + n
    return dict(sorted(total.items()))


def _copy_out(directory: Path, out_dir: Path) -> Path:
    """The cache entry's files in `out_dir`: hard links where the file system allows (engines are large)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in directory.iterdir():
        target = out_dir / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
            continue
        target.unlink(missing_ok=True)
        try:
            os.link(item, target)
        except OSError:
            shutil.copy2(item, target)
    return out_dir


def _result(directory: Path, manifest: dict, cache_hit: bool, key: str, report, seconds: float) -> BuildResult:
    engines = {
        name: EngineInfo(name, directory / e["file"], e["inputs"], e["outputs"], e["layer_counts"], e["bytes"])
        for name, e in manifest["engines"].items()
    }
    return BuildResult(
        engines,
        manifest["layer_counts"],
        cache_hit,
        key,
        manifest,
        directory / MANIFEST,
        report,
        manifest["torch_nodes"],
        seconds,
    )


def load(directory) -> BuildResult:
    """The BuildResult of engines written before (an `out_dir` or a cache entry)."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    return _result(directory, manifest, True, directory.name, None, 0.0)
