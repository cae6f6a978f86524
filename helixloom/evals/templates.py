"""Judge prompts: templates (MT-bench's ``pair-v2`` and ``single-v1``, or a YAML file) and asking a judge
with them.

A template is a system text, a user text with ``{field}`` slots and the prefix that starts the verdict
(``[[`` for MT-bench). Both judges (pairwise and grading) ask the same way: greedy, in one engine call,
either letting the judge explain before its verdict (MT-bench) or putting the verdict prefix in its
mouth and reading a few tokens.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml

from helixloom import prompting
from helixloom.engine import Engine, GenerationRequest, sampling
from helixloom.errors import HelixloomError

TemplateKind = Literal["pair", "single"]

JUDGE_MAX_TOKENS = 512  # MT-bench's judge gets 2048; a short explanation fits in far less
SHORT_MAX_TOKENS = 8  # without an explanation only the verdict is generated
TEMPLATE_FIELDS = {"pair": ("{question}", "{answer_a}", "{answer_b}"), "single": ("{question}", "{answer}")}
BUILTIN_TEMPLATES = {"pair": "pair-v2", "single": "single-v1"}


@dataclass(frozen=True)
class JudgeTemplate:
    """A judge prompt: a system text, a user template and the prefix that starts the verdict."""

    name: str
    system: str
    user: str
    verdict_prefix: str

    @classmethod
    def load(cls, name_or_path: str | None = None, *, kind: TemplateKind) -> JudgeTemplate:
        """A built-in template by name (``pair-v2``, ``single-v1``; the default for ``kind`` when None)
        or a YAML file with ``system``, ``user`` and ``verdict_prefix`` keys."""
        name_or_path = name_or_path or BUILTIN_TEMPLATES[kind]
        path = Path(name_or_path).expanduser()
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise HelixloomError(f"judge template {path} does not exist")
            text = path.read_text(encoding="utf-8")
        else:
            builtin = resources.files("helixloom") / "data" / "evals" / f"{name_or_path}.yaml"
            if not builtin.is_file():
                raise HelixloomError(
                    f"unknown judge template {name_or_path!r}",
                    f"use {BUILTIN_TEMPLATES[kind]} or a .yaml file with system, user and verdict_prefix",
                )
            text = builtin.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise HelixloomError(f"judge template {name_or_path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise HelixloomError(f"judge template {name_or_path} must be a YAML mapping")
        unknown = sorted(set(data) - {"name", "system", "user", "verdict_prefix"})
        if unknown:
            raise HelixloomError(f"judge template {name_or_path}: unknown keys {', '.join(unknown)}")
        if not isinstance(data.get("user"), str) or not isinstance(data.get("verdict_prefix"), str):
            raise HelixloomError(f"judge template {name_or_path} needs string keys user and verdict_prefix")
        template = cls(
            name=str(data.get("name") or path.stem),
            system=str(data.get("system") or ""),
            user=data["user"],
            verdict_prefix=data["verdict_prefix"],
        )
        missing = [f for f in TEMPLATE_FIELDS[kind] if f not in template.user]
        if missing:
            raise HelixloomError(
                f"judge template {name_or_path} has no {', '.join(missing)} in its user text",
                f"a {kind} template fills {', '.join(TEMPLATE_FIELDS[kind])}",
            )
        return template

    def messages(self, **fields: str) -> list[dict[str, str]]:
        """The chat messages with every ``{field}`` filled in one pass (answers may contain braces)."""
        pattern = re.compile(r"\{(" + "|".join(re.escape(k) for k in fields) + r")\}")
        user = pattern.sub(lambda m: fields[m.group(1)], self.user)
        return ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": user}
        ]

    @classmethod
    def of(cls, template: JudgeTemplate | str | None, kind: TemplateKind) -> JudgeTemplate:
        """``template`` itself, or the one ``load`` finds by that name or path (None: ``kind``'s default)."""
        return template if isinstance(template, JudgeTemplate) else cls.load(template, kind=kind)

    def render(self, engine: Engine, fields: Mapping[str, str]) -> prompting.ChatPrompt:
        """The filled template as ``engine``'s prompt for the judge's reply."""
        return prompting.render(engine, self.messages(**fields))


def write_judgments(
    engine: Engine,
    template: JudgeTemplate,
    fields: Sequence[Mapping[str, str]],
    *,
    adapter: str | None,
    explain: bool,
    max_tokens: int,
) -> list[str]:
    """The judge's reply to ``template`` filled with each of ``fields``: greedy, in one engine call.

    With ``explain`` the judge writes its explanation, then its verdict (MT-bench). Without, the
    verdict prefix is put in the judge's mouth and only a few tokens are generated; the reply returned
    then starts with that prefix, so one parser reads both."""
    prefix = template.verdict_prefix
    requests = []
    for f in fields:
        r = template.render(engine, f)
        if explain:
            params = sampling(
                temperature=0, max_tokens=max_tokens, stop=r.stop, token_healing=r.token_healing
            )
            requests.append(GenerationRequest(r.prompt, params, adapter))
        else:
            params = sampling(temperature=0, max_tokens=min(max_tokens, SHORT_MAX_TOKENS), stop=r.stop)
            requests.append(GenerationRequest(r.prompt + prefix, params, adapter))
    return [result.text if explain else prefix + result.text for result in engine.generate(requests)]
