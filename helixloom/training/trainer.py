"""The trainer toolkit every recipe shares: loading a base model for training, the LoRA and TRL
arguments, run folders with resumable checkpoints, our progress bar, and saving the adapter.

The recipes (``sft``, ``dpo``, ``reward_model``) differ only in their data and their TRL trainer;
everything around ``trainer.train()`` is here, written once.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from helixloom import atomic
from helixloom.errors import HelixloomError


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    steps: int
    resumed_from_step: int  # 0 when training started fresh
    final_loss: float | None
    changed_fraction: float  # share of trainable tensors that changed during this run
    seconds: float
    tokens: int


class Schedule(Protocol):
    """The settings every TRL run takes from a recipe's config."""

    @property
    def epochs(self) -> float: ...
    @property
    def max_steps(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def grad_accum(self) -> int: ...
    @property
    def learning_rate(self) -> float: ...
    @property
    def save_steps(self) -> int: ...
    @property
    def seed(self) -> int: ...


class LoraSettings(Protocol):
    @property
    def rank(self) -> int: ...
    @property
    def alpha(self) -> float: ...
    @property
    def dropout(self) -> float: ...
    @property
    def target_modules(self) -> tuple[str, ...]: ...


def trl_args(
    args_class: Callable[..., Any],
    run_dir: Path,
    config: Schedule,
    *,
    cuda: bool,
    scheduler: str = "cosine",
    bf16: bool | None = None,
    **recipe: Any,
) -> Any:
    """``args_class`` (TRL's ``SFTConfig``, ``DPOConfig`` or ``RewardConfig``) with the settings every
    recipe shares: checkpoints in ``run_dir`` every ``save_steps`` (the last two kept), a log line
    per step for our progress bar, no reporting, bf16 on CUDA (``bf16``: on or off as asked, the
    CPU included: ``cpu_bf16``). ``recipe`` adds the trainer's own."""
    return args_class(
        output_dir=str(run_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=scheduler,
        warmup_steps=0,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        logging_steps=1,
        report_to=[],
        seed=config.seed,
        use_cpu=not cuda,
        bf16=cuda if bf16 is None else bf16,
        gradient_checkpointing=False,
        **recipe,
    )


def cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): there a bf16 model trains about
    1.6 times as fast as fp32 (``benchmarks/learn.py``'s step on the default model, 2 cores: 6.8 s
    against 10.8), and generates about twice as fast once the output layer's input is contiguous
    (``learn_probe.fast_generation``; 2.3 times as slowly without); elsewhere bf16 is emulated and
    slower."""
    import torch

    cpu = torch.cpu
    return any(
        bool(getattr(cpu, probe, lambda: False)())
        for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )


def bf16_emulated() -> bool:
    """Whether bf16 here is emulated (no GPU, no native bf16 in the CPU): slower than fp32."""
    import torch

    return not torch.cuda.is_available() and not cpu_bf16()


def resolve_precision(precision: str) -> bool:
    """Whether ``learn`` trains in bf16 for ``precision`` ("auto": on CUDA, and on a CPU with native
    bf16, ``cpu_bf16``; "bf16": everywhere, slow where emulated; "fp32": never)."""
    import torch

    if precision == "auto":
        return bool(torch.cuda.is_available()) or cpu_bf16()
    return precision == "bf16"


def load_for_training(
    base_spec: str, init_adapter: Path | None = None, *, bf16: bool | None = None
) -> tuple[Any, Any, bool]:
    """The base model (fp32 on CPU, bf16 on CUDA; ``bf16`` chooses) and its tokenizer (pad token
    set); with ``init_adapter`` the model is a PEFT model whose trainable adapter starts from that
    one. A LoRA put on a bf16 model keeps its own weights in fp32 (PEFT's default), so only the frozen
    base is rounded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helixloom import models

    folder = models.materialize(models.resolve(base_spec))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    cuda = torch.cuda.is_available()
    half = cuda if bf16 is None else bf16
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16 if half else torch.float32)
    if init_adapter is not None:
        from peft import PeftModel

        if not (Path(init_adapter) / "adapter_config.json").is_file():
            raise HelixloomError(f"{init_adapter} is not a PEFT adapter folder")
        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)  # type: ignore[assignment]
    return model, tokenizer, cuda


def lora_config(
    config: LoraSettings, *, task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None
) -> Any:
    """PEFT's ``LoraConfig`` for ``config`` (``all-linear`` passed through as PEFT's shorthand)."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,  # type: ignore[arg-type]  # PEFT types it int; floats work
        lora_dropout=config.dropout,
        target_modules=config.target_modules[0]
        if config.target_modules == ("all-linear",)
        else list(config.target_modules),
        modules_to_save=modules_to_save,
        task_type=task_type,
    )


_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin")


def checkpoint_complete(folder: Path) -> bool:
    """Whether a Trainer checkpoint folder was written to the end: the Trainer writes the weights
    first and ``trainer_state.json`` last, so a kill in between leaves no (or no readable) state."""
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any((folder / name).is_file() for name in _WEIGHTS)


def last_complete_checkpoint(run_dir: Path) -> str | None:
    """The newest complete ``checkpoint-N`` in ``run_dir`` (None when there is none); a folder a
    kill left half-written is passed over, never resumed from."""
    found = []
    for folder in run_dir.glob("checkpoint-*"):
        m = _CHECKPOINT.fullmatch(folder.name)
        if m and folder.is_dir() and checkpoint_complete(folder):
            found.append((int(m.group(1)), folder))
    return str(max(found)[1]) if found else None


def prepare_run_dir(run_dir: Path, resume: bool) -> str | None:
    """The checkpoint to resume from (None: start fresh, old checkpoints removed)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        return last_complete_checkpoint(run_dir)
    for old in run_dir.glob("checkpoint-*"):
        shutil.rmtree(old)
    return None


def save_adapter(model: Any, tokenizer: Any, adapter_dir: Path) -> None:
    """Write the trained ``default`` adapter atomically (a frozen reference copy is not saved): the
    old adapter stays in place until the new one is complete."""
    with atomic.staged_dir(adapter_dir) as tmp:
        model.save_pretrained(str(tmp), selected_adapters=["default"])
        tokenizer.save_pretrained(str(tmp))


def use_progress_bar(trainer: Any, callbacks: Sequence[Any]) -> None:
    """Our progress bar instead of the stock log printing, then the caller's ``callbacks``."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(TrainingProgress())
    for cb in callbacks:
        trainer.add_callback(cb)


def run_trainer(
    trainer: Any, tokenizer: Any, adapter_dir: Path, checkpoint: str | None, callbacks: Sequence[Any]
) -> TrainResult:
    """Train (from ``checkpoint`` when resuming) with our progress bar, save the adapter, report."""
    use_progress_bar(trainer, callbacks)
    use_cpu_dropout(trainer.model)
    watch = _ChangeWatch()
    trainer.add_callback(watch)
    start = time.perf_counter()
    with output_layer_on_loss_tokens_only():
        output = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    trained: Any = trainer.model
    save_adapter(trained, tokenizer, adapter_dir)
    return TrainResult(
        adapter_dir=adapter_dir,
        steps=int(output.global_step),
        resumed_from_step=checkpoint_step(checkpoint),
        final_loss=final_loss(trainer),
        changed_fraction=watch.changed_fraction(trained),
        seconds=seconds,
        tokens=int(trainer.state.num_input_tokens_seen or 0),
    )


#: Whether ``run_trainer`` swaps PEFT's LoRA dropout for ``cpu_dropout`` on a CPU (benchmarks turn it off).
CPU_DROPOUT = True


def use_cpu_dropout(model: Any) -> int:
    """On a CPU, replace each LoRA dropout (``nn.Dropout`` in PEFT's ``lora_dropout``) of ``model``
    with a ``cpu_dropout`` of the same rate; returns how many were replaced (0 on a GPU)."""
    import torch

    first = next(iter(model.parameters()), None)
    if not CPU_DROPOUT or first is None or first.device.type != "cpu":
        return 0
    swapped = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for key in list(drops.keys()):
            old = drops[key]
            if type(old) is torch.nn.Dropout and 0 < old.p < 1:
                drops[key] = cpu_dropout(old.p)
                swapped += 1
    return swapped


@functools.cache
def _cpu_dropout_class() -> Any:
    import torch

    class CpuDropout(torch.nn.Module):
        """Dropout whose mask is drawn 16 bits at a time.

        On a CPU ``torch.nn.Dropout`` draws each element's mask with ``bernoulli_``, about 185 M
        draws a second on this project's 2-core machine: LoRA dropout on every adapted layer's input
        was 14% of a bf16 ``learn`` step on the default model (8% in fp32), more than the attention.
        ``torch.randint`` fills 32-bit integers five times as fast (about 1 G bytes a second), and
        each is two independent uniform 16-bit draws, so the mask costs about a quarter as much: the
        same Bernoulli mask (keep with probability 1 - p, p rounded to a multiple of 1/65536) and the
        same 1 / (1 - p) scaling as ``nn.Dropout``, from torch's own seeded generator. Written by
        hand: torch has no cheaper Bernoulli sampler on a CPU. Identity in eval mode.
        """

        def __init__(self, p: float) -> None:
            super().__init__()
            if not 0 <= p < 1:
                raise ValueError(f"dropout must be in [0, 1), not {p}")
            self.p = p
            self.threshold = -32768 + round(p * 65536)  # an int16 below this is dropped

        def forward(self, x: Any) -> Any:
            if not self.training or self.p == 0:
                return x
            n = x.numel()
            draws = torch.randint(-(2**31), 2**31, ((n + 1) // 2,), dtype=torch.int32, device=x.device)
            uniform16 = draws.view(torch.int16)[:n].view(x.shape)
            mask = (uniform16 >= self.threshold).to(x.dtype).mul_(1.0 / (1.0 - self.p))
            return x * mask

        def extra_repr(self) -> str:
            return f"p={self.p}"

    return CpuDropout


def cpu_dropout(p: float) -> Any:
    """A ``CpuDropout`` module (see ``_cpu_dropout_class``) of rate ``p``."""
    return _cpu_dropout_class()(p)


@contextmanager
def output_layer_on_loss_tokens_only() -> Iterator[None]:
    """While active, TRL's fused LM head projects only the positions that carry loss.

    TRL's SFT loss runs the output layer in tiles without building the full logits, but off CUDA it
    still scores *every* position (its reason: on Neuron a changing count of positions recompiles
    the kernel), then zeroes the prompt's. On a CPU nothing recompiles, and Gemma's 262k-word output
    layer is most of a step: scoring only the answer's tokens gives the same loss and gradients at
    2.4x the speed of a step with 200-token rows and 40-token answers (measured on the default model).
    TRL decides this through ``trl.trainer.utils._use_triton``; a test pins that the name is still
    there, so a TRL upgrade that moves it fails loudly instead of silently training slower. The
    scoring function that name's module calls is swapped too, for ``KeptProbabilities``.
    """
    from trl.trainer import utils

    trl_utils: Any = utils  # names patched for the duration, which the type checker cannot follow
    decide, score = trl_utils._use_triton, trl_utils._ChunkedLogProbFunction
    trl_utils._use_triton = lambda device: True  # only its "compact" choice reads this name
    trl_utils._ChunkedLogProbFunction = KeptProbabilities(score)  # the scoring itself, on a CPU
    try:
        yield
    finally:
        trl_utils._use_triton, trl_utils._ChunkedLogProbFunction = decide, score


#: Most bytes ``KeptProbabilities`` keeps for the backward pass; a bigger batch recomputes instead.
KEPT_PROBABILITIES_BYTES = 1 << 30


class KeptProbabilities:
    """TRL's output-layer scoring on a CPU, with two matrix products a step where TRL's has three.

    TRL's ``ChunkedLogProbFunction`` never holds the ``[positions, vocabulary]`` logits: its backward
    pass recomputes them, tile by tile, which is right on a GPU where memory is scarce and the
    product is cheap. On a CPU the product is the cost: with Gemma's 262k-word output layer the three
    products (forward, recompute, gradient) were 35% of a ``learn`` step on the default model. Only
    the answer's positions are scored (``output_layer_on_loss_tokens_only``), a few hundred a step,
    so their next-token probabilities fit in memory (about 1 MB a position in fp32): this keeps them
    from the forward pass and the backward pass is one product. A batch whose probabilities would
    take more than ``KEPT_PROBABILITIES_BYTES``, a GPU, a trained output layer, an output layer in
    another dtype than the computation's (it would be copied whole), logit soft-capping or an output
    this does not compute (``log_sum_sq_probs``) go to TRL's function unchanged.

    Same call as TRL's (``apply(hidden, weight, bias, targets, temperature, chunk_size, softcap,
    logit_scale, outputs)``) and outputs; the mean logit and top-1 carry no gradient, and a gradient
    through the entropy raises (SFT and DPO only log it; a loss on the entropy needs TRL's function).
    Written by hand: TRL has no keep-the-logits variant, and PyTorch's cross-entropy would need the
    whole batch's logits, prompt positions included.
    """

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    def apply(
        self,
        hidden: Any,
        weight: Any,
        bias: Any,
        targets: Any,
        temperature: float,
        chunk_size: int,
        softcap: float | None = None,
        logit_scale: float = 1.0,
        outputs: tuple[str, ...] = ("log_probs",),
    ) -> Any:
        import torch

        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else hidden.dtype
        size = hidden.shape[0] * weight.shape[0] * torch.empty((), dtype=dtype).element_size()
        if (
            hidden.device.type != "cpu"
            or weight.requires_grad
            or (bias is not None and bias.requires_grad)
            or softcap is not None
            or "log_sum_sq_probs" in outputs
            or weight.dtype != dtype  # a whole-vocabulary copy in another dtype: TRL converts by tiles
            or size > KEPT_PROBABILITIES_BYTES
        ):
            return self.fallback.apply(
                hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, outputs
            )
        scale = logit_scale / temperature
        return _KeptProbabilitiesFunction.apply(hidden, weight, bias, targets, scale, dtype, outputs)


def _kept_probabilities_function() -> Any:
    import torch

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(
            ctx: Any,
            hidden: Any,
            weight: Any,
            bias: Any,
            targets: Any,
            scale: float,
            dtype: Any,
            outputs: tuple[str, ...],
        ) -> Any:
            n, vocab = hidden.shape[0], weight.shape[0]
            keep = ctx.needs_input_grad[0]
            probs = torch.empty((n, vocab), dtype=dtype) if keep else None
            log_probs = torch.empty(n, dtype=torch.float32)
            entropy = torch.empty(n, dtype=torch.float32) if "entropy" in outputs else None
            mean_logits = torch.empty(n, dtype=torch.float32) if "mean_logits" in outputs else None
            is_top1 = torch.empty(n, dtype=torch.bool) if "is_top1" in outputs else None
            ctx.set_materialize_grads(False)
            step = max(1, (128 << 20) // (4 * vocab))  # about 128 MB of fp32 logits at a time
            for s in range(0, n, step):
                e = min(n, s + step)
                z = hidden[s:e].to(dtype) @ weight.T
                if bias is not None:
                    z = z + bias.to(dtype)
                z = z.float()
                if scale != 1.0:
                    z.mul_(scale)
                log_z = z.logsumexp(-1)
                target = z.gather(1, targets[s:e, None]).squeeze(1)
                log_probs[s:e] = target - log_z
                if mean_logits is not None:
                    mean_logits[s:e] = z.mean(-1)
                if is_top1 is not None:  # the first maximum, as argmax (and TRL) count a tie
                    is_top1[s:e] = z.argmax(-1) == targets[s:e]
                log_p = z.sub_(log_z[:, None])
                p = log_p.exp()
                if entropy is not None:
                    entropy[s:e] = -(p * log_p).sum(-1)
                if probs is not None:
                    probs[s:e] = p
            ctx.save_for_backward(weight, targets, probs, log_probs)
            ctx.scale, ctx.hidden_dtype = scale, hidden.dtype
            ctx.mark_non_differentiable(*(x for x in (mean_logits, is_top1) if x is not None))
            return log_probs, entropy, None, mean_logits, is_top1

        @staticmethod
        def backward(ctx: Any, grad_log_probs: Any, grad_entropy: Any, *_: Any) -> Any:
            weight, targets, probs, log_probs = ctx.saved_tensors
            if grad_entropy is not None:
                raise NotImplementedError("a loss on the entropy needs TRL's ChunkedLogProbFunction")
            if grad_log_probs is None:
                return (None,) * 7
            # d log p_t / dz_j = 1[j = t] - p_j; the probabilities become that gradient in place (a
            # second backward, retain_graph, is refused by autograd: the saved tensor changed). The
            # target's 1 - p_t comes from the fp32 log-probability: in bf16, 1 - p_t for a confident
            # target (p_t > 0.998) is mostly rounding, as TRL's function avoids too.
            grad = probs.mul_(-1.0)
            grad.scatter_(1, targets[:, None], (-torch.expm1(log_probs))[:, None].to(grad.dtype))
            grad.mul_((grad_log_probs.float() * ctx.scale)[:, None].to(grad.dtype))
            grad_hidden = (grad @ weight).to(ctx.hidden_dtype)
            return grad_hidden, None, None, None, None, None, None

    return Function


class _LazyFunction:
    """``_kept_probabilities_function()``'s class, built on first use (torch is imported lazily)."""

    cls: Any = None

    def apply(self, *args: Any) -> Any:
        if _LazyFunction.cls is None:
            _LazyFunction.cls = _kept_probabilities_function()
        return _LazyFunction.cls.apply(*args)


_KeptProbabilitiesFunction = _LazyFunction()


def checkpoint_step(checkpoint: str | None) -> int:
    """The step a run resumed from (0 when it started fresh)."""
    return int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else 0


def final_loss(trainer: Any) -> float | None:
    """The last logged training loss (None when none was logged)."""
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return float(losses[-1]) if losses else None


class TrainingProgress(TrainerCallback):
    """A training progress bar on stderr, with the latest loss."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from helixloom.jobs import progress_bar

        self.bar = progress_bar(state.max_steps, initial=state.global_step, unit="step", desc="fine-tuning")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()


class _ChangeWatch(TrainerCallback):
    """Remembers the trainable parameters at the start of training, to report how many changed."""

    def __init__(self) -> None:
        self.start: dict[str, Any] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None:
            self.start = {
                n: p.detach().clone()
                for n, p in model.named_parameters()
                if p.requires_grad and ".ref." not in n  # DPO's frozen reference copy
            }

    def changed_fraction(self, model: Any) -> float:
        import torch

        now = dict(model.named_parameters())
        if not self.start:
            return 0.0
        watched = [n for n in self.start if n in now]
        changed = sum(not torch.equal(now[n].detach(), self.start[n]) for n in watched)
        return changed / len(watched) if watched else 0.0
