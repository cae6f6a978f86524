"""Training settings, kept free of torch and transformers so the CLI can build its flags quickly."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from helixloom.errors import HelixloomError


@dataclass(frozen=True)
class LoraSFTConfig:
    """Fine-tuning settings; each field is a flag of ``helixloom learn`` / ``helixloom train sft``."""

    rank: int = field(default=16, metadata={"help": "LoRA rank r"})
    alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)"})
    dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    target_modules: tuple[str, ...] = field(
        default=("all-linear",), metadata={"help": "modules to adapt; all-linear means every linear layer"}
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate (cosine schedule)"})
    epochs: float = field(default=3.0, metadata={"help": "passes over the data"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1: epochs)"})
    max_length: int = field(default=1024, metadata={"help": "longest training sequence in tokens"})
    batch_size: int = field(default=4, metadata={"help": "sequences per step"})
    grad_accum: int = field(default=1, metadata={"help": "steps accumulated per optimizer step"})
    save_steps: int = field(default=50, metadata={"help": "checkpoint every this many steps (resume point)"})
    seed: int = field(default=0, metadata={"help": "seed for initialisation and data order"})

    def __post_init__(self) -> None:
        positive = (
            "rank",
            "alpha",
            "learning_rate",
            "epochs",
            "max_length",
            "batch_size",
            "grad_accum",
            "save_steps",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise HelixloomError(f"{name} must be positive", param=name)
        if not 0 <= self.dropout < 1:
            raise HelixloomError("dropout must be in [0, 1)", param="dropout")
        if not self.target_modules:
            raise HelixloomError("target_modules is empty", param="target_modules")

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: str(f.metadata.get("help", "")) for f in fields(cls)}


LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "sigmoid_norm")


@dataclass(frozen=True)
class HelixRoleSFTConfig(LoraSFTConfig):
    """LoRA settings of HelixNet's critic (and, unless given its own, regenerator) adapters: the
    recipe ``benchmarks/helixnet_train.py`` measured on the default model (+27.5 points held out)."""

    learning_rate: float = field(default=4e-4, metadata={"help": "peak learning rate (cosine schedule)"})
    epochs: float = field(
        default=2.0,
        metadata={"help": "passes over the critic's data (the regenerator's: --regenerator-epochs)"},
    )


# The regenerator's passes over its data in the measured recipe: it learns to rewrite, which takes
# longer than the critic's verdicts (validation: 33 / 39 / 40 of 62 passed at 2 / 3 / 4 epochs).
REGENERATOR_EPOCHS = 3.0


@dataclass(frozen=True)
class LoraDPOConfig(LoraSFTConfig):
    """DPO settings: the LoRA and optimiser fields of ``LoraSFTConfig`` plus DPO's own."""

    learning_rate: float = field(
        default=5e-5,
        metadata={
            "help": "peak learning rate (cosine schedule); TRL suggests ~10x full fine-tuning's for LoRA"
        },
    )
    epochs: float = field(default=2.0, metadata={"help": "passes over each iteration's pairs"})
    batch_size: int = field(default=4, metadata={"help": "pairs per step"})
    beta: float = field(default=0.1, metadata={"help": "DPO beta: strength of the pull toward the reference"})
    loss_type: str = field(default="sigmoid", metadata={"help": "DPO loss: " + ", ".join(LOSS_TYPES)})
    label_smoothing: float = field(
        default=0.0, metadata={"help": "robust/conservative DPO label noise in [0, 0.5) (0.1 is common)"}
    )
    # RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization"): DPO alone can lower the
    # chosen answer's likelihood along with the rejected one's; an NLL term on the chosen keeps it rising.
    # 0 by default: at 1 the improve loop gained the same on its honest taste (benchmarks/feedback_loop.py,
    # plain, Dec 2026: +70.9 / +62.5 against +75.0 / +58.4) at a lower KL (6.3 / 5.5 nats against 10.6 / 7.0)
    sft_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight of a negative log-likelihood term on the chosen answer (per token) added to "
            "the DPO loss (RPO; 0: DPO alone)"
        },
    )
    precompute_ref: bool = field(
        default=True,
        metadata={
            "help": "score the pairs under the reference once before training instead of at every step "
            "(same loss, 1.24x faster on the default model)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 0:
            raise HelixloomError("beta must be positive", param="beta")
        if self.loss_type not in LOSS_TYPES:
            raise HelixloomError(f"loss_type must be one of {', '.join(LOSS_TYPES)}", param="loss_type")
        if not 0 <= self.label_smoothing < 0.5:
            raise HelixloomError("label_smoothing must be in [0, 0.5)", param="label_smoothing")
        if self.sft_weight < 0:
            raise HelixloomError("sft_weight must be >= 0", param="sft_weight")


@dataclass(frozen=True)
class ImproveDPOConfig(LoraDPOConfig):
    """DPO settings of the improve loop: the recipe ``benchmarks/feedback_loop.py`` measured (each
    round trains a few dozen pairs once, from the previous iterate), not ``train dpo``'s general one."""

    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate (cosine schedule)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over each round's pairs"})


@dataclass(frozen=True)
class RewardHeadConfig:
    """Reward-head training settings; each field is a flag of ``helixloom train reward-head``."""

    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate (MiniHF's)"})
    batch_size: int = field(default=32, metadata={"help": "examples per step"})
    max_epochs: int = field(default=100, metadata={"help": "most passes over the training examples"})
    patience: int = field(
        default=10, metadata={"help": "stop after this many epochs without a better validation loss"}
    )
    val_split: float = field(
        default=0.2, metadata={"help": "share of each class held out for validation and early stopping"}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay"})
    seed: int = field(default=0, metadata={"help": "seed for initialisation, the split and data order"})

    def __post_init__(self) -> None:
        for name in ("learning_rate", "batch_size", "max_epochs", "patience"):
            if not getattr(self, name) > 0:
                raise HelixloomError(f"{name} must be positive", param=name)
        if not 0 <= self.val_split < 1:
            raise HelixloomError("val_split must be in [0, 1)", param="val_split")
        if self.weight_decay < 0:
            raise HelixloomError("weight_decay must not be negative", param="weight_decay")

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: str(f.metadata.get("help", "")) for f in fields(cls)}


METHODS = ("dpo", "raft")
PAIRINGS = ("max_min", "max_random", "max_min+max_random")


@dataclass(frozen=True)
class IterateConfig:
    """The loop's settings (training settings are a ``LoraDPOConfig``)."""

    iterations: int = field(default=3, metadata={"help": "iterations of sample → score → pair → train"})
    k: int = field(default=4, metadata={"help": "responses sampled per prompt"})
    method: str = field(
        default="dpo", metadata={"help": "dpo (GSHF / iterative DPO) or raft (SFT on best of K)"}
    )
    pairs: str = field(
        default="max_min",
        metadata={"help": "DPO pairs: max_min (best vs worst), max_random, or max_min+max_random"},
    )
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the K responses"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus mass of the K responses"})
    max_tokens: int = field(default=256, metadata={"help": "longest response in tokens"})
    eval_temperature: float = field(
        default=0.7, metadata={"help": "temperature of the evaluation answers (0: greedy)"}
    )
    gen_batch: int = field(default=16, metadata={"help": "rows per generation batch"})
    seed: int = field(default=0, metadata={"help": "seed of sampling, pairing and training"})
    system: str = field(default="", metadata={"help": "system prompt for every prompt"})

    def __post_init__(self) -> None:
        for name in ("iterations", "k", "max_tokens", "gen_batch"):
            if not getattr(self, name) > 0:
                raise HelixloomError(f"{name} must be positive", param=name)
        if self.k < 2:
            raise HelixloomError("k must be at least 2 to rank responses", param="k")
        if self.method not in METHODS:
            raise HelixloomError(f"method must be one of {', '.join(METHODS)}", param="method")
        if self.pairs not in PAIRINGS:
            raise HelixloomError(f"pairs must be one of {', '.join(PAIRINGS)}", param="pairs")
        if self.temperature < 0 or self.eval_temperature < 0:
            raise HelixloomError("temperatures must be >= 0", param="temperature")

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: str(f.metadata.get("help", "")) for f in fields(cls)}


@dataclass(frozen=True)
class HelixTrainConfig:
    """How ``helixloom train helixnet`` makes role data (training settings are a ``LoraSFTConfig``)."""

    samples: int = field(
        default=1,
        metadata={
            "help": "actor answers per prompt; the verifier picks a passing one as the target (the "
            "measured recipe: 1, with --repair)"
        },
    )
    temperature: float = field(default=0.9, metadata={"help": "sampling temperature of the actor's answers"})
    max_tokens: int = field(default=96, metadata={"help": "longest actor answer in tokens"})
    teacher_max_tokens: int = field(
        default=256, metadata={"help": "longest critique or regeneration an LLM teacher writes"}
    )
    gen_batch: int = field(default=8, metadata={"help": "prompts per generation batch"})
    limit: int = field(default=0, metadata={"help": "use only the first N prompts (0: all)"})
    sample_seed: int = field(default=0, metadata={"help": "seed of the actor's sampling"})
    keep_share: float = field(
        default=0.25,
        metadata={
            "help": "largest share of the regenerator's examples whose response already passed and is kept "
            "as it is (the rest teach it to fix a failed response)"
        },
    )
    repair: bool = field(
        default=True,
        metadata={"help": "the verifier repairs a failed response in code when no actor sample passes"},
    )
    critic_pass_share: float = field(
        default=0.3,
        metadata={
            "help": "least share of the critic's examples that critique a passing answer; a failed "
            "response's verified regeneration is added as one (0: the actor's responses only)"
        },
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.critic_pass_share < 1.0:
            raise HelixloomError("critic_pass_share must be in [0, 1)", param="critic_pass_share")
        for name in ("samples", "max_tokens", "teacher_max_tokens", "gen_batch"):
            if not getattr(self, name) > 0:
                raise HelixloomError(f"{name} must be positive", param=name)
        if self.temperature < 0 or self.limit < 0:
            raise HelixloomError("temperature and limit must be >= 0", param="temperature")
        if not 0 <= self.keep_share < 1:
            raise HelixloomError("keep_share must be in [0, 1)", param="keep_share")

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: str(f.metadata.get("help", "")) for f in fields(cls)}
