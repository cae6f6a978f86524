"""LoRA supervised fine-tuning with TRL + PEFT, on CPU or CUDA, with checkpoints and resume.

Rows are chat ``messages``. Each becomes a (prompt, completion) pair rendered exactly as the model
will be served (its chat template, or HelixNet's text format for base models), so the loss falls
on the assistant's answer only and training and inference prompts never differ.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from helixloom.errors import HelixloomError
from helixloom.training.configs import LoraSFTConfig


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    steps: int
    resumed_from_step: int  # 0 when training started fresh
    final_loss: float | None
    changed_fraction: float  # share of trainable tensors that changed during this run
    seconds: float
    tokens: int


OnLog = Callable[[dict[str, float]], None]


def to_prompt_completion(
    messages_rows: Sequence[dict[str, Any]], tokenizer: Any, system_prompt: str | None
) -> list[dict[str, str]]:
    """Training rows as TRL prompt/completion pairs.

    Three row forms: chat ``messages`` (rendered the way ``helixloom.prompting`` serves them, the loss on
    the last assistant message), raw ``prompt``/``completion`` text (used as is: evaluator labels,
    loom exports) and plain ``text`` (language modelling: the loss on all of it).
    """
    from helixloom.prompting import render_with

    def template(msgs: Any) -> str:
        return str(tokenizer.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=True))

    eos = tokenizer.eos_token or ""
    out = []
    for i, row in enumerate(messages_rows):
        if "messages" in row:
            messages = list(row["messages"])
            if not messages or messages[-1].get("role") != "assistant":
                raise HelixloomError(f"row {i + 1}: a messages row must end with the assistant's message")
            if system_prompt and messages[0].get("role") != "system":
                messages.insert(0, {"role": "system", "content": system_prompt})
            rendered = render_with(template if tokenizer.chat_template else None, messages[:-1])
            out.append({"prompt": rendered.prompt, "completion": messages[-1]["content"] + eos})
        elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
            out.append({"prompt": row["prompt"], "completion": row["completion"] + eos})
        elif isinstance(row.get("text"), str):
            out.append({"prompt": "", "completion": row["text"] + eos})
        else:
            raise HelixloomError(
                f"row {i + 1}: expected 'messages', 'prompt' + 'completion', or 'text'",
                param="data",
            )
    return out


def load_for_training(base_spec: str, init_adapter: Path | None = None) -> tuple[Any, Any, bool]:
    """The base model (fp32 on CPU, bf16 on CUDA) and its tokenizer (pad token set); with
    ``init_adapter`` the model is a PEFT model whose trainable adapter starts from that one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helixloom import models

    folder = models.materialize(models.resolve(base_spec))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16 if cuda else torch.float32)
    if init_adapter is not None:
        from peft import PeftModel

        if not (Path(init_adapter) / "adapter_config.json").is_file():
            raise HelixloomError(f"{init_adapter} is not a PEFT adapter folder")
        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)  # type: ignore[assignment]
    return model, tokenizer, cuda


def lora_config(config: LoraSFTConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,  # type: ignore[arg-type]  # PEFT types it int; floats work
        lora_dropout=config.dropout,
        target_modules=config.target_modules[0]
        if config.target_modules == ("all-linear",)
        else list(config.target_modules),
        task_type="CAUSAL_LM",
    )


def prepare_run_dir(run_dir: Path, resume: bool) -> str | None:
    """The checkpoint to resume from (None: start fresh, old checkpoints removed)."""
    from transformers.trainer_utils import get_last_checkpoint

    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        return get_last_checkpoint(str(run_dir))
    for old in run_dir.glob("checkpoint-*"):
        shutil.rmtree(old)
    return None


def save_adapter(model: Any, tokenizer: Any, adapter_dir: Path) -> None:
    """Write the trained ``default`` adapter atomically (a frozen reference copy is not saved)."""
    tmp = adapter_dir.with_name(adapter_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), selected_adapters=["default"])
    tokenizer.save_pretrained(str(tmp))
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    os.replace(tmp, adapter_dir)


def quiet_trainer(trainer: Any, callbacks: Sequence[Any]) -> _ChangeWatch:
    """Our progress bar instead of the stock log printing; returns the parameter-change watch."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_Progress())
    watch = _ChangeWatch()
    trainer.add_callback(watch)
    for cb in callbacks:
        trainer.add_callback(cb)
    return watch


def train_lora(
    base_spec: str,
    rows: Sequence[dict[str, Any]],
    adapter_dir: Path,
    run_dir: Path,
    config: LoraSFTConfig | None = None,
    *,
    system_prompt: str | None = None,
    resume: bool = False,
    init_adapter: Path | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Fine-tune a LoRA on ``rows`` and write it to ``adapter_dir`` (a PEFT folder).

    Checkpoints go to ``run_dir`` every ``save_steps``; with ``resume`` a killed run continues from
    the last one (same step, optimizer and data order) instead of starting over. ``init_adapter``
    continues training an existing adapter (its rank and targets) instead of a fresh one.
    """

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    config = config or LoraSFTConfig()
    if not rows:
        raise HelixloomError("no training rows")
    model, tokenizer, cuda = load_for_training(base_spec, init_adapter)
    pairs = to_prompt_completion(rows, tokenizer, system_prompt)
    # A row whose prompt alone fills max_length leaves no answer to learn from: say so, clearly.
    too_long = sum(len(tokenizer(p["prompt"]).input_ids) >= config.max_length for p in pairs)
    if too_long == len(pairs):
        raise HelixloomError(
            f"every training example's prompt is {config.max_length} tokens or longer",
            "raise --max-length (the model's context allows more) or shorten the system prompt",
        )
    if too_long:
        print(
            f"helixloom: {too_long} of {len(pairs)} examples do not fit max_length and are cut",
            file=sys.stderr,
        )
    data = Dataset.from_list(pairs)
    checkpoint = prepare_run_dir(run_dir, resume)
    args = SFTConfig(
        output_dir=str(run_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        max_length=config.max_length,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        logging_steps=1,
        report_to=[],
        seed=config.seed,
        use_cpu=not cuda,
        bf16=cuda,
        gradient_checkpointing=False,
        completion_only_loss=True,
        packing=False,
        include_num_input_tokens_seen=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=None if init_adapter is not None else lora_config(config),
    )
    return run_trainer(trainer, tokenizer, adapter_dir, checkpoint, callbacks)


def run_trainer(
    trainer: Any, tokenizer: Any, adapter_dir: Path, checkpoint: str | None, callbacks: Sequence[Any]
) -> TrainResult:
    """Train (from ``checkpoint`` when resuming) with our progress bar, save the adapter, report."""
    import time

    watch = quiet_trainer(trainer, callbacks)
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    trained: Any = trainer.model
    save_adapter(trained, tokenizer, adapter_dir)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    resumed = int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else 0
    return TrainResult(
        adapter_dir=adapter_dir,
        steps=int(output.global_step),
        resumed_from_step=resumed,
        final_loss=float(losses[-1]) if losses else None,
        changed_fraction=watch.changed_fraction(trained),
        seconds=seconds,
        tokens=int(trainer.state.num_input_tokens_seen or 0),
    )


class _Progress(TrainerCallback):
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
