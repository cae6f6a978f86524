"""What an HTTP client may run as a job: an explicit list of commands and of flags, each flag with the
kind of value it takes, every path confined to the clients' part of ``HELIXLOOM_HOME``.

The CLI acts for the local user and may touch anything they name; the server acts for remote clients
and may not. So a command line that arrives over HTTP is parsed by the CLI's own parser (its errors
are argparse's), then every flag it sets is looked up here: a flag that is not listed is refused, as
is a value of the wrong kind: a path outside the clients' folders, a model spec the operator did not
allow (remote URLs among them), a Python reward, a name that is not a plain folder name. A job reads
from ``uploads/`` (what clients uploaded) and ``outputs/`` (what jobs wrote), and writes only under
``outputs/``: never the store, the adapters or another run's files, which the CLI's own commands
manage. Paths are rewritten resolved but relative to the home, where the job runs, so it reads and
writes exactly what was checked and the home's location never goes back to a client. Listing is
deliberate: a flag added to the CLI later stays out of the API until someone decides what kind of
value it takes.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helixloom.errors import HelixloomError
from helixloom.paths import check_name, confined

# Kinds of flag values.
VALUE = "value"  # a number, a choice, a flag or free text: argparse checks it, nothing names a resource
NAME = "name"  # a name that becomes a folder (check_name)
IN = "in"  # a file or folder the job reads: exists, under uploads/ or outputs/
OUT = "out"  # a file the job writes: under outputs/
MODEL = "model"  # a model spec: one the operator allowed
ADAPTER = "adapter"  # a registered adapter name
REWARD = "reward"  # a reward spec without Python files or remote models
TEMPLATE = "template"  # a built-in template name, or a file under the home
TEACHER = "teacher"  # "verifier" (checks in code, no model), or a model spec the operator allowed

_COMMON = {
    "name": NAME,
    "base": MODEL,
    "model": MODEL,
    "teacher": MODEL,
    "judge": MODEL,
    "baseline": MODEL,
    "adapter": ADAPTER,
    "judge_adapter": ADAPTER,
    "baseline_adapter": ADAPTER,
    "evaluator_adapter": ADAPTER,
    "data": IN,
    "mix": IN,
    "prompts": IN,
    "eval_prompts": IN,
    "suite": IN,
    "template": IN,
    "paths": IN,
    "judge_template": TEMPLATE,
    "out": OUT,
    "reward": REWARD,
}
_TRAINING = [
    "rank",
    "alpha",
    "dropout",
    "target_modules",
    "learning_rate",
    "epochs",
    "max_steps",
    "max_length",
    "batch_size",
    "grad_accum",
    "save_steps",
    "seed",
    "resume",
]
_SAMPLING = ["max_tokens", "temperature", "top_p", "top_k", "seed", "stop"]
_JUDGING = ["judge_mode", "explain", "judge_max_tokens", "system", "batch_size", "json"]


def _flags(values: Iterable[str], *special: str, **overrides: str) -> dict[str, str]:
    table = {d: VALUE for d in values}
    table.update({d: _COMMON[d] for d in special})
    table.update(overrides)
    return table


#: (command words) -> {argparse dest: kind}. Anything not here is refused over HTTP.
ALLOWED: dict[tuple[str, ...], dict[str, str]] = {
    ("learn",): _flags(
        [
            "review",
            "questions",
            "chunk_tokens",
            "prompts",
            "rephrase",
            "rephrasings",
            "keep_rough",
            "title_first",
            "synonyms",
            "patience",
            "holdout",
            "replay",
            "max_forgetting",
            "anchor",
            "context_share",
            "precision",
            "soup",
            *_TRAINING,
        ],
        "paths",
        "name",
        "base",
        "teacher",
        "suite",
        prompts=VALUE,  # here: which prompts of the suite, by name
    ),
    ("eval", "qa"): _flags(
        ["max_tokens", "json", "retrieve", "check_kind", "free_citations"], "adapter", "base", questions=IN
    ),
    ("eval", "winrate"): _flags(
        [*_SAMPLING, *_JUDGING],
        "model",
        "adapter",
        "baseline",
        "baseline_adapter",
        "prompts",
        "judge",
        "judge_adapter",
        "judge_template",
        "out",
    ),
    ("eval", "grade"): _flags(
        [*_SAMPLING, *(j for j in _JUDGING if j != "judge_mode")],
        "model",
        "adapter",
        "prompts",
        "judge",
        "judge_adapter",
        "judge_template",
        "out",
    ),
    ("eval", "sessions"): _flags(
        [*_SAMPLING, *_JUDGING, "rating", "limit"],
        "model",
        "adapter",
        "judge",
        "judge_adapter",
        "judge_template",
        "out",
    ),
    ("prompts", "generate"): _flags(
        [
            "append",
            "overwrite",
            "temperature",
            "top_p",
            "max_tokens",
            "max_similarity",
            "min_chars",
            "max_chars",
            "shots",
            "batch_size",
            "max_attempts",
            "seed_rng",
            "n",
            "json",
            "engine",  # auto|hf|llamacpp: which backend runs a model the operator allowed
        ],
        "out",
        "model",
        "adapter",
        seed=IN,  # here: the seed prompts file
    ),
    ("train", "sft"): _flags(
        ["from_store", "system", "mix_ratio", "chunk_tokens", *_TRAINING],
        "data",
        "mix",
        "name",
        "base",
        "adapter",
    ),
    ("train", "dpo"): _flags(
        ["beta", "loss_type", "label_smoothing", "sft_weight", "precompute_ref", *_TRAINING],
        "data",
        "name",
        "base",
        "adapter",
    ),
    ("train", "evaluator"): _flags(
        ["from_store", "question", "held_out", "json", *_TRAINING], "data", "name", "base", "template"
    ),
    ("train", "reward"): _flags(
        ["replace", "eval_split", "center_rewards", "render", *_TRAINING], "data", "name", "base"
    ),
    ("train", "reward-head"): _flags(
        [
            "from_store",
            "resume",
            "replace",
            "learning_rate",
            "batch_size",
            "max_epochs",
            "patience",
            "val_split",
            "weight_decay",
            "seed",
        ],
        "data",
        "name",
        "base",
        "adapter",
    ),
    ("train", "helixnet"): _flags(
        [
            "json",
            "samples",
            "temperature",
            "max_tokens",
            "teacher_max_tokens",
            "gen_batch",
            "limit",
            "sample_seed",
            "repair",
            "keep_share",
            "critic_pass_share",
            "regenerator_epochs",
            *_TRAINING,
        ],
        "prompts",
        "name",
        "base",
        teacher=TEACHER,
        actor_adapter=ADAPTER,
    ),
    ("iterate",): _flags(
        [
            "iterations",
            "k",
            "method",
            "pairs",
            "temperature",
            "top_p",
            "max_tokens",
            "eval_temperature",
            "gen_batch",
            "system",
            "beta",
            "loss_type",
            "label_smoothing",
            "sft_weight",
            "precompute_ref",
            "overwrite",
            "json",
            *_TRAINING,
        ],
        "name",
        "prompts",
        "eval_prompts",
        "base",
        "adapter",
        "reward",
        "evaluator_adapter",
        "judge",
    ),
    # The improve loop: ratings come from this server's /rate page; no --server (a URL) over HTTP: the
    # promoted adapter is registered, and this server serves registered adapters by name.
    ("improve",): _flags(
        [
            "rounds",
            "ratings",
            "batch",
            "selection",
            "train_pairs",
            "k",
            "explore",
            "explore_by",
            "thumbs",
            "method",
            "raft_epochs",
            "temperature",
            "max_tokens",
            "eval_samples",
            "eval_temperature",
            "gen_batch",
            "members",
            "l2",
            "min_win_rate",
            "wait",
            "system",
            "beta",
            "loss_type",
            "label_smoothing",
            "sft_weight",
            "precompute_ref",
            "overwrite",
            "json",
            "answer",
            "best_of",
            "answer_from",
            *_TRAINING,
        ],
        "name",
        "prompts",
        "eval_prompts",
        "base",
        "adapter",
        "reward",
    ),
}

#: Flags of the commands above that are deliberately refused over HTTP, and why. With ``ALLOWED`` this
#: covers every flag of those commands (a test checks it), so a flag added to the CLI is a decision.
REFUSED: dict[tuple[str, ...], dict[str, str]] = {
    ("learn",): {
        "teacher_url": "a URL the server would call",
        "teacher_model": "only meaningful with --teacher-url",
    },
    ("improve",): {"server": "a URL the server would call"},
}

_BUILTIN_TEMPLATES = ("pair-v2", "single-v1")
#: The folders of the home a job submitted over HTTP may read, and the one it may write.
READABLE = ("uploads", "outputs")
WRITABLE = "outputs"
# Reward kinds that name neither code nor a remote model (a judge is checked as a model spec).
_SAFE_REWARDS = ("evaluator", "rubric", "constitution", "rm", "head", "improve", "judge")


@dataclass(frozen=True)
class JobPolicy:
    """The rules for jobs submitted over HTTP.

    ``models`` are the model specs a job may name (the operator's: the served model, ``default`` and
    whatever ``serve --allow-job-model`` added, remote ones included); ``adapters`` the registered
    adapter names; ``rewards`` the trained rewards (``HELIXLOOM_HOME/rewards/NAME``). What a job reads
    lies under ``home/uploads`` or ``home/outputs``, what it writes under ``home/outputs``.
    """

    home: Path
    models: frozenset[str]
    adapters: frozenset[str] = frozenset()
    rewards: frozenset[str] = frozenset()

    def check(self, parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
        """``argv`` (a command line without the program name) if a remote client may run it, with its
        paths made absolute under the home; otherwise ``HelixloomError`` naming the first problem."""
        words = self._command(parser, argv)
        allowed = ALLOWED.get(words)
        if allowed is None:
            jobs = ", ".join(" ".join(w) for w in ALLOWED)
            raise HelixloomError(f"'{' '.join(words)}' cannot be run from the API", f"jobs are: {jobs}")
        sub = self._subparser(parser, words)
        rest = argv[len(words) :]
        out = list(words)
        for dest, option, values in self._given(sub, rest):
            kind = allowed.get(dest)
            if kind is None:
                raise HelixloomError(f"{option} cannot be used from the API", param=dest)
            out.extend(self._checked(kind, option, values))
        return out

    # --- parsing ---------------------------------------------------------------------------------

    @staticmethod
    def _command(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[str, ...]:
        words: list[str] = []
        current = parser
        for word in argv:
            subs = _subparsers(current)
            if subs is None or word not in subs:
                break
            words.append(word)
            current = subs[word]
        if not words:
            raise HelixloomError("a job needs a command", "e.g. 'learn docs --name mydocs'")
        return tuple(words)

    @staticmethod
    def _subparser(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> argparse.ArgumentParser:
        current = parser
        for word in words:
            subs = _subparsers(current)
            assert subs is not None
            current = subs[word]
        return current

    @staticmethod
    def _given(sub: argparse.ArgumentParser, rest: list[str]) -> list[tuple[str, str, list[str]]]:
        """(dest, the option as written, its values) for every option and positional in ``rest``,
        by the subcommand's own parser (so abbreviations and ``--x=y`` are read as argparse reads them).
        """
        by_option = {o: a for a in sub._actions for o in a.option_strings}
        positionals = [a for a in sub._actions if not a.option_strings]
        given: list[tuple[str, str, list[str]]] = []
        loose: list[str] = []
        i = 0
        while i < len(rest):
            word = rest[i]
            if word == "--":
                loose.extend(rest[i + 1 :])
                break
            if word.startswith("-") and word != "-":
                option, eq, inline = word.partition("=")
                action = by_option.get(option) or _abbreviation(by_option, option)
                if action is None:
                    raise HelixloomError(f"unknown option {option}")
                if eq:
                    values = [inline]
                    i += 1
                elif action.nargs == 0:
                    values = []
                    i += 1
                else:
                    j = i + 1
                    many = action.nargs in ("*", "+") or isinstance(action.nargs, int)
                    while j < len(rest) and not (rest[j].startswith("-") and rest[j] != "-"):
                        j += 1
                        if not many:
                            break
                    values = rest[i + 1 : j]
                    i = j
                given.append((action.dest, option, values))
            else:
                loose.append(word)
                i += 1
        if loose:
            if not positionals:
                raise HelixloomError(f"unexpected argument {loose[0]!r}")
            given.insert(0, (positionals[0].dest, positionals[0].dest, loose))
        return given

    # --- values ----------------------------------------------------------------------------------

    def _checked(self, kind: str, option: str, values: list[str]) -> list[str]:
        head = [option] if option.startswith("-") else []
        if kind == VALUE:
            return [*head, *values]
        checked = [self._value(kind, option, v) for v in values]
        return [*head, *checked]

    def _value(self, kind: str, option: str, value: str) -> str:
        if kind == NAME:
            return check_name(value, f"{option.lstrip('-')} name")
        if kind == IN:
            path = self._inside(value, READABLE)
            if not path.exists():
                raise HelixloomError(f"{value} does not exist", "upload it first (PUT /api/files/NAME)")
            return self._relative(path)
        if kind == OUT:
            path = self._inside(value, (WRITABLE,))
            if path.is_dir():
                raise HelixloomError(f"{value} is a folder", param=option)
            return self._relative(path)
        if kind == MODEL:
            if value not in self.models:
                raise HelixloomError(
                    f"model {value!r} is not allowed for jobs",
                    f"the server allows {', '.join(sorted(self.models))} (serve --allow-job-model adds more)",
                )
            return value
        if kind == ADAPTER:
            if value not in self.adapters:
                raise HelixloomError(f"adapter {value!r} is not registered", "jobs name registered adapters")
            return value
        if kind == TEACHER:
            return value if value == "verifier" else self._value(MODEL, option, value)
        if kind == TEMPLATE:
            if value in _BUILTIN_TEMPLATES:
                return value
            if not value.endswith((".yaml", ".yml")):  # a bare name is read as NAME.yaml: name the file
                raise HelixloomError(f"a judge template is {' or '.join(_BUILTIN_TEMPLATES)} or a .yaml file")
            return self._value(IN, option, value)
        if kind == REWARD:
            return self._reward(value)
        raise AssertionError(kind)

    def _inside(self, value: str, roots: tuple[str, ...]) -> Path:
        """``value`` resolved under one of the home's ``roots``; relative paths are the home's."""
        home = self.home.resolve()
        path = confined(value, home)
        if not any(path == home / r or (home / r) in path.parents for r in roots):
            raise HelixloomError(
                f"{value} is outside {' and '.join(r + '/' for r in roots)} of HELIXLOOM_HOME",
                "jobs started over HTTP read uploads/ (PUT /api/files/NAME) and outputs/, and write outputs/",
            )
        return path

    def _relative(self, path: Path) -> str:
        # The job runs in the home: a relative path names the same file and keeps the home's
        # location out of what a client sees (the job's argv is part of GET /api/jobs).
        return str(path.relative_to(self.home.resolve()))

    def _reward(self, spec: str) -> str:
        kind, _, arg = spec.partition(":")
        if kind not in _SAFE_REWARDS:
            raise HelixloomError(
                f"reward {spec!r} cannot be used from the API",
                f"jobs may use {', '.join(_SAFE_REWARDS)} rewards; Python rewards only from the CLI",
            )
        if kind in ("rm", "head"):
            # A trained reward by name only: its folder's settings (base model, adapter path) are
            # trusted, so it must be one the CLI trained under rewards/, never a folder a client wrote.
            check_name(arg, "reward name")
            if arg not in self.rewards:
                raise HelixloomError(f"no trained reward {arg!r}", "train it first (train reward NAME)")
            return f"{kind}:{self._relative(self.home.resolve() / 'rewards' / arg)}"
        if kind == "improve":
            # a run by name (its folder under runs/improve, written by the loop, never by a client)
            from helixloom.training.reward_spec import parse_improve_arg

            name, _ = parse_improve_arg(arg)
            if not (self.home / "runs" / "improve" / name / "run.json").is_file():
                raise HelixloomError(f"no improve run {name!r}", "start it first (improve --name NAME)")
        elif kind == "judge" and arg:
            self._value(MODEL, "--reward", arg)
        elif kind in ("rubric", "constitution") and arg:
            return f"{kind}:{self._value(IN, '--reward', arg)}"
        return spec


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, Any] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return None


def _abbreviation(by_option: dict[str, argparse.Action], option: str) -> argparse.Action | None:
    """argparse accepts a unique prefix of a long option; so must we, or a prefix would slip past."""
    if not option.startswith("--"):
        return None
    hits = {a for o, a in by_option.items() if o.startswith(option)}
    return hits.pop() if len(hits) == 1 else None
