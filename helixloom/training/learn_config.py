"""The settings of ``helixloom learn`` (free of torch, so the CLI builds its flags quickly)."""

from __future__ import annotations

from dataclasses import dataclass, field

from helixloom.errors import HelixloomError
from helixloom.training.configs import LoraSFTConfig

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class LearnConfig(LoraSFTConfig):
    """Fine-tuning settings for documents: ``LoraSFTConfig`` with defaults measured on the embedded
    model (benchmarks/learn.py), plus the mix and early stopping. ``epochs`` is the most it trains:
    it stops once held-out accuracy on generated questions stops improving."""

    # 6e-4 (benchmarks/learn.py, Dec 2026): key facts rise faster than at 3e-4; without the anchor
    # forgetting rose with them (x4.0 to x7.3 by epoch 3), with it every epoch stays near the base.
    # 4 epochs, not 5 (Dec 2026, bf16, the two held-out sets, seeds 0 and 1): key facts 50.0, 50.0,
    # 56.1, 50.0% (mean 51.5) against 5 epochs' 56.7, 43.3, 54.4% in fp32 on the same sets and seeds
    # (the fourth not run): the same within the seed noise, for a fifth fewer steps; forgetting
    # x1.19-x1.31 against x1.30-x1.34. Every 5-epoch run had kept epoch 4 or 5
    learning_rate: float = field(default=6e-4, metadata={"help": "peak learning rate (cosine schedule)"})
    epochs: float = field(
        default=4.0, metadata={"help": "most passes over the data (early stopping ends sooner)"}
    )
    # 384, not 256: a row with two retrieved passages before its question runs to about 300 tokens
    max_length: int = field(default=384, metadata={"help": "longest training sequence in tokens"})
    # 8 x 1 (benchmarks/learn_memory.py, Dec 2026, the default model, 2 threads): 9.2 s a step and a
    # peak of 8.3 GB; 4 x 2 trains the same 8 sequences a step (the same rows: the length-grouped
    # sampler groups by the step's 8) in 5.2 GB at 11.1 s, 2 x 4 in 3.7 GB at 15.7 s. Speed is the
    # scarcer of the two here, so 8 x 1 stays; --batch-size 4 --grad-accum 2 is the memory lever
    batch_size: int = field(
        default=8,
        metadata={
            "help": "sequences per forward pass (memory grows with it: 4 with --grad-accum 2 trains "
            "the same steps in about two thirds of the memory, a little slower)"
        },
    )
    grad_accum: int = field(
        default=1, metadata={"help": "forward passes per optimizer step (a step is batch_size x grad_accum)"}
    )
    # 2, not 1: held-out accuracy on ~30 generated questions is noisy (measured with the anchor:
    # .36 .55 .52 .64 .64 over 5 epochs; patience 1 would have ended at epoch 3)
    patience: int = field(
        default=2,
        metadata={"help": "stop after this many epochs without better held-out accuracy (0: never)"},
    )
    max_forgetting: float = field(
        default=3.0,
        metadata={
            "help": "an epoch whose general-text perplexity exceeds this many times the base model's "
            "is not kept (an earlier one is) and training stops there (0: no limit)"
        },
    )
    holdout: float = field(
        default=0.15, metadata={"help": "share of generated questions held out to measure"}
    )
    replay: float = field(
        default=0.2,
        metadata={"help": "share of general text (the base model's own) mixed in against forgetting"},
    )
    # 0.3 (benchmarks/learn.py, learn_heldout): key facts 67-70% at forgetting x1.17; 1.0 held forgetting
    # at x1.14 but accuracy stopped at 52%; none: 56-59% at x2.1-x2.3, and x4.0-x7.3 one epoch later
    anchor: float = field(
        default=0.3,
        metadata={
            "help": "weight of a KL term to the base model on the replay text, added to every step "
            "(holds the adapter's language closer to the base's; 0: off)"
        },
    )

    # The share of training questions trained a second time after two retrieved passages (RAFT rows:
    # the one that answers and a distractor), so the adapter learns to read what --retrieve shows it.
    # 0.1 (benchmarks/learn.py, Dec 2026, one run per set and share, the two held-out sets): 0.5 found
    # 66.7% of key facts against 54.4% on learn_fresh2 but 53.3% against 56.7% on learn_fresh
    # (adapter + retrieval 70.0/47.8 and 50.0/56.7; citations 77/77 and 80/90): +4.4 points on the
    # 60 questions, inside the noise, for 27-29% more training steps (such a row is about three times
    # a plain one's length). 0.5 was the default for one session, on learn_fresh2 alone.
    context_share: float = field(
        default=0.1,
        metadata={
            "help": "share of the questions trained again after two retrieved passages, so the "
            "adapter reads what chat/eval --retrieve shows it (0: none)"
        },
    )

    # auto: bf16 on CUDA and on a CPU with native bf16 (AVX512-BF16, AMX), fp32 elsewhere (where bf16
    # is emulated and slower). On this project's 2-core machine a bf16 step is 1.68x as fast
    # (benchmarks/learn_memory.py, Dec 2026: 8.98 s against 15.09, 1 thread beside a learn run); the
    # probe measures in bf16 too (learn_probe.fast_generation), the adapter is served in fp32. Key
    # facts (the held-out sets, seeds 0 and 1, one run each; the same recipe moves by about 13 points
    # between seeds): bf16 at 5 epochs 46.7, 53.3, 50.0%, at 4 epochs 50.0, 50.0, 56.1, 50.0%, against
    # fp32's 56.7, 43.3, 54.4%: no sign of a cost, so bf16 became the default where it is native
    # in Dec 2026
    precision: str = field(
        default="auto",
        metadata={
            "help": "training precision: auto (bf16 on a GPU or a CPU with native bf16, AVX512-BF16 or "
            "AMX, where a step is 1.7x as fast; fp32 elsewhere), bf16 (everywhere: slower than fp32 "
            "where bf16 is emulated) or fp32"
        },
    )

    # 1 (one fine-tune) by default; 2 trains a second adapter from the next seed on the same data and
    # serves the exact mean of the two (``training.soup``). Measured (benchmarks/learn.py and probes on
    # its adapters, Dec 2026, the default model, the three held-out sets, seeds 0-3): ten soups of two
    # found 74.7% of key facts against 70.5% for their fine-tunes alone (above in 9 of 10), 76.0% per set
    # against 70.9%; forgetting x1.15-x1.24. Not the default: twice the training time, and three of the
    # ten soups cite one document with a hex digit wrong (docs/learn-measurements.md)
    soup: int = field(
        default=1,
        metadata={
            "help": "fine-tunes to average into the adapter: N trains N adapters from seeds seed, seed+1, "
            "... on the same data (N times the training time) and keeps the exact mean of their weights "
            "(a model soup: it keeps what every fine-tune learned, not what one got by chance; measured "
            "in the README's learn section)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.soup <= 8:
            raise HelixloomError("soup must be 1 to 8 fine-tunes", param="soup")
        if self.patience < 0:
            raise HelixloomError("patience must be >= 0", param="patience")
        if self.max_forgetting < 0 or 0 < self.max_forgetting <= 1:
            raise HelixloomError("max_forgetting must be above 1 (or 0: no limit)", param="max_forgetting")
        if not 0 <= self.holdout < 0.5:
            raise HelixloomError("holdout must be in [0, 0.5)", param="holdout")
        if self.anchor < 0:
            raise HelixloomError("anchor must be >= 0", param="anchor")
        if self.precision not in PRECISIONS:
            raise HelixloomError(
                f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}", param="precision"
            )
        if not 0 <= self.context_share <= 1:
            raise HelixloomError("context_share must be in [0, 1]", param="context_share")
        if not 0 <= self.replay < 0.5:
            raise HelixloomError("replay must be in [0, 0.5)", param="replay")
