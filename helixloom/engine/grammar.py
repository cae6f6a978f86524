"""Grammar-constrained decoding for backends that sample their own tokens (the hf engine).

xgrammar compiles a constraint (JSON schema, any JSON, regex, choice) against the tokenizer's
vocabulary once; each constrained row then gets its own matcher, which masks the logits before
sampling and advances with every accepted token. Rows with and without constraints, or with
different ones, share a batch: masking is per row.

xgrammar's UTF-8 reading lets a string hold the bytes of a UTF-16 surrogate (ED A0..BF ..), which is
not UTF-8: decoded, each byte turns into U+FFFD, so the text breaks a schema's maxLength the grammar
counted as one character. ``RowMatcher`` keeps those byte pairs out, within a token and across two.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from helixloom.engine.types import Constraint
from helixloom.errors import HelixloomError

if TYPE_CHECKING:
    import torch


#: Compiled grammars kept per engine (least recently used dropped first).
CACHE_SIZE = 64
#: A compile that takes longer is refused for its request (it still finishes, and is cached, in the
#: background); schema caps (``Constraint.json_schema``) keep compiles well under it.
COMPILE_TIMEOUT_S = 10.0


# Compiles run on a small shared pool: a flood of distinct schemas queues instead of starting a
# thread each (a compile that timed out for its request keeps its worker until it finishes).
_COMPILERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grammar")


class Grammars:
    """Compiles constraints for one tokenizer, caching compiled grammars by constraint.

    Compiling happens outside the engine's lock and outside any lock shared by other constraints, so
    a large schema never holds up other requests; the same constraint is compiled once even when
    several requests ask for it at the same time.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._stop_ids = stop_token_ids
        self._compiler: Any = None
        self._compiled: OrderedDict[Constraint, Future[Any]] = OrderedDict()
        self._surrogates: SurrogateMasks | None = None
        self._lock = threading.Lock()  # guards the cache and the compiler's creation only

    def _get_compiler(self) -> Any:
        import xgrammar as xgr

        with self._lock:
            if self._compiler is None:
                # Building the vocabulary index takes ~1-2 s for a 262k vocabulary; done once per engine.
                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._stop_ids
                )
                self._compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
                self._surrogates = SurrogateMasks.of(info.decoded_vocab, self._vocab_size)
            return self._compiler

    def compile(self, constraint: Constraint, timeout: float | None = None) -> Any:
        """The compiled grammar; raises ``HelixloomError`` for a constraint xgrammar cannot compile,
        or that takes more than ``timeout`` seconds (None: wait as long as it takes)."""
        compiler = self._get_compiler()
        with self._lock:
            future = self._compiled.get(constraint)
            mine = future is None
            if future is None:
                future = Future()
                self._compiled[constraint] = future
                while len(self._compiled) > CACHE_SIZE:
                    self._compiled.popitem(last=False)
            self._compiled.move_to_end(constraint)
        if mine:
            _COMPILERS.submit(self._compile, compiler, constraint, future)
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise HelixloomError(
                f"the {constraint.kind} constraint took over {timeout:.0f} s to compile",
                "use a smaller schema",
                param="response_format",
            ) from None

    def _compile(self, compiler: Any, constraint: Constraint, future: Future[Any]) -> None:
        try:
            if constraint.kind == "json_schema":
                # Compact separators (", " and ": "): unbounded whitespace lets weak models pad forever.
                grammar = compiler.compile_json_schema(constraint.spec, any_whitespace=False)
            elif constraint.kind == "json_object":
                # OpenAI's json_object is an object; xgrammar's built-in JSON grammar takes any value.
                grammar = compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
            elif constraint.kind == "regex":
                grammar = compiler.compile_regex(constraint.spec)
            else:
                options = json.loads(constraint.spec)
                grammar = compiler.compile_grammar(
                    "root ::= " + " | ".join(json.dumps(o, ensure_ascii=False) for o in options)
                )
        except Exception as exc:  # xgrammar raises RuntimeError (and others) for what it cannot compile
            reason = _public_reason(exc)
            with self._lock:  # a failure is not cached: the next request gets its own message
                if self._compiled.get(constraint) is future:
                    del self._compiled[constraint]
            future.set_exception(HelixloomError(f"cannot compile the {constraint.kind} constraint: {reason}"))
            return
        future.set_result(grammar)

    def matcher(self, constraint: Constraint, forbidden: torch.Tensor | None = None) -> RowMatcher:
        """A fresh grammar state for one row; ``forbidden`` ([V] bool) tokens are never allowed."""
        import xgrammar as xgr

        # Normally cached by the request's validation; a timeout here fails its row, not the engine.
        grammar = self.compile(constraint, timeout=COMPILE_TIMEOUT_S)
        assert self._surrogates is not None  # built with the compiler
        return RowMatcher(xgr.GrammarMatcher(grammar), self._vocab_size, self._surrogates, forbidden)


class SurrogateMasks:
    """Masks ([V] bool) of the tokens that would put a UTF-16 surrogate's bytes (ED A0..BF) in the text."""

    def __init__(self, inside: torch.Tensor, after_lead: torch.Tensor, ends_in_lead: list[bool]) -> None:
        self.inside = inside  # tokens holding ED A0..BF themselves
        self.after_lead = after_lead  # tokens starting with A0..BF: never right after a token ending in ED
        self.ends_in_lead = ends_in_lead  # per token: its last byte is ED
        self._on: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}

    def on(self, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``inside`` and ``after_lead`` on ``device``, copied there once."""
        if device not in self._on:
            self._on[device] = (self.inside.to(device), self.after_lead.to(device))
        return self._on[device]

    @classmethod
    def of(cls, vocab: list[bytes], vocab_size: int) -> SurrogateMasks:
        import re

        import torch

        vocab = [bytes(raw) for raw in vocab[:vocab_size]] + [b""] * (vocab_size - len(vocab))
        surrogate = re.compile(rb"\xed[\xa0-\xbf]")
        inside = [surrogate.search(raw) is not None for raw in vocab]
        after_lead = [b"\xa0" <= raw[:1] <= b"\xbf" for raw in vocab]
        ends_in_lead = [raw[-1:] == b"\xed" for raw in vocab]
        return cls(torch.tensor(inside), torch.tensor(after_lead), ends_in_lead)


class RowMatcher:
    """The grammar state of one row."""

    def __init__(
        self,
        matcher: Any,
        vocab_size: int,
        surrogates: SurrogateMasks,
        forbidden: torch.Tensor | None = None,
    ) -> None:
        import xgrammar as xgr

        self._matcher = matcher
        self._surrogates = surrogates
        self._after_lead = False  # the last accepted token ended in ED, a lead byte awaiting its next
        self._forbidden = forbidden
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._vocab_size = vocab_size

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ([V]) with every token the grammar forbids next set to -inf."""
        import xgrammar as xgr

        self._matcher.fill_next_token_bitmask(self._bitmask)
        masked = logits[None].clone()  # masked: [1, V]
        xgr.apply_token_bitmask_inplace(masked, self._bitmask.to(masked.device), vocab_size=self._vocab_size)
        inside, after_lead = self._surrogates.on(masked.device)
        for forbidden in (self._forbidden, inside, after_lead if self._after_lead else None):
            if forbidden is not None:
                masked[0, : forbidden.shape[0]].masked_fill_(forbidden, float("-inf"))
        return masked[0]

    def accept(self, token_id: int) -> None:
        if not self._matcher.accept_token(token_id):
            raise RuntimeError(f"the grammar refused token {token_id} it had allowed")
        ends = self._surrogates.ends_in_lead
        self._after_lead = token_id < len(ends) and ends[token_id]

    @property
    def terminated(self) -> bool:
        return bool(self._matcher.is_terminated())


def _public_reason(exc: BaseException) -> str:
    """The last line of a compiler error, without the source file paths C++ libraries put in it."""
    import re

    text = str(exc).strip()
    line = text.splitlines()[-1] if text else type(exc).__name__
    line = re.sub(r"(?:[A-Za-z]:)?(?:/[^\s:/]+)+/?(?::\d+)*:?\s*", "", line).strip()
    return line[:200] or type(exc).__name__
