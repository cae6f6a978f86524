"""``helixloom train sft|evaluator|reward|reward-head``: fine-tuning recipes."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from helixloom.cli import train_rewards, usage

    train = sub.add_parser(
        "train",
        help="fine-tune generators, evaluators and reward models",
        description="Training recipes: sft (a generator LoRA on your data), evaluator (a yes/no evaluator "
        "LoRA from ratings), reward (a reward model from preference pairs), reward-head (a small head on "
        "the base model's hidden states from thumbs up/down).",
    )
    tsub = train.add_subparsers(title="recipes", metavar="RECIPE")
    train_rewards.register(tsub)
    train.set_defaults(run=lambda _: usage(train))
