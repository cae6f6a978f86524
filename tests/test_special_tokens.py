"""Special tokens never reach text: the tiny model, with Gemma 3's unmarked `<start_of_image>` added,
is made to emit special tokens by a scripted sampler; neither its text nor a streamed delta shows them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from helixloom.engine import GenerationRequest, GenerationResult, StreamDelta, sampling
from helixloom.engine.detok import is_control_marker
from helixloom.engine.hf import HFEngine, decode
from tests.conftest import TinyModel

MARKER = "<start_of_image>"  # added, not special: as Gemma 3's tokenizer and GGUF have it
HTML = "<table>"  # added, not special, and ordinary text


@pytest.fixture(scope="module")
def marked_engine(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> HFEngine:
    """The tiny model with MARKER and HTML added to its tokenizer as non-special tokens."""
    from tokenizers import AddedToken
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("marked")
    shutil.copytree(tiny_model.path, out, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.add_tokens([AddedToken(MARKER, special=False), AddedToken(HTML, special=False)])
    tokenizer.save_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(out)
    return HFEngine.load(str(out))


def _script(engine: HFEngine, monkeypatch: pytest.MonkeyPatch, pieces: list[str]) -> list[int]:
    """Make the sampler emit ``pieces`` (each one token) in order, whatever the logits say."""
    ids = [int(engine.tokenizer.convert_tokens_to_ids(p)) for p in pieces]
    queue: Iterator[int] = iter(ids)
    monkeypatch.setattr(decode, "sample", lambda *_: next(queue))
    return ids


def _run(engine: HFEngine, **kw: object) -> tuple[GenerationResult, list[str]]:
    request = GenerationRequest("The quick brown fox", sampling(max_tokens=5, temperature=0, **kw))
    deltas: list[str] = []
    result = None
    for event in engine.stream(request):
        if isinstance(event, StreamDelta):
            deltas.append(event.text)
        else:
            result = event
    assert result is not None
    return result, deltas


def test_markers_are_told_from_text() -> None:
    assert is_control_marker("<start_of_image>") and is_control_marker("[multimodal]")
    assert is_control_marker("<|image|>")
    assert not is_control_marker("<table>") and not is_control_marker("</td>")
    assert not is_control_marker("\n\n") and not is_control_marker("a <b> c")


def test_special_tokens_never_reach_text(marked_engine: HFEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = marked_engine.tokenizer
    ids = _script(marked_engine, monkeypatch, [MARKER, "Ġquick", "<|user|>", HTML, "Ġfox"])
    assert {ids[0], ids[2]} <= marked_engine.special_ids and ids[3] not in marked_engine.special_ids
    result, deltas = _run(marked_engine)
    assert result.token_ids == tuple(ids)  # the tokens were generated...
    assert result.text == " quick<table> fox"  # ...but only the text ones are text
    assert "".join(deltas) == result.text
    assert not any(MARKER in d or "<|user|>" in d for d in deltas)
    assert tok.decode(ids, skip_special_tokens=True) != result.text  # the tokenizer alone lets MARKER in


def test_asking_for_special_tokens_shows_them(
    marked_engine: HFEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _script(marked_engine, monkeypatch, [MARKER, "Ġquick", "<|user|>", HTML, "Ġfox"])
    result, deltas = _run(marked_engine, skip_special_tokens=False)
    assert result.text == "<start_of_image> quick<|user|><table> fox"
    assert "".join(deltas) == result.text
