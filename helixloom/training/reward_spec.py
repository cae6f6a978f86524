"""A reward spec string (``--reward SPEC``) to the ``Reward`` it names.

Specs:

- ``evaluator`` / ``evaluator:QUESTION``: the zero-shot yes/no evaluator (log-odds of yes), with the
  default helpfulness question or one question ("no:" prefix when no is good, "W*" for a weight);
- ``rubric:FILE``: the evaluator with several questions, one a line;
- ``constitution`` / ``constitution:FILE``: MiniHF's constitution format, each principle asked of the
  evaluator, signed by its desired answer and combined with a weighted soft minimum (RLAIF);
- ``rm:NAME_OR_PATH``: a reward model trained by ``helixloom train reward``;
- ``head:NAME_OR_PATH``: a reward head trained by ``helixloom train reward-head``;
- ``improve:NAME`` / ``improve:NAME@ROUND``: the reward the improve run NAME learned from its users'
  ratings (its latest round's, or round ROUND's), on the run's base model;
- ``judge`` / ``judge:SPEC``: a pairwise LLM judge; a group of responses to one prompt is scored by
  a round-robin tournament (both orders per pair), as RLHFlow's pairwise preference model;
- ``py:MODULE:FUNCTION`` or ``py:FILE.py:FUNCTION``: a Python function
  ``f(prompts, responses) -> list[float]`` (scripted rewards, tests, custom heuristics).

It lives with the training recipes because it reaches every kind of reward, trained ones and the
judge included; the rewards themselves know nothing of specs.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helixloom.errors import HelixloomError
from helixloom.rewards import Constitution, ConstitutionReward, EvaluatorReward, FunctionReward, Reward

if TYPE_CHECKING:
    from helixloom.engine import Engine
    from helixloom.store import Store


def load_function(spec: str) -> Callable[..., Any]:
    """``MODULE:FUNCTION`` or ``FILE.py:FUNCTION`` to the callable."""
    target, sep, fn_name = spec.rpartition(":")
    if not sep or not target or not fn_name:
        raise HelixloomError(f"expected py:MODULE:FUNCTION or py:FILE.py:FUNCTION, got py:{spec}")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise HelixloomError(f"reward file {path} does not exist")
        module_spec = importlib.util.spec_from_file_location(f"helixloom_user_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise HelixloomError(f"cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise HelixloomError(f"cannot import reward module {target}: {exc}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise HelixloomError(f"{target} has no function {fn_name}")
    return fn


DEFAULT_QUESTION = "Is the response a helpful, correct and clear answer to the prompt?"


def load_reward(
    spec: str,
    *,
    engine: Engine,
    store: Store | None = None,
    evaluator_adapter: str | None = None,
    evaluator_template: str | None = None,
) -> Reward:
    """Build the reward named by ``spec`` (see the module docstring).

    ``engine`` is the model that evaluates (the policy's base model unless the caller loaded another);
    ``evaluator_adapter`` is an adapter name already loaded on it (e.g. a tuned evaluator).
    """
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "evaluator":
        from helixloom.weave.evaluator import Evaluator, parse_question

        question = parse_question(arg) if arg.strip() else parse_question(DEFAULT_QUESTION)
        evaluator = Evaluator(engine, [question], template=evaluator_template, adapter=evaluator_adapter)
        return EvaluatorReward(evaluator, name=spec)
    if kind == "rubric":
        from helixloom.weave.evaluator import Evaluator, parse_question

        path = Path(arg)
        if not path.is_file():
            raise HelixloomError(f"rubric file {path} does not exist (one question per line)")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        questions = [parse_question(ln) for ln in lines if ln and not ln.startswith("#")]
        evaluator = Evaluator(engine, questions, template=evaluator_template, adapter=evaluator_adapter)
        return EvaluatorReward(evaluator, name=spec)
    if kind == "constitution":
        constitution = Constitution.default() if not arg.strip() else Constitution.load(arg)
        return ConstitutionReward(engine, constitution, adapter=evaluator_adapter)
    if kind == "py":
        return FunctionReward(load_function(arg), name=spec)
    if kind == "rm":
        from helixloom.training.reward_model import RewardModelReward

        return RewardModelReward.load(_artifact(arg, store, "reward model"))
    if kind == "head":
        from helixloom.training.reward_head import RewardHeadReward

        return RewardHeadReward.load(_artifact(arg, store, "reward head"), engine)
    if kind == "improve":
        from helixloom.training.improve import ImproveRun

        name, round_ = parse_improve_arg(arg)
        return ImproveRun.open(name).learned_reward(engine, round_)
    if kind == "judge":
        from helixloom.evals.judge_reward import JudgeReward
        from helixloom.evals.pairwise import PairwiseJudge

        judge_engine = engine
        if arg.strip():
            from helixloom.engine import load_engine

            judge_engine = load_engine(arg.strip())
        return JudgeReward(PairwiseJudge(judge_engine))
    raise HelixloomError(
        f"unknown reward {spec!r}",
        "use evaluator[:QUESTION], rubric:FILE, constitution[:FILE], rm:NAME, head:NAME, improve:NAME, "
        "judge[:SPEC] or py:MODULE:FUNCTION",
    )


def parse_improve_arg(arg: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@ROUND`` of an ``improve:`` spec; the name is checked as a folder name."""
    from helixloom.paths import check_name

    name, at, number = arg.strip().partition("@")
    if not name:
        raise HelixloomError("name the improve run: improve:NAME or improve:NAME@ROUND", param="reward")
    check_name(name, "run name", param="reward")
    if not at:
        return name, None
    # ASCII digits only ("²".isdigit() is true, and int() refuses it), and a few of them
    if not (number.isascii() and number.isdigit() and len(number) <= 6) or int(number) < 1:
        raise HelixloomError(f"improve:{name}@...: the round must be a number from 1", param="reward")
    return name, int(number)


def _artifact(name_or_path: str, store: Store | None, what: str) -> Path:
    """A trained reward artifact: a folder path, or a name under ``HELIXLOOM_HOME/rewards/``."""
    from helixloom import paths

    if not name_or_path.strip():
        raise HelixloomError(f"name the {what}: e.g. rm:NAME or rm:/path/to/folder")
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    named = paths.home() / "rewards" / name_or_path
    if named.is_dir():
        return named
    raise HelixloomError(
        f"no {what} {name_or_path!r}: not a folder, and not under {paths.home() / 'rewards'}"
    )
