"""The DeepSpeed JSON of a recipe, checked: problem lines with field paths, reported with the rest.

DeepSpeed ignores top-level keys it does not know (``"optimzer"`` is silently no optimiser
section) and checks the types of others late, deep inside ``deepspeed.initialize``. And
:class:`~lzn_core.train.engine.Engine` builds some things itself: torch Adam with one group
per module (so only ``optimizer.params`` betas/eps/weight_decay are read), the lr schedule
(``train.warmup`` / ``train.freeze``), the batch sizes and the clipping (``train.batch_size``,
``train.grad_clip``). :func:`deepspeed_problems` reports, as ``deepspeed.<path>: message``:

* unknown keys at the top level and in ``zero_optimization`` / ``fp16`` / ``bf16`` (with a
  did-you-mean; keys starting with ``_`` are comments);
* wrong types of the fields the project relies on (``zero_optimization.stage`` an int 0..3,
  ``fp16.enabled`` / ``bf16.enabled`` booleans, ``gradient_clipping`` a number, ...);
* settings the engine would silently override or ignore (another optimiser type, AdamW mode,
  an ``lr``, a ``scheduler``, batch sizes or clipping that disagree with ``train:``);
* half precision the LZN math cannot take: ``fp16``/``bf16`` enabled would cast the whole model
  (the solver needs float32 anchors, the EMA float32); mixed precision is ``train.precision``.

The key lists are DeepSpeed 0.19's (``deepspeed.runtime.config`` and its pydantic models).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import did_you_mean

TOP_LEVEL = frozenset(
    """activation_checkpointing aio amp autotuning bf16 bfloat16 checkpoint comet comms_logger
    communication_data_type compile compression_training csv_monitor curriculum_learning data_efficiency
    data_types dataloader_drop_last datastates_ckpt disable_allgather disable_python_gc dump_state
    eigenvalue elasticity expert_parallel flops_profiler fp16 gradient_accumulation_steps
    gradient_allreduce_op gradient_clipping gradient_predivide_factor graph_harvesting hybrid_engine
    log_level managed_gradient_accumulation memory_breakdown nebula optimizer pipeline prescale_gradients
    progressive_layer_drop quantize_training scheduler seq_parallel_communication_data_type
    sparse_attention sparse_gradients steps_per_print tensor_parallel tensorboard timers torch_autocast
    train_batch_size train_micro_batch_size_per_gpu use_data_before_expert_parallelism vocabulary_size
    wall_clock_breakdown wandb weight_quantization zero_allow_untested_optimizer
    zero_force_ds_cpu_optimizer zero_optimization""".split()
)
"""Top-level keys DeepSpeed 0.19 reads."""

ZERO = frozenset(
    """allgather_bucket_size allgather_partitions allgather_sequential compute_grad_norm
    contiguous_gradients cpu_offload cpu_offload_param cpu_offload_use_pin_memory elastic_checkpoint
    enable_sanity_checks gather_16bit_weights_on_model_save ignore_unused_parameters leaf_module
    legacy_stage1 load_from_fp32_weights log_trace_cache_warnings max_live_parameters max_reuse_distance
    memory_efficient_linear model_persistence_threshold module_granularity_threshold offload_optimizer
    offload_param overlap_comm override_module_apply param_persistence_threshold parameter_alignment
    pipeline_loading_checkpoint prefetch_bucket_size reduce_bucket_size reduce_scatter
    round_robin_gradients save_muon_momentum_buffer_in_memory stage stage3_allgather_sequential
    stage3_gather_16bit_weights_on_model_save stage3_gather_fp16_weights_on_model_save
    stage3_max_live_parameters stage3_max_reuse_distance stage3_model_persistence_threshold
    stage3_module_granularity_threshold stage3_param_persistence_threshold stage3_prefetch_bucket_size
    stage3_use_all_reduce_for_fetch_params sub_group_size use_all_reduce_for_fetch_params
    use_multi_rank_bucket_allreduce zenflow zero_hpz_partition_size zero_quantized_gradients
    zero_quantized_nontrainable_weights zero_quantized_weights""".split()
)
"""Keys of ``zero_optimization`` (DeepSpeed's ``DeepSpeedZeroConfig``, which forbids others)."""

FP16 = frozenset(
    """enabled auto_cast consecutive_hysteresis fp16_master_weights_and_grads hysteresis
    initial_scale_power loss_scale loss_scale_window min_loss_scale""".split()
)
BF16 = frozenset(
    "enabled bf16_master_weights_and_grads bf16_optimizer_states check_grad_overflow immediate_grad_update".split()
)
ADAM_PARAMS = frozenset({"betas", "eps", "weight_decay", "torch_adam", "adam_w_mode"})
"""``optimizer.params`` the engine reads (betas, eps, weight_decay) or accepts (torch Adam, not AdamW)."""

_BOOLS = {
    "wall_clock_breakdown",
    "memory_breakdown",
    "dump_state",
    "prescale_gradients",
    "sparse_gradients",
    "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer",
}
_ZERO_BOOLS = {
    "overlap_comm",
    "contiguous_gradients",
    "reduce_scatter",
    "allgather_partitions",
    "round_robin_gradients",
}
_ZERO_SIZES = {"reduce_bucket_size", "allgather_bucket_size", "prefetch_bucket_size", "sub_group_size"}


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return _is_number(value) and float(value).is_integer()


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})" if isinstance(value, str) else repr(value)


def _unknown(keys: Any, known: frozenset[str], where: str) -> list[str]:
    return [
        f"{where}.{key}: unknown key{did_you_mean(str(key), sorted(known)) or ' (not a DeepSpeed setting)'}"
        for key in keys
        if not str(key).startswith("_") and key not in known
    ]


def _section(cfg: Mapping[str, Any], key: str, problems: list[str]) -> Mapping[str, Any] | None:
    """``cfg[key]`` when it is a mapping; a problem line when it is something else."""
    value = cfg.get(key)
    if value is None or isinstance(value, Mapping):
        return value
    problems.append(f"deepspeed.{key}: must be an object (a JSON {{...}}), got {_show(value)}")
    return None


def deepspeed_problems(cfg: Mapping[str, Any], train: Any = None) -> list[str]:
    """Problem lines of a DeepSpeed config dict, paths under ``deepspeed.``.

    Args:
        cfg: the parsed DeepSpeed JSON (or the recipe's inline mapping).
        train: the recipe's ``train`` section (a ``TrainConfig`` or its mapping), to check the
            settings the engine fills from it; None skips those checks.
    """
    problems = _unknown(cfg, TOP_LEVEL, "deepspeed")
    for key in _BOOLS & set(cfg):
        if not _is_bool(cfg[key]):
            problems.append(f"deepspeed.{key}: must be true or false, got {_show(cfg[key])}")
    if "steps_per_print" in cfg and not (_is_int(cfg["steps_per_print"]) and cfg["steps_per_print"] > 0):
        problems.append(
            f"deepspeed.steps_per_print: must be a positive integer, got {_show(cfg['steps_per_print'])}"
        )

    zero = _section(cfg, "zero_optimization", problems)
    if zero is not None:
        problems += _unknown(zero, ZERO, "deepspeed.zero_optimization")
        stage = zero.get("stage", 0)
        if not (isinstance(stage, int) and not isinstance(stage, bool) and 0 <= stage <= 3):
            problems.append(f"deepspeed.zero_optimization.stage: must be an integer 0..3, got {_show(stage)}")
        for key in _ZERO_BOOLS & set(zero):
            if not _is_bool(zero[key]):
                problems.append(
                    f"deepspeed.zero_optimization.{key}: must be true or false, got {_show(zero[key])}"
                )
        for key in _ZERO_SIZES & set(zero):
            if not (_is_int(zero[key]) and zero[key] > 0):
                problems.append(
                    f"deepspeed.zero_optimization.{key}: must be a positive integer, got {_show(zero[key])}"
                )

    enabled = []
    for key, known in (("fp16", FP16), ("bf16", BF16), ("bfloat16", BF16)):
        section = _section(cfg, key, problems)
        if section is None:
            continue
        problems += _unknown(section, known, f"deepspeed.{key}")
        if "enabled" in section and not _is_bool(section["enabled"]):
            problems.append(
                f"deepspeed.{key}.enabled: must be true or false, got {_show(section['enabled'])}"
            )
        elif section.get("enabled") is True:
            enabled.append(key)
    for key in enabled:
        problems.append(
            f"deepspeed.{key}.enabled: true casts the whole model to half precision (the zoning solver "
            "takes float32 anchors, the EMA stays float32); set it false and use train.precision: bf16 "
            "(autocast around the networks only)"
        )
    autocast = cfg.get("torch_autocast")
    if isinstance(autocast, Mapping) and autocast.get("enabled") is True:
        problems.append(
            "deepspeed.torch_autocast.enabled: not used (the training script calls the networks, not "
            "the engine's forward); set train.precision: bf16 instead"
        )

    opt = _section(cfg, "optimizer", problems)
    problems += _optimizer_problems(opt) if opt is not None else []
    if "scheduler" in cfg:
        problems.append(
            "deepspeed.scheduler: not used: the engine builds the lr schedule from train.warmup and "
            "train.freeze; remove it"
        )
    return problems + _engine_fills(cfg, train)


def _optimizer_problems(opt: Mapping[str, Any]) -> list[str]:
    """``optimizer``: the engine builds torch Adam and reads only betas, eps and weight_decay."""
    out = _unknown(opt, frozenset({"type", "params"}), "deepspeed.optimizer")
    kind = opt.get("type", "Adam")
    if not isinstance(kind, str):
        out.append(f"deepspeed.optimizer.type: must be a string, got {_show(kind)}")
    elif kind.lower() != "adam":
        out.append(
            f"deepspeed.optimizer.type: {kind!r} is not used: the engine always trains with torch Adam "
            "(one group per module, rates from train.lr); set 'Adam' or remove the optimizer section"
        )
    params = opt.get("params", {})
    if not isinstance(params, Mapping):
        out.append(f"deepspeed.optimizer.params: must be an object, got {_show(params)}")
        return out
    for key in params:
        if key == "lr":
            out.append(
                "deepspeed.optimizer.params.lr: not used: learning rates come from train.lr; remove it"
            )
        elif key not in ADAM_PARAMS:
            out.append(
                f"deepspeed.optimizer.params.{key}: not used by the engine"
                f"{did_you_mean(str(key), sorted(ADAM_PARAMS)) or ' (it reads betas, eps, weight_decay)'}"
            )
    betas = params.get("betas", [0.9, 0.999])
    if not (
        isinstance(betas, (list, tuple))
        and len(betas) == 2
        and all(_is_number(b) and 0 <= b < 1 for b in betas)
    ):
        out.append(f"deepspeed.optimizer.params.betas: must be two numbers in [0, 1), got {_show(betas)}")
    if "eps" in params and not (_is_number(params["eps"]) and params["eps"] > 0):
        out.append(f"deepspeed.optimizer.params.eps: must be a positive number, got {_show(params['eps'])}")
    if "weight_decay" in params and not (_is_number(params["weight_decay"]) and params["weight_decay"] >= 0):
        out.append(
            f"deepspeed.optimizer.params.weight_decay: must be a number >= 0, got {_show(params['weight_decay'])}"
        )
    for key in ("torch_adam", "adam_w_mode"):
        if key in params and not _is_bool(params[key]):
            out.append(f"deepspeed.optimizer.params.{key}: must be true or false, got {_show(params[key])}")
    if params.get("adam_w_mode") is True:
        out.append(
            "deepspeed.optimizer.params.adam_w_mode: true is not used: the engine's torch Adam applies "
            "weight_decay as L2 (Adam, not AdamW); set it to false"
        )
    return out


def _get(train: Any, key: str) -> Any:
    return train.get(key) if isinstance(train, Mapping) else getattr(train, key, None)


def _engine_fills(cfg: Mapping[str, Any], train: Any) -> list[str]:
    """Batch sizes and clipping: set by the engine from ``train:``; a JSON value must agree."""
    out = []
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if key in cfg and not (_is_int(cfg[key]) and cfg[key] > 0):
            out.append(f"deepspeed.{key}: must be a positive integer, got {_show(cfg[key])}")
    clip: Any = cfg.get("gradient_clipping")
    if "gradient_clipping" in cfg and not (_is_number(clip) and clip >= 0):
        out.append(f"deepspeed.gradient_clipping: must be a number >= 0, got {_show(clip)}")
    if out:
        return out
    if cfg.get("gradient_accumulation_steps", 1) != 1:
        out.append(
            "deepspeed.gradient_accumulation_steps: must be 1 (every latent depends on every anchor of the "
            "global batch, so accumulated steps would change the method); set train.micro_batch_size to "
            "micro-batch the step exactly"
        )
    if train is None:
        return out
    batch, grad_clip = _get(train, "batch_size"), _get(train, "grad_clip")
    if "train_batch_size" in cfg and _is_int(batch) and cfg["train_batch_size"] != batch:
        out.append(
            f"deepspeed.train_batch_size: {cfg['train_batch_size']} disagrees with train.batch_size={batch} "
            "(the engine sets it from train.batch_size); remove it"
        )
    micro = cfg.get("train_micro_batch_size_per_gpu")
    if micro is not None and _is_int(batch) and batch % micro:
        out.append(
            f"deepspeed.train_micro_batch_size_per_gpu: {micro} does not divide train.batch_size={batch} "
            "(the engine sets it to train.batch_size / ranks); remove it"
        )
    if (
        "gradient_clipping" in cfg
        and (grad_clip is None or _is_number(grad_clip))
        and clip != float(grad_clip or 0.0)
    ):
        out.append(
            f"deepspeed.gradient_clipping: {clip} disagrees with train.grad_clip={grad_clip} "
            "(the engine sets it from train.grad_clip); remove it"
        )
    return out
