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
) -> TrainResult:
    """Fine-tune a LoRA on ``rows`` and write it to ``adapter_dir`` (a PEFT folder).

    Checkpoints go to ``run_dir`` every ``save_steps``; with ``resume`` a killed run continues from
    the last complete one (same step, optimizer and data order) instead of starting over.
    ``init_adapter`` continues training an existing adapter (its rank and targets) instead of a
    fresh one. ``group_by_length`` batches rows of similar length together (transformers'
    ``LengthGroupedSampler``: random groups of about 7 batches, each group sorted by length), so a
    batch pads to its own rows' length rather than to the longest row in the data: for ``learn``'s
    mix of 90-token pairs and 300-token passage rows, a third fewer positions per epoch.
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
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=None if init_adapter is not None else lora_config(config),
    )
    return run_trainer(trainer, tokenizer, adapter_dir, checkpoint, callbacks)
