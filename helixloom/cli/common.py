"""Flags and helpers shared by the command modules: model and sampling flags, settings dataclasses as
flags, the store. Imports nothing heavy at module level (``helixloom --help`` must stay fast)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from helixloom.errors import HelixloomError

if TYPE_CHECKING:
    from helixloom.engine import SamplingParams
    from helixloom.store import Store

DEFAULT_TEMPERATURE = 0.8  # llama.cpp's defaults: lively but on topic for small models
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 40


def usage(parser: argparse.ArgumentParser) -> int:
    """Print ``parser``'s help; the exit code of a command given without a subcommand."""
    parser.print_help()
    return 2


def add_config_flags(
    p: argparse.ArgumentParser, config_class: Any, title: str, aliases: dict[str, list[str]] | None = None
) -> None:
    """One flag per field of a settings dataclass (its single source of truth), its default in the help:
    tuples take several values, booleans get --flag/--no-flag. Unset flags stay None (see
    ``given_config``), so the dataclass's own defaults apply."""
    from dataclasses import MISSING, fields

    group = p.add_argument_group(title)
    helps = config_class.help()
    for f in fields(config_class):
        flags = ["--" + f.name.replace("_", "-"), *(aliases or {}).get(f.name, [])]
        default = f.default if f.default is not MISSING else None
        if isinstance(default, tuple):
            group.add_argument(
                *flags,
                dest=f.name,
                nargs="+",
                default=None,
                help=f"{helps[f.name]} (default: {' '.join(default)})",
            )
        elif isinstance(default, bool):
            group.add_argument(
                *flags,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{helps[f.name]} (default {'on' if default else 'off'})",
            )
        else:
            group.add_argument(
                *flags,
                dest=f.name,
                type=type(default),
                default=None,
                help=f"{helps[f.name]} (default {default})",
            )


def given_config(args: argparse.Namespace, config_class: Any) -> dict[str, Any]:
    """The settings flags given on the command line (tuple fields as tuples)."""
    from dataclasses import fields

    given = {}
    for f in fields(config_class):
        value = getattr(args, f.name, None)
        if value is not None:
            given[f.name] = tuple(value) if isinstance(f.default, tuple) else value
    return given


def add_sft_flags(p: argparse.ArgumentParser, config_class: Any = None, title: str = "fine-tuning") -> None:
    """The fine-tuning flags: ``LoraSFTConfig`` by default, or a subclass such as ``LoraDPOConfig``."""
    from helixloom.training.configs import LoraSFTConfig

    add_config_flags(p, config_class or LoraSFTConfig, title)


def sft_config_from(args: argparse.Namespace, config_class: Any = None) -> Any:
    from helixloom.training.configs import LoraSFTConfig

    cls = config_class or LoraSFTConfig
    return cls(**given_config(args, cls))


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default",
        metavar="SPEC",
        help="'default' (embedded Gemma 3 270M), a local Hugging Face folder, a .gguf file, or org/name",
    )
    p.add_argument("--adapter", metavar="NAME_OR_PATH", help="a registered adapter name or a PEFT folder")
    add_engine_flag(p)


def add_engine_flag(p: argparse.ArgumentParser) -> None:
    """``--engine auto|hf|llamacpp``: which backend runs a GGUF model (see ``engine.select``)."""
    from helixloom.engine.select import ENGINE_CHOICES

    p.add_argument(
        "--engine",
        choices=ENGINE_CHOICES,
        default="auto",
        help="backend for a GGUF model (default and .gguf files): auto runs it on llama.cpp when "
        "llama-cpp-python is installed (fastest on CPU) unless the command needs what only "
        "transformers gives, hf always on transformers (default: auto)",
    )


def add_sampling_flags(
    p: argparse.ArgumentParser,
    *,
    temperature: float | None = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    top_k: int = DEFAULT_TOP_K,
    max_tokens: int = 256,
    temperature_help: str | None = None,
) -> None:
    p.add_argument(
        "--max-tokens", type=int, default=max_tokens, help=f"most new tokens (default {max_tokens})"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=temperature,
        help=temperature_help or f"0 is greedy (default {temperature})",
    )
    p.add_argument("--top-p", type=float, default=top_p, help=f"nucleus mass (default {top_p})")
    p.add_argument("--top-k", type=int, default=top_k, help=f"0 keeps all (default {top_k})")
    p.add_argument("--seed", type=int, help="sampling seed; the same seed repeats the text")
    p.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop at TEXT (not printed); repeatable"
    )


def sampling_from(args: argparse.Namespace) -> SamplingParams:
    from helixloom.engine import sampling

    return sampling(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=tuple(args.stop),
        token_healing=getattr(args, "token_healing", False),
    )


def open_store() -> Store:
    """The store under ``HELIXLOOM_HOME`` (created on first use)."""
    from helixloom.paths import ensure_home
    from helixloom.store import Store

    ensure_home()
    return Store.open_default()


def helixnet_roles(args: argparse.Namespace) -> dict[Any, str]:
    """Role -> adapter: the --ROLE-adapter flags, or the set --helixnet names (not both)."""
    given = {
        role: getattr(args, f"{role}_adapter")
        for role in ("actor", "critic", "regenerator")
        if getattr(args, f"{role}_adapter")
    }
    if args.helixnet is None:
        return given
    if given:
        flags = ", ".join(f"--{role}-adapter" for role in given)
        raise HelixloomError(f"--helixnet does not mix with {flags}", "give the set or the adapters")
    from helixloom import adapters

    with open_store() as store:
        return dict(adapters.helixnet_set(store, args.helixnet))
