"""A reward model trained on preference pairs: TRL's ``RewardTrainer`` with a LoRA, as a ``Reward``.

The model is the base LM as ``AutoModelForSequenceClassification`` with one output (a linear
``score`` head read at the last token), trained with the Bradley-Terry loss ``-log sigmoid(r+ - r-)``
on ``{prompt, chosen, rejected}`` rows. Only a LoRA and the score head are trained; the saved folder
is a PEFT adapter (the head rides along as ``modules_to_save``) plus ``helixloom_reward.json``.

Training and scoring render a pair the same way, through one function (``encode``): plain text rows
as ``prompt + response`` followed by EOS, chat rows (lists of messages) through the tokenizer's chat
template. The rendering used is recorded in the folder, so ``RewardModelReward.score(prompt, response)``
reads the text exactly as the model was trained on it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from helixloom.errors import HelixloomError
from helixloom.rewards import Reward
from helixloom.training.preferences import Render, pair_accuracy, preference_pairs, split_indices

META_FILE = "helixloom_reward.json"


# ---------------------------------------------------------------------------------------------- shared


def rewards_dir() -> Path:
    """Where named trained rewards live: ``HELIXLOOM_HOME/rewards``."""
    from helixloom import paths

    return paths.home() / "rewards"


def reward_dir(name: str) -> Path:
    """The folder of the trained reward ``name`` (checked to be a plain name)."""
    from helixloom.paths import check_name

    return rewards_dir() / check_name(name, "reward name")


def portable_spec(spec: str) -> str:
    """A base-model spec that still names the same model from another working directory."""
    from helixloom import models

    source = models.resolve(spec)
    return source.location if source.kind in ("hf_dir", "gguf") else source.spec


def read_meta(folder: Path, kind: str) -> dict[str, Any]:
    """The ``helixloom_reward.json`` of a trained reward folder, checked to be of ``kind``."""
    meta_file = folder / META_FILE
    if not meta_file.is_file():
        raise HelixloomError(
            f"{folder} is not a trained reward (no {META_FILE})",
            "train one with `helixloom train reward` or `helixloom train reward-head`",
        )
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HelixloomError(f"{meta_file} is not JSON: {exc.msg}") from exc
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        found = meta.get("kind") if isinstance(meta, dict) else None
        prefix = {"reward_model": "rm", "reward_head": "head"}.get(str(found), "")
        hint = f"load it as {prefix}:{folder.name}" if prefix else None
        raise HelixloomError(f"{folder} holds a {found or 'unknown reward'}, not a {kind}", hint)
    return meta


# ---------------------------------------------------------------------------------------------- encoding


def encode(
    tokenizer: Any,
    prompt: str | list[dict[str, str]],
    response: str | list[dict[str, str]],
    render: Render,
    max_length: int,
) -> list[int]:
    """Token ids of one (prompt, response) as the reward model reads it.

    ``text``: ``prompt + response`` then EOS (TRL's rendering of standard preference rows). ``chat``:
    the conversation through the chat template (string prompts become the user's message). Over
    ``max_length`` the first token (BOS) and the end are kept: the score is read at the last token.
    """
    if render == "chat":
        from helixloom.training.chat_template import apply_chat_template

        msgs = (
            list(prompt)
            if isinstance(prompt, list)
            else ([{"role": "user", "content": prompt}] if prompt else [])
        )
        msgs += list(response) if isinstance(response, list) else [{"role": "assistant", "content": response}]
        text = apply_chat_template(tokenizer, msgs, add_generation_prompt=False)
        eos = ""
    else:
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise HelixloomError("this reward model reads plain text: prompt and response must be strings")
        text = prompt + response
        eos = tokenizer.eos_token or ""
    bos = tokenizer.bos_token
    ids = list(tokenizer(text, add_special_tokens=not (bos and text.startswith(bos))).input_ids)
    if eos and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(int(tokenizer.eos_token_id))
    if len(ids) > max_length:
        ids = ids[:1] + ids[len(ids) - max_length + 1 :]
    return ids


def score_ids(model: Any, batch: Sequence[list[int]], pad_id: int, batch_size: int = 8) -> list[float]:
    """Scores of token-id sequences, right-padded as in training (the head reads the last real token)."""
    import torch

    device = next(model.parameters()).device
    out: list[float] = [0.0] * len(batch)
    order = sorted(range(len(batch)), key=lambda i: len(batch[i]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(batch[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, i in enumerate(chunk):
                ids[r, : len(batch[i])] = torch.tensor(batch[i])
                mask[r, : len(batch[i])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            for i, value in zip(chunk, logits[:, 0].float().cpu().tolist(), strict=True):
                out[i] = float(value)
    return out


# ---------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class RewardModelConfig:
    """Reward-model training settings; each field is a flag of ``helixloom train reward``."""

    rank: int = field(default=16, metadata={"help": "LoRA rank r"})
    alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)"})
    dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    target_modules: tuple[str, ...] = field(
        default=("all-linear",), metadata={"help": "modules to adapt; all-linear means every linear layer"}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "peak learning rate (linear decay)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the pairs"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1: epochs)"})
    max_length: int = field(default=1024, metadata={"help": "longest prompt + response in tokens"})
    batch_size: int = field(default=4, metadata={"help": "pairs per step"})
    grad_accum: int = field(default=1, metadata={"help": "steps accumulated per optimizer step"})
    save_steps: int = field(default=50, metadata={"help": "checkpoint every this many steps (resume point)"})
    eval_split: float = field(
        default=0.0, metadata={"help": "share of pairs held out to measure accuracy (0: none)"}
    )
    center_rewards: float = field(
        default=0.01, metadata={"help": "weight of the penalty keeping rewards near 0 (TRL's recommendation)"}
    )
    render: str = field(
        default="auto",
        metadata={"help": "auto, text (prompt + response) or chat (the tokenizer's chat template)"},
    )
    seed: int = field(default=0, metadata={"help": "seed for initialisation, data order and the split"})

    def __post_init__(self) -> None:
        for name in ("rank", "alpha", "learning_rate", "epochs", "max_length", "batch_size", "grad_accum"):
            if not getattr(self, name) > 0:
                raise HelixloomError(f"{name} must be positive", param=name)
        if self.save_steps <= 0:
            raise HelixloomError("save_steps must be positive", param="save_steps")
        if not 0 <= self.dropout < 1:
            raise HelixloomError("dropout must be in [0, 1)", param="dropout")
        if not 0 <= self.eval_split < 1:
            raise HelixloomError("eval_split must be in [0, 1)", param="eval_split")
        if self.center_rewards < 0:
            raise HelixloomError("center_rewards must not be negative", param="center_rewards")
        if self.render not in ("auto", "text", "chat"):
            raise HelixloomError("render must be auto, text or chat", param="render")
        if not self.target_modules:
            raise HelixloomError("target_modules is empty", param="target_modules")

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: str(f.metadata.get("help", "")) for f in fields(cls)}


@dataclass(frozen=True)
class RewardModelResult:
    folder: Path
    steps: int
    resumed_from_step: int  # 0 when training started fresh
    final_loss: float | None
    train_pairs: int
    eval_pairs: int
    eval_accuracy: float | None  # share of held-out pairs ranked right; None without a split
    seconds: float


def train_reward_model(
    base_spec: str,
    rows: Sequence[Any],
    out_dir: Path,
    run_dir: Path,
    config: RewardModelConfig | None = None,
    *,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
) -> RewardModelResult:
    """Train a LoRA reward model on preference ``rows`` and write it to ``out_dir``.

    Checkpoints go to ``run_dir`` every ``save_steps``; with ``resume`` a killed run continues from
    the last one. The folder appears only when complete (written aside, then moved into place).
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    from helixloom import atomic, models
    from helixloom.store.records import utc_now
    from helixloom.training.trainer import (
        checkpoint_step,
        final_loss,
        lora_config,
        prepare_run_dir,
        trl_args,
        use_progress_bar,
    )

    config = config or RewardModelConfig()
    pairs, detected = preference_pairs(rows)
    if config.render == "text" and detected == "chat":
        raise HelixloomError("render text needs string rows; these rows are chat messages", param="render")
    render: Render = "chat" if config.render == "chat" else detected
    train_idx, eval_idx = split_indices(len(pairs), config.eval_split, config.seed)
    if len(train_idx) < 2:
        raise HelixloomError(
            f"too few preference pairs to train on: {len(train_idx)} (of {len(pairs)} usable)",
            "give at least 2 pairs for training, more for a useful model",
        )
    source = models.resolve(base_spec)
    folder = models.materialize(source)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if render == "chat" and not tokenizer.chat_template:
        raise HelixloomError(f"{base_spec} has no chat template for chat-message rows", "use text rows")
    cuda = torch.cuda.is_available()
    with suppress_seqcls_warning():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=1, dtype=torch.bfloat16 if cuda else torch.float32
        )
    model.config.pad_token_id = tokenizer.pad_token_id

    def encoded(indices: list[int]) -> list[dict[str, list[int]]]:
        return [
            {
                "chosen_ids": encode(tokenizer, pairs[i].prompt, pairs[i].chosen, render, config.max_length),
                "rejected_ids": encode(
                    tokenizer, pairs[i].prompt, pairs[i].rejected, render, config.max_length
                ),
            }
            for i in indices
        ]

    train_rows, eval_rows = encoded(train_idx), encoded(eval_idx)
    checkpoint = prepare_run_dir(run_dir, resume)
    args = trl_args(
        RewardConfig,
        run_dir,
        config,
        cuda=cuda,
        scheduler="linear",
        max_length=None,  # encode() already fitted every sequence to config.max_length
        center_rewards_coefficient=config.center_rewards or None,
        data_seed=config.seed,
        disable_tqdm=True,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        processing_class=tokenizer,
        peft_config=lora_config(config, task_type="SEQ_CLS", modules_to_save=["score"]),
    )
    use_progress_bar(trainer, callbacks)
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    trained: Any = trainer.model
    trained.eval()
    accuracy = None
    if eval_rows:
        pad = int(tokenizer.pad_token_id)
        accuracy = pair_accuracy(
            score_ids(trained, [r["chosen_ids"] for r in eval_rows], pad, config.batch_size),
            score_ids(trained, [r["rejected_ids"] for r in eval_rows], pad, config.batch_size),
        )
    loss = final_loss(trainer)
    meta = {
        "kind": "reward_model",
        "format": 1,
        "base_model": portable_spec(base_spec),
        "base_name": source.name,
        "render": render,
        "max_length": config.max_length,
        "train_pairs": len(train_rows),
        "eval_pairs": len(eval_rows),
        "eval_accuracy": accuracy,
        "steps": int(output.global_step),
        "final_loss": loss,
        "config": {f.name: getattr(config, f.name) for f in fields(config)},
        "created_at": utc_now(),
    }
    with atomic.staged_dir(out_dir) as tmp:
        trained.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return RewardModelResult(
        folder=out_dir,
        steps=int(output.global_step),
        resumed_from_step=checkpoint_step(checkpoint),
        final_loss=loss,
        train_pairs=len(train_rows),
        eval_pairs=len(eval_rows),
        eval_accuracy=accuracy,
        seconds=seconds,
    )


# ---------------------------------------------------------------------------------------------- scoring


class RewardModelReward(Reward):
    """A trained reward model: the base model with the LoRA merged in and the score head on top."""

    def __init__(self, model: Any, tokenizer: Any, meta: dict[str, Any], *, name: str, batch_size: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta
        self.name = name
        self.batch_size = batch_size
        self.render: Render = "chat" if meta.get("render") == "chat" else "text"
        self.max_length = int(meta.get("max_length") or 1024)

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> RewardModelReward:
        """Load a folder written by ``train_reward_model`` (its base model comes from the meta)."""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from helixloom import models

        folder = Path(path)
        meta = read_meta(folder, "reward_model")
        base = models.materialize(models.resolve(str(meta["base_model"])))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        hf_logging.disable_progress_bar()
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "score.weight newly initialized": the adapter brings it
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(base), num_labels=1, dtype=torch.bfloat16 if device == "cuda" else torch.float32
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
        try:
            peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise HelixloomError(
                f"reward model {folder} does not fit its base {meta['base_model']}: {exc}"
            ) from exc
        merged = peft_model.merge_and_unload().to(device).eval()
        return cls(merged, tokenizer, meta, name=f"rm:{folder.name}")

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise HelixloomError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return []
        ids = [
            encode(self.tokenizer, p, r, self.render, self.max_length)
            for p, r in zip(prompts, responses, strict=True)
        ]
        return score_ids(self.model, ids, int(self.tokenizer.pad_token_id), self.batch_size)
