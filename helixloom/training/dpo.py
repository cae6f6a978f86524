"""Direct preference optimisation of a LoRA with TRL, on CPU or CUDA, with checkpoints and resume.

Rows are ``{prompt, chosen, rejected}`` where ``prompt`` is already rendered exactly as the policy
was sampled (``helixloom.prompting.render``), so training and sampling never see different prompts.

The reference model is the policy before this training run: the base model (adapter disabled) for
a fresh LoRA, or, when ``init_adapter`` continues an existing adapter, a frozen copy of that adapter
(TRL adds it as ``ref``). In an iterative loop that makes each iteration's reference the previous
iterate, as RLHFlow's GSHF scripts do, while only one base model sits in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helixloom.errors import HelixloomError
from helixloom.training.configs import LoraDPOConfig
from helixloom.training.trainer import (
    TrainResult,
    load_for_training,
    lora_config,
    prepare_run_dir,
    run_trainer,
    trl_args,
)


def check_preference_rows(rows: Sequence[dict[str, Any]]) -> None:
    for i, row in enumerate(rows):
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(row.get(key), str):
                raise HelixloomError(f"preference row {i + 1} has no text field {key!r}", param="data")
        if row["chosen"] == row["rejected"]:
            raise HelixloomError(
                f"preference row {i + 1}: chosen and rejected are the same text", param="data"
            )


def dpo_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Preference rows as DPO's trainer reads them: the prompt exactly as it is served. TRL tokenizes
    it as the SFT trainer does (with the tokenizer's special tokens), so no BOS is added to the text:
    that gave DPO a doubled BOS that SFT and serving never see."""
    return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]


def train_dpo(
    base_spec: str,
    rows: Sequence[dict[str, Any]],
    adapter_dir: Path,
    run_dir: Path,
    config: LoraDPOConfig | None = None,
    *,
    init_adapter: Path | None = None,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train a LoRA with DPO on preference ``rows`` and write it to ``adapter_dir`` (a PEFT folder)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    config = config or LoraDPOConfig()
    if not rows:
        raise HelixloomError("no preference pairs to train on")
    check_preference_rows(rows)
    model, tokenizer, cuda = load_for_training(base_spec, init_adapter)
    data = Dataset.from_list(dpo_rows(rows))
    checkpoint = prepare_run_dir(run_dir, resume)
    args = trl_args(
        DPOConfig,
        run_dir,
        config,
        cuda=cuda,
        max_length=config.max_length,
        beta=config.beta,
        loss_type=[config.loss_type, "sft"] if config.sft_weight > 0 else [config.loss_type],
        loss_weights=[1.0, config.sft_weight] if config.sft_weight > 0 else None,
        label_smoothing=config.label_smoothing,
        include_num_input_tokens_seen=True,
        precompute_ref_log_probs=config.precompute_ref,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=None if init_adapter is not None else lora_config(config),
    )
    return run_trainer(trainer, tokenizer, adapter_dir, checkpoint, callbacks)
