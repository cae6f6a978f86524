"""LoRA supervised fine-tuning with TRL + PEFT, on CPU or CUDA, with checkpoints and resume.

Rows are chat ``messages``. Each becomes a (prompt, completion) pair rendered exactly as the model
will be served (its chat template, or HelixNet's text format for base models), so the loss falls
on the assistant's answer only and training and inference prompts never differ.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helixloom.errors import HelixloomError
from helixloom.training.chat_template import render_prompt
from helixloom.training.configs import LoraSFTConfig
from helixloom.training.trainer import (
    TrainResult,
    load_for_training,
    lora_config,
    prepare_run_dir,
    run_trainer,
    trl_args,
)


def to_prompt_completion(
    messages_rows: Sequence[dict[str, Any]], tokenizer: Any, system_prompt: str | None
) -> list[dict[str, str]]:
    """Training rows as TRL prompt/completion pairs.

    Three row forms: chat ``messages`` (rendered the way ``helixloom.prompting`` serves them, the loss on
    the last assistant message), raw ``prompt``/``completion`` text (used as is: evaluator labels,
    loom exports) and plain ``text`` (language modelling: the loss on all of it).
    """
    eos = tokenizer.eos_token or ""
    out = []
    for i, row in enumerate(messages_rows):
        if "messages" in row:
            messages = list(row["messages"])
            if not messages or messages[-1].get("role") != "assistant":
                raise HelixloomError(f"row {i + 1}: a messages row must end with the assistant's message")
            if system_prompt and messages[0].get("role") != "system":
                messages.insert(0, {"role": "system", "content": system_prompt})
            prompt = render_prompt(tokenizer, messages[:-1])
            out.append({"prompt": prompt, "completion": messages[-1]["content"] + eos})
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


class KLAnchor:
    """A KL term to the base model on general text, added to every training step's loss.

    ``weight`` x KL(base || adapter), the mean over positions of a batch of ``texts``, the batches
    taken in turn. Replay rows (text the base model sampled, trained with cross-entropy) estimate the
    same pull back toward the base from one sampled token per position; the KL uses the base's whole
    next-token distribution at every position, so the same text holds the adapter closer for the
    same steps. The base's distribution is the same model with the adapter switched off (PEFT's
    ``disable_adapter``), so nothing is loaded twice. Written by hand: TRL's SFTTrainer has no KL
    to a reference (its GKD and DPO trainers do, for other objectives).

    Small batches (2 texts of at most 64 tokens a step) because every position costs a full
    next-token distribution (Gemma's 262k words): on the default model and one thread, 2 x 64
    positions add 2.4 s to a step (about 8 s), 4 x 72 added 5 to 10 s. The base's distributions are
    the same every epoch but computed again each step: kept, they would take about 3 GB (24 batches
    x 128 positions x 262k floats), against about 1 s a step to recompute.
    """

    def __init__(
        self,
        texts: Sequence[str],
        tokenizer: Any,
        weight: float,
        *,
        batch_size: int = 2,
        max_length: int = 64,
    ) -> None:
        if weight <= 0 or not texts:
            raise ValueError("a KL anchor needs a positive weight and some text")
        self.weight = weight
        self.batches = [
            tokenizer(
                list(texts[i : i + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            )
            for i in range(0, len(texts), batch_size)
        ]
        self.step = 0

    def loss(self, model: Any) -> Any:
        import torch

        batch = self.batches[self.step % len(self.batches)]
        self.step += 1
        ids = batch["input_ids"].to(model.device)
        mask = batch["attention_mask"].to(model.device)
        with torch.no_grad(), model.disable_adapter():
            base = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        tuned = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        per_position = (base.exp() * (base - tuned)).sum(-1)
        return self.weight * (per_position * mask).sum() / mask.sum()


def _anchored(trainer_cls: Any, anchor: KLAnchor) -> Any:
    """``trainer_cls`` whose training loss also holds ``anchor``'s KL term."""

    class Anchored(trainer_cls):
        def compute_loss(
            self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
        ) -> Any:
            out = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
            if not model.training:
                return out
            if return_outputs:
                return (out[0] + anchor.loss(model), out[1])
            return out + anchor.loss(model)

    return Anchored


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
    group_by_length: bool = False,
    anchor_texts: Sequence[str] = (),
    anchor_weight: float = 0.0,
) -> TrainResult:
    """Fine-tune a LoRA on ``rows`` and write it to ``adapter_dir`` (a PEFT folder).

    Checkpoints go to ``run_dir`` every ``save_steps``; with ``resume`` a killed run continues from
    the last complete one (same step, optimizer and data order) instead of starting over.
    ``init_adapter`` continues training an existing adapter (its rank and targets) instead of a
    fresh one. ``group_by_length`` batches rows of similar length together (transformers'
    ``LengthGroupedSampler``: random groups of about 7 batches, each group sorted by length), so a
    batch pads to its own rows' length rather than to the longest row in the data: for ``learn``'s
    mix of 90-token pairs and 300-token passage rows, a third fewer positions per epoch.
    ``anchor_texts`` with a positive ``anchor_weight`` add a KL term to the base model on that text
    (``KLAnchor``) to every step's loss.
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
    args = trl_args(
        SFTConfig,
        run_dir,
        config,
        cuda=cuda,
        max_length=config.max_length,
        completion_only_loss=True,
        packing=False,
        include_num_input_tokens_seen=True,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
    )
    trainer_cls: Any = SFTTrainer
    if anchor_weight > 0 and anchor_texts:
        trainer_cls = _anchored(SFTTrainer, KLAnchor(anchor_texts, tokenizer, anchor_weight))
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=None if init_adapter is not None else lora_config(config),
    )
    return run_trainer(trainer, tokenizer, adapter_dir, checkpoint, callbacks)
