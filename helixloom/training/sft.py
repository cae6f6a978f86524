"""LoRA supervised fine-tuning with TRL + PEFT, on CPU or CUDA, with checkpoints and resume.

Rows are chat ``messages``. Each becomes a (prompt, completion) pair rendered exactly as the model
will be served (its chat template, or HelixNet's text format for base models), so the loss falls
on the assistant's answer only and training and inference prompts never differ.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
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
    same pull back toward the base from one sampled token per position; the KL uses the base's
    next-token distribution at every position, so the same text holds the adapter closer for the
    same steps. The base's distribution is the same model with the adapter switched off (PEFT's
    ``disable_adapter``), so nothing is loaded twice. Written by hand: TRL's SFTTrainer has no KL
    to a reference (its GKD and DPO trainers do, for other objectives).

    Small batches (2 texts of at most 64 tokens a step) because every position costs a next-token
    distribution over the whole vocabulary (Gemma's 262k words): on the default model and one
    thread, 2 x 64 positions added 2.4 s to a step of about 8 s when the KL ran over all of it.

    So by default (``top_k``) the KL runs over a restricted vocabulary per batch: the base's ``top_k``
    likeliest next tokens at each of the batch's positions, together with ``extra_ids`` (the tokens of
    the training answers: where fine-tuning moves probability to), both distributions renormalised
    over that set. The base's side is computed once per batch (the first time it comes round) and
    kept (a few MB), and the adapter's logits are computed for that set only, from the decoder's last
    hidden state, instead of all 262k: the full LM head's forward and backward were most of the
    term's cost (the kept base side: 2 x 64 positions x the set's size, a few MB a batch when the
    answers use a few thousand tokens). The set holds nearly all of the base's probability at every
    position; what the restricted KL cannot see (mass the adapter moves to a token neither likely
    for the base nor in the answers) the forgetting check (perplexity of other general text, whole
    vocabulary) still measures. ``top_k=None`` is the exact KL over the whole vocabulary.
    """

    def __init__(
        self,
        texts: Sequence[str],
        tokenizer: Any,
        weight: float,
        *,
        batch_size: int = 2,
        max_length: int = 64,
        top_k: int | None = 64,
        extra_ids: Iterable[int] = (),
    ) -> None:
        if weight <= 0 or not texts:
            raise ValueError("a KL anchor needs a positive weight and some text")
        if top_k is not None and top_k < 1:
            raise ValueError("top_k must be at least 1 (or None: the whole vocabulary)")
        self.weight = weight
        self.top_k = top_k
        self.extra_ids = sorted(set(extra_ids))
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
        self._base: dict[int, tuple[Any, Any]] = {}  # batch -> (token ids, base log-probs over them)
        self._exact = top_k is None  # set when the restricted path does not reproduce the model's logits

    def loss(self, model: Any) -> Any:
        import torch

        index = self.step % len(self.batches)
        batch = self.batches[index]
        self.step += 1
        ids = batch["input_ids"].to(model.device)
        mask = batch["attention_mask"].to(model.device)
        if not self._exact:
            restricted = self._restricted(model, index, ids, mask)
            if restricted is not None:
                base, tuned = restricted
                per_position = (base.exp() * (base - tuned)).sum(-1)
                return self.weight * (per_position * mask).sum() / mask.sum()
        with torch.no_grad(), model.disable_adapter():
            base = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        tuned = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        per_position = (base.exp() * (base - tuned)).sum(-1)
        return self.weight * (per_position * mask).sum() / mask.sum()

    def _restricted(self, model: Any, index: int, ids: Any, mask: Any) -> tuple[Any, Any] | None:
        """(base, adapter) log-probs over batch ``index``'s restricted vocabulary, each renormalised
        over it; None (and the exact KL from then on) when the model's logits are not its output
        embeddings applied to its decoder's last hidden state (checked on the first batch)."""
        import torch

        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        head = inner.get_output_embeddings()
        if hasattr(head, "base_layer") or any(p.requires_grad for p in head.parameters()):
            self._exact = True  # a trained LM head (a LoRA on it): its rows alone are not its logits
            return None
        cap = getattr(inner.config, "final_logit_softcapping", None)

        def logits_over(hidden: Any, tokens: Any) -> Any:
            out = hidden @ head.weight[tokens].T
            if getattr(head, "bias", None) is not None:
                out = out + head.bias[tokens]
            if cap:
                out = torch.tanh(out / cap) * cap
            return out.float()

        if index not in self._base:
            with torch.no_grad(), model.disable_adapter():
                full = model(input_ids=ids, attention_mask=mask).logits.float()
                top = full.topk(min(self.top_k or 1, full.shape[-1]), dim=-1).indices
                extra = torch.tensor(self.extra_ids, dtype=top.dtype, device=top.device)
                tokens = torch.unique(torch.cat([top.flatten(), extra[extra < full.shape[-1]]]))
                if not self._base:  # the first batch: is the short path the model's own?
                    hidden = inner.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
                    # a model that scales or caps its logits otherwise differs by far more than
                    # rounding (bf16 included: its logits are rounded to 1 part in 256)
                    want = full[..., tokens]
                    if (logits_over(hidden, tokens) - want).abs().max() > 1e-2 * want.abs().max() + 1e-4:
                        self._exact = True
                        return None
                self._base[index] = (tokens, full.log_softmax(-1)[..., tokens])
        tokens, base = self._base[index]
        base = base - base.logsumexp(-1, keepdim=True)
        hidden = inner.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        tuned = logits_over(hidden, tokens).log_softmax(-1)
        return base, tuned


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
            term = anchor.loss(model) * self._anchor_share(num_items_in_batch)
            if return_outputs:
                return (out[0] + term, out[1])
            return out + term

        def _anchor_share(self, num_items_in_batch: Any) -> float:
            # The trainer divides a micro-batch's loss by the accumulation steps unless the loss was
            # already normalised over the whole accumulated batch (num_items_in_batch, as TRL's SFT
            # loss is); then the anchor's term, a mean over its own batch, is divided here, or it
            # would count once per micro-batch (measured: --grad-accum 2 doubled its weight).
            scaled = getattr(self, "loss_is_scaled_for_ga", None)
            if scaled is None:
                scaled = (
                    getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None
                ) or getattr(self, "compute_loss_func", None) is not None
            steps = getattr(self, "current_gradient_accumulation_steps", None)
            steps = steps or self.args.gradient_accumulation_steps
            return 1.0 / steps if scaled else 1.0

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
    bf16: bool | None = None,
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
    (``KLAnchor``) to every step's loss. ``bf16`` trains on a bf16 base with bf16 autocast (None:
    on CUDA only; see ``trainer.resolve_precision``).
    """

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    config = config or LoraSFTConfig()
    if not rows:
        raise HelixloomError("no training rows")
    model, tokenizer, cuda = load_for_training(base_spec, init_adapter, bf16=bf16)
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
        bf16=bf16,
        max_length=config.max_length,
        completion_only_loss=True,
        packing=False,
        include_num_input_tokens_seen=True,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
    )
    trainer_cls: Any = SFTTrainer
    if anchor_weight > 0 and anchor_texts:
        # the answers' tokens join the anchor's restricted vocabulary: fine-tuning moves mass to them
        answers = {t for p in pairs for t in tokenizer(p["completion"], add_special_tokens=False).input_ids}
        trainer_cls = _anchored(
            SFTTrainer, KLAnchor(anchor_texts, tokenizer, anchor_weight, extra_ids=answers)
        )
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=None if init_adapter is not None else lora_config(config),
    )
    return run_trainer(trainer, tokenizer, adapter_dir, checkpoint, callbacks)
