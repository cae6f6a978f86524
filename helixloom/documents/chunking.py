"""Token-budgeted chunking: a text cut into pieces that fit a token budget as the caller's tokenizer
counts them, with overlap, preferring paragraph breaks, then line breaks, then spaces."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

from helixloom.errors import HelixloomError

_PARAGRAPH, _LINE, _SPACE, _NONE = 0, 1, 2, 3  # strength of the break before a unit, strongest first


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    tokens: int
    level: int  # the break between the previous unit and this one


def chunk(
    text: str,
    count_tokens: Callable[[str], int],
    *,
    max_tokens: int = 1024,
    overlap_tokens: int = 128,
) -> list[str]:
    """Cut ``text`` into chunks of at most ``max_tokens`` as ``count_tokens`` counts them.

    Every chunk is a slice of ``text`` with no whitespace at either end. Each chunk after the first starts
    with the last ~``overlap_tokens`` of the previous chunk, from a word start (left out only where the
    next piece of text would not fit beside it). Cuts fall at blank lines where a cut there leaves the
    chunk at least half full, else at line breaks, else between words; a single word is cut only when it
    alone exceeds ``max_tokens``. Dropping each chunk's overlap and joining the rest gives back the text
    up to whitespace at the cuts. The tokenizer runs over each part of the text a bounded number of
    times, so the work grows linearly with the text.
    """
    if max_tokens < 16:
        raise HelixloomError(f"max_tokens must be at least 16, not {max_tokens}", param="max_tokens")
    if not 0 <= overlap_tokens < max_tokens / 2:
        raise HelixloomError(
            f"overlap_tokens must be at least 0 and under half of max_tokens ({max_tokens}), "
            f"not {overlap_tokens}",
            param="overlap_tokens",
        )
    units = _units(text, count_tokens, max_tokens)
    if not units:
        return []
    prefix = [0]  # prefix[i]: estimated tokens of units[:i]
    for u in units:
        prefix.append(prefix[-1] + u.tokens)
    chunks: list[str] = []
    first = 0  # the first unit not yet in any chunk
    overlap_start, overlap_count = units[0].start, 0
    while first < len(units):
        if overlap_count + units[first].tokens > max_tokens:
            overlap_start, overlap_count = units[first].start, 0
        # The most units that fit by estimate, then the best break among them, then check the real count.
        limit = first + 1
        while limit < len(units) and overlap_count + prefix[limit + 1] - prefix[first] <= max_tokens:
            limit += 1
        while True:
            end = _best_cut(units, prefix, first, limit, max_tokens - overlap_count)
            piece = text[overlap_start : units[end - 1].end]
            real = count_tokens(piece)
            if real <= max_tokens:
                break
            if end == first + 1:  # one unit fits alone by construction: give up the overlap
                overlap_start, overlap_count = units[first].start, 0
                continue
            excess, limit = real - max_tokens, end - 1
            while limit > first + 1 and prefix[end] - prefix[limit] < excess:
                limit -= 1
        chunks.append(piece)
        first = end
        if first < len(units) and overlap_tokens:
            overlap_start, overlap_count = _overlap(
                text, overlap_start, units[end - 1].end, real, count_tokens, overlap_tokens
            )
            if overlap_start == units[end - 1].end:
                overlap_start = units[first].start
        elif first < len(units):
            overlap_start, overlap_count = units[first].start, 0
    return chunks


def _best_cut(units: list[_Unit], prefix: list[int], first: int, limit: int, budget: int) -> int:
    """The end (exclusive unit index) in ``first+1..limit`` with the strongest break, latest on ties,
    among the ends that fill at least half of ``budget``."""
    if limit == len(units):
        return limit
    half = prefix[first] + budget / 2
    ends = [e for e in range(first + 1, limit + 1) if prefix[e] >= half] or list(range(first + 1, limit + 1))
    return min(ends, key=lambda e: (units[e].level, -e))


_WORD_START = re.compile(r"(?<!\S)\S")


def _overlap(
    text: str, start: int, end: int, end_count: int, count_tokens: Callable[[str], int], budget: int
) -> tuple[int, int]:
    """(start, tokens) of the longest tail of ``text[start:end]`` that begins at a word start and counts
    at most ``budget`` tokens; ``(end, 0)`` when even its last word is too long."""
    chars_per_token = (end - start) / max(end_count, 1)
    for reach in (int(chars_per_token * budget * 2) + 64, end - start):  # a guess, then the whole chunk
        window = max(start, end - reach)
        starts = [m.start() for m in _WORD_START.finditer(text, window, end)]  # sees text before window
        if not starts:
            continue
        if window > start and count_tokens(text[starts[0] : end]) <= budget:
            continue  # the window was too small: the overlap may reach further back
        lo, hi, best = 0, len(starts) - 1, (end, 0)
        while lo <= hi:  # the earliest start whose tail fits; tails shrink as the start moves right
            mid = (lo + hi) // 2
            n = count_tokens(text[starts[mid] : end])
            if n <= budget:
                best, hi = (starts[mid], n), mid - 1
            else:
                lo = mid + 1
        return best
    return end, 0


def _units(text: str, count_tokens: Callable[[str], int], max_tokens: int) -> list[_Unit]:
    """The text as spans that each fit ``max_tokens``: whole paragraphs where they fit, else lines, else
    words, else pieces of a word; each with the strength of the break before it."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    levels = [_PARAGRAPH]
    for (_, prev_end), (start, _) in itertools.pairwise(words):
        newlines = text.count("\n", prev_end, start)
        levels.append(_PARAGRAPH if newlines >= 2 else _LINE if newlines else _SPACE)
    units: list[_Unit] = []
    _split(text, words, levels, 0, len(words), _PARAGRAPH, count_tokens, max_tokens, units)
    return units


def _split(
    text: str,
    words: list[tuple[int, int]],
    levels: list[int],
    lo: int,
    hi: int,
    level: int,
    count_tokens: Callable[[str], int],
    max_tokens: int,
    out: list[_Unit],
) -> None:
    """Append units for ``words[lo:hi]``, grouped at breaks of ``level`` or stronger, splitting groups
    that do not fit at the next weaker level."""
    group = lo
    for i in range(lo + 1, hi + 1):
        if i < hi and levels[i] > level:
            continue
        start, end = words[group][0], words[i - 1][1]
        n = count_tokens(text[start:end])
        if n <= max_tokens:
            out.append(_Unit(start, end, n, levels[group]))
        elif level == _SPACE:  # a single word longer than a chunk
            _split_word(text, start, end, levels[group], count_tokens, max_tokens, out)
        else:
            _split(text, words, levels, group, i, level + 1, count_tokens, max_tokens, out)
        group = i


def _split_word(
    text: str,
    start: int,
    end: int,
    level: int,
    count_tokens: Callable[[str], int],
    max_tokens: int,
    out: list[_Unit],
) -> None:
    """Cut one over-long word into the longest pieces that fit (found by doubling, then bisection)."""
    while start < end:
        good, bad, step = start + 1, end + 1, 1  # text[start:good] fits (one character always does)
        while good < end:  # grow by doubling steps until a piece does not fit
            probe = min(good + step, end)
            if count_tokens(text[start:probe]) > max_tokens:
                bad = probe
                break
            good, step = probe, step * 2
        while bad - good > 1:
            mid = (good + bad) // 2
            if count_tokens(text[start:mid]) <= max_tokens:
                good = mid
            else:
                bad = mid
        out.append(_Unit(start, good, count_tokens(text[start:good]), level))
        start, level = good, _NONE
