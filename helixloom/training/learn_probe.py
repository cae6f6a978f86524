"""What a document adapter learned, measured while it trains: held-out questions, citations, forgetting.

``LearnProbe`` is a Trainer callback. Before the first step (a fresh LoRA's B matrices are zero, so the
model is still the base model) and after every epoch it answers the held-out generated questions
greedily and scores them: an answer is right when it contains the question's key span, its citation is
right when it cites the question's document. Training stops early once held-out accuracy has not
improved for ``patience`` epochs, and the best epoch's adapter weights are the ones saved: epochs are
chosen on held-out key-fact accuracy, not on loss (of two equally accurate epochs, the one whose
forgetting, measured after every epoch, is lower). Forgetting is the perplexity of general text the
adapter never trained on, adapter over base (1.0: nothing forgotten). With ``max_forgetting`` an epoch
that forgets more than that is never kept (unless it is the first) and training stops there: later
epochs only forget more.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from transformers import LogitsProcessorList, TrainerCallback

from helixloom.engine import citations
from helixloom.engine.citations import CitationGuard, CitationSet
from helixloom.engine.hf.vocab import Vocab
from helixloom.evals.keyfacts import has_fact
from helixloom.training.chat_template import generation_prompt

_CITATION = re.compile(r"\[DOC_ID:([0-9a-f]{6,64})\]")


@dataclass(frozen=True)
class Probe:
    """A held-out question: its chat messages, the span a right answer contains, its document."""

    messages: list[dict[str, str]]
    key: str
    doc_id: str


@dataclass
class ProbeScores:
    accuracy: float
    citation_accuracy: float
    answers: list[str]


@dataclass
class ProbeReport:
    before: ProbeScores | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: float | None = None
    stopped: str | None = None  # why training ended early: "accuracy" or "forgetting"
    after: ProbeScores | None = None
    perplexity_base: float | None = None
    perplexity_adapter: float | None = None
    seconds: float = 0.0

    @property
    def forgetting_ratio(self) -> float | None:
        if self.perplexity_base and self.perplexity_adapter:
            return self.perplexity_adapter / self.perplexity_base
        return None


def score(probes: Sequence[Probe], answers: Sequence[str]) -> ProbeScores:
    """Held-out accuracy (the key stated as words of the answer's own, as ``eval qa`` reads it: "400"
    is not in "1400") and citation accuracy."""
    right = sum(has_fact(p.key, a) for p, a in zip(probes, answers, strict=True))
    cited = sum(p.doc_id in _CITATION.findall(a) for p, a in zip(probes, answers, strict=True))
    n = max(1, len(probes))
    return ProbeScores(right / n, cited / n, list(answers))


# Held-out questions generated at once. 48, not 8 (Dec 2026, default model, learn_heldout's 35
# questions, 1 thread): 34 s against 65 s, peak memory 2.14 GB against 2.07 (generation computes
# the logits of each prompt's last position only; a model whose forward lacks ``logits_to_keep``
# would hold every position's, 48 x prompt x vocabulary, and need a smaller batch).
ANSWER_BATCH = 48


@contextmanager
def fast_generation(model: Any) -> Iterator[None]:
    """``model`` as it is, with its output layer's input made contiguous while measuring.

    Generation keeps only the last position's hidden state for the output layer, a strided view of
    the batch's ``[rows, 1, 640]``; in bf16 on a CPU, torch's linear over that view broadcasts the
    output layer's weight to every row and copies it (rows x 262k x 640, 5.4 GB for 16 rows on the
    default model). That copy was 66% of the probe's bf16 generation, which therefore ran 2.3x as
    slowly as fp32 (59 s against 25 s for 41 questions, 2 cores); with a contiguous input, 12.8 s,
    the same 41 answers as fp32 on a trained adapter (Dec 2026). fp32 never copies; nothing changes
    there. A bf16 model is measured in bf16 (the training precision): its perplexity differs from
    fp32's by rounding (23.32 against 23.42), and the forgetting ratio compares bf16 with bf16."""
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    getter = getattr(inner, "get_output_embeddings", None)  # not every model names its output layer
    head = getter() if callable(getter) else None
    if head is None or getattr(head, "weight", None) is None or head.weight.dtype == torch.float32:
        yield
        return
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


class LearnProbe(TrainerCallback):
    """Held-out accuracy before, per epoch and after; early stopping on it; forgetting at the end."""

    def __init__(
        self,
        probes: Sequence[Probe],
        general: Sequence[str],
        *,
        system_prompt: str | None,
        patience: int = 1,
        max_forgetting: float | None = None,
        max_new_tokens: int = 48,
        measure_before: bool = True,
        citations: CitationSet | None = None,
    ) -> None:
        self.probes = list(probes)
        # answers cite only these ids, as the adapter is served (``engine.citations``)
        self.citations = citations
        self._guard: CitationGuard | None = None
        # off: the base model's answers are not measured before training (a soup's later members:
        # the first one measured them), only its general-text perplexity, which forgetting needs
        self.measure_before = measure_before
        self.general = list(general)
        self.system = system_prompt
        self.patience = patience
        self.max_forgetting = max_forgetting
        self.max_new_tokens = max_new_tokens
        self.report = ProbeReport()
        self._best: dict[str, Any] | None = None
        self._best_score = -1.0
        self._best_perplexity: float | None = None
        self._since_best = 0

    # ------------------------------------------------------------------------------ measurements
    def answers(self, model: Any, tokenizer: Any) -> list[str]:
        import torch

        prompts = []
        for p in self.probes:
            messages = list(p.messages)
            if self.system:
                messages = [{"role": "system", "content": self.system}, *messages]
            prompts.append(generation_prompt(tokenizer, messages))
        was_training = model.training
        model.eval()
        texts: list[str] = []
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            # ANSWER_BATCH questions at a time: each new token reads the whole output layer (262k
            # words x 640, 671 MB in fp32), so a CPU generates nearly as fast for 36 rows as for 8
            for start in range(0, len(prompts), ANSWER_BATCH):
                enc = tokenizer(
                    prompts[start : start + ANSWER_BATCH],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=True,
                )
                enc = {k: v.to(model.device) for k, v in enc.items()}
                guard = self.guard(model, tokenizer)
                processors = LogitsProcessorList(
                    [] if guard is None else [citations.LogitsProcessor(guard, enc["input_ids"].shape[1])]
                )
                with torch.no_grad():
                    out = model.generate(
                        **enc,
                        max_new_tokens=self.max_new_tokens,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                        logits_processor=processors,
                    )
                texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        finally:
            tokenizer.padding_side = side
            if was_training:
                model.train()
        return [t.split("\nUSER:")[0].strip() for t in texts]

    def guard(self, model: Any, tokenizer: Any) -> CitationGuard | None:
        """The citation guard over ``tokenizer``'s tokens (built once: it decodes every token)."""
        if self.citations is None:
            return None
        if self._guard is None:
            size = int(model.config.vocab_size)
            texts = Vocab(tokenizer, size, model.device).texts()  # as the hf engine reads them
            self._guard = citations.CitationGuard(self.citations, texts, size)
        return self._guard

    def perplexity(self, model: Any, tokenizer: Any) -> float | None:
        import torch

        if not self.general:
            return None
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for text in self.general:
                ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
                loss = model(input_ids=ids, labels=ids).loss
                n = ids.shape[1] - 1
                total += float(loss) * n
                count += n
        if was_training:
            model.train()
        return math.exp(total / max(1, count))

    def measure(self, model: Any, tokenizer: Any) -> ProbeScores | None:
        if not self.probes:
            return None
        return score(self.probes, self.answers(model, tokenizer))

    # ------------------------------------------------------------------------------ callbacks
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        tokenizer = kw.get("processing_class")
        if model is None or tokenizer is None or state.global_step > 0:
            return  # resuming: the base model's scores were taken when the run started
        start = time.perf_counter()
        with fast_generation(model):
            if self.measure_before:
                self.report.before = self.measure(model, tokenizer)
            self.report.perplexity_base = self.perplexity(model, tokenizer)
        self.report.seconds += time.perf_counter() - start

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        tokenizer = kw.get("processing_class")
        if model is None or tokenizer is None or not self.probes:
            return
        start = time.perf_counter()
        with fast_generation(model):
            scores = self.measure(model, tokenizer)
            assert scores is not None
            # forgetting after every epoch (a few seconds): reported beside accuracy, and it breaks a tie
            perplexity = self.perplexity(model, tokenizer)
        base = self.report.perplexity_base
        forgetting = round(perplexity / base, 3) if perplexity and base else None
        self.report.epochs.append(
            {
                "epoch": round(float(state.epoch or 0), 2),
                "step": state.global_step,
                "accuracy": scores.accuracy,
                "citation_accuracy": scores.citation_accuracy,
                "forgetting_ratio": forgetting,
            }
        )
        if self.max_forgetting and forgetting and forgetting > self.max_forgetting:
            # forgets too much: never kept when an earlier epoch is (later ones would forget more)
            if self._best is None:
                self._keep(scores, perplexity, state, model)
            self.report.stopped = "forgetting"
            control.should_training_stop = True
        elif scores.accuracy > self._best_score:
            self._keep(scores, perplexity, state, model)
            self._since_best = 0
        else:
            if (
                scores.accuracy == self._best_score
                and perplexity
                and self._best_perplexity
                and (perplexity < self._best_perplexity)
            ):  # as accurate and forgets less: keep this epoch instead (still not an improvement)
                self._keep(scores, perplexity, state, model)
            self._since_best += 1
            if self.patience and self._since_best >= self.patience:
                self.report.stopped = "accuracy"
                control.should_training_stop = True
        self.report.seconds += time.perf_counter() - start

    def _keep(self, scores: ProbeScores, perplexity: float | None, state: Any, model: Any) -> None:
        """This epoch is the best so far: remember its scores and adapter weights."""
        self._best_score = scores.accuracy
        self._best_perplexity = perplexity
        self.report.best_epoch = round(float(state.epoch or 0), 2)
        self.report.after = scores
        self._best = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        import torch

        tokenizer = kw.get("processing_class")
        if model is None or tokenizer is None:
            return
        start = time.perf_counter()
        if self._best is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in self._best:
                        p.copy_(self._best[n])
        if self._best is not None and self._best_perplexity is not None:
            # the kept epoch's weights were measured when it ended: the same number, not measured again
            self.report.perplexity_adapter = self._best_perplexity
        else:
            with fast_generation(model):
                if self._best is None and self.probes:
                    self.report.after = self.measure(model, tokenizer)
                self.report.perplexity_adapter = self.perplexity(model, tokenizer)
        self.report.seconds += time.perf_counter() - start
