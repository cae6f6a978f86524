"""Constraints as llama.cpp grammars (GBNF), for the llamacpp backend.

JSON schemas, any JSON and choices use llama-cpp-python's own converters. A regex has none there, so
xgrammar (already the hf engine's grammar library) turns it into EBNF, which llama.cpp's GBNF parser
reads once written in its dialect (``_llama_syntax``): the same constraint kinds on both
backends. Every grammar is parsed by llama.cpp here, before it is used: llama-cpp-python defers the
parse to sampling, where a grammar llama.cpp cannot read crashes the process.
"""

from __future__ import annotations

import json
import re
from typing import Any

from helixloom.engine.types import Constraint
from helixloom.errors import HelixloomError


def llama_grammar(constraint: Constraint, vocab: Any) -> Any:
    """The ``LlamaGrammar`` for ``constraint``, checked against the model's ``vocab`` (its
    ``llama_vocab`` pointer); ``HelixloomError`` when llama.cpp cannot read it."""
    grammar = _convert(constraint)
    if not _parses(grammar, vocab):
        raise HelixloomError(
            f"llama.cpp cannot read the grammar of this {constraint.kind} constraint",
            "simplify it, or run on the hf engine (--engine hf)",
            param="response_format",
        )
    return grammar


def _parses(grammar: Any, vocab: Any) -> bool:
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(
        vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
    )
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


def _convert(constraint: Constraint) -> Any:
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import JSON_GBNF

    try:
        if constraint.kind == "json_schema":
            return LlamaGrammar.from_json_schema(constraint.spec, verbose=False)
        if constraint.kind == "json_object":
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        if constraint.kind == "choice":
            options = json.loads(constraint.spec)
            return LlamaGrammar.from_string(
                "root ::= " + " | ".join(json.dumps(o) for o in options), verbose=False
            )
        import xgrammar as xgr

        ebnf = _llama_syntax(str(xgr.Grammar.from_regex(constraint.spec)))
        return LlamaGrammar.from_string(ebnf, verbose=False)
    except (
        Exception
    ) as exc:  # the converters assert, raise ValueError or RuntimeError on what they cannot read
        raise HelixloomError(
            f"llama.cpp cannot use this {constraint.kind} constraint ({exc})",
            "simplify it, or run on the hf engine (--engine hf)",
            param="response_format",
        ) from exc


# A quoted literal or a character class (with its escapes), a repetition count such as {3, 5}, or a
# rule name.
_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|\{\s*(\d*)\s*,\s*(\d*)\s*\}|[A-Za-z][\w-]*')


def _llama_syntax(ebnf: str) -> str:
    """xgrammar's EBNF in llama.cpp's dialect: counts written ``{3,5}`` (not ``{3, 5}``) and rule names
    without underscores (``root-1``, not ``root_1``). Literals and character classes stay as they are."""

    def fix(m: re.Match[str]) -> str:
        token = m.group(0)
        if token[0] in '"[':
            return token
        if token[0] == "{":
            return f"{{{m[1]},{m[2]}}}"
        return token.replace("_", "-")

    return _TOKEN.sub(fix, ebnf)
