"""Grammar-constrained generation: JSON schema, JSON object, regex and choice, per row in a batch."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from helixloom.engine import Constraint, GenerationRequest, sampling
from helixloom.engine.hf import HFEngine
from helixloom.errors import HelixloomError
from tests.conftest import TinyModel

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["actor", "critic", "regenerator"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
        },
    },
    "required": ["name", "age", "role", "tags", "address"],
}


@pytest.fixture
def engine(tiny_adapted_engine: HFEngine) -> HFEngine:
    """The session's shared engine, with alpha loaded."""
    return tiny_adapted_engine


def parses(text: str, schema: dict[str, object]) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


def test_sampled_outputs_all_satisfy_the_schema(engine: HFEngine) -> None:
    constraint = Constraint.json_schema(PERSON)
    params = sampling(temperature=1.0, max_tokens=160, seed=0)
    requests = [
        GenerationRequest(
            "Describe a person as JSON:", params.model_copy(update={"seed": i}), None, constraint
        )
        for i in range(50)
    ]
    results = []
    for start in range(0, 50, 10):
        results += engine.generate(requests[start : start + 10])
    assert all(r.finish_reason == "stop" for r in results), [
        r.text for r in results if r.finish_reason != "stop"
    ]
    for r in results:
        assert parses(r.text, PERSON), r.text
    assert len({r.text for r in results}) > 40  # sampled, not one answer repeated
    # Without the constraint the random model writes no valid JSON: the test above can fail.
    free = engine.generate(
        [
            GenerationRequest("Describe a person as JSON:", params.model_copy(update={"seed": i}))
            for i in range(10)
        ]
    )
    assert sum(parses(r.text, PERSON) for r in free) == 0


def test_mixed_batch_rows_equal_solo_runs(engine: HFEngine) -> None:
    greedy = sampling(temperature=0, max_tokens=120)
    rows = [
        GenerationRequest("The quick brown fox", greedy),
        GenerationRequest("A person:", greedy, None, Constraint.json_schema(PERSON)),
        GenerationRequest("Pick one:", greedy, "alpha", Constraint.choice(["yes", "no", "maybe"])),
        GenerationRequest("Code:", greedy, None, Constraint.regex(r"[A-Z]{3}-[0-9]{4}")),
        GenerationRequest("Anything:", greedy, None, Constraint.json_object()),
        GenerationRequest("Paris is", greedy, "alpha"),
    ]
    batch = engine.generate(rows)
    for request, result in zip(rows, batch, strict=True):
        assert engine.generate([request])[0].token_ids == result.token_ids
    assert parses(batch[1].text, PERSON)
    assert batch[2].text in ("yes", "no", "maybe")
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{4}", batch[3].text)
    # json_object is an object (a random tiny model may not close it within max_tokens)
    assert batch[4].text.startswith("{")
    assert batch[4].finish_reason == "length" or isinstance(json.loads(batch[4].text), dict)
    assert not parses(batch[0].text, PERSON)


def test_cut_off_output_is_length_not_valid(engine: HFEngine) -> None:
    result = engine.generate(
        [
            GenerationRequest(
                "A person:", sampling(temperature=0, max_tokens=5), None, Constraint.json_schema(PERSON)
            )
        ]
    )[0]
    assert result.finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.text)


def test_properties_are_written_in_the_schema_order(engine: HFEngine) -> None:
    # "question" sorts after "answer": a constraint that sorted the schema's keys would write the
    # answer first, and a teacher would answer a question it has not asked yet.
    schema = {
        "type": "object",
        "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
        "required": ["question", "answer"],
    }
    constraint = Constraint.json_schema(schema)
    assert Constraint.json_schema(json.dumps(schema)) == constraint
    requests = [
        GenerationRequest("A question and its answer:", sampling(max_tokens=40, seed=seed), None, constraint)
        for seed in range(3)
    ]
    for result in engine.generate(requests):
        assert result.text.startswith('{"question"'), result.text


def test_no_surrogate_bytes_in_constrained_text(engine: HFEngine) -> None:
    # xgrammar reads ED A0..BF as a character; it is a UTF-16 surrogate, not UTF-8, and decodes to three
    # U+FFFD (a maxLength 10 string came back 12 characters long). After a token ending in ED only the
    # valid second bytes 80..9F may follow.
    import torch

    byte_token = {raw[0]: i for i, raw in enumerate(_decoded_vocab(engine)) if len(raw) == 1}
    row = engine._grammars.matcher(Constraint.json_schema({"type": "string", "maxLength": 3}))
    for byte in (ord('"'), 0xED):
        row.accept(byte_token[byte])
    allowed = row.mask(torch.zeros(engine.model.config.vocab_size)) > float("-inf")
    assert all(allowed[byte_token[b]] for b in range(0x80, 0xA0))
    assert not any(allowed[byte_token[b]] for b in range(0xA0, 0xC0))
    row.accept(byte_token[0x9F])  # ED 9F: U+D7C0..U+D7FF, a real character
    assert row.mask(torch.zeros(engine.model.config.vocab_size))[byte_token[0xA0]] > float("-inf")


def _decoded_vocab(engine: HFEngine) -> list[bytes]:
    import xgrammar as xgr

    return [bytes(raw) for raw in xgr.TokenizerInfo.from_huggingface(engine.tokenizer).decoded_vocab]


def test_bad_constraints_are_clear_errors(engine: HFEngine) -> None:
    with pytest.raises(HelixloomError, match="invalid JSON schema"):
        Constraint.json_schema({"type": "nonsense"})
    with pytest.raises(HelixloomError, match="not valid JSON"):
        Constraint.json_schema("{oops")
    with pytest.raises(HelixloomError, match="invalid regex"):
        Constraint.regex("([a-z")
    with pytest.raises(HelixloomError, match="ignore_eos"):
        GenerationRequest("x", sampling(ignore_eos=True), None, Constraint.json_object())


def test_cli_json_schema(capsys: pytest.CaptureFixture[str], tiny_model: TinyModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from helixloom.cli import main

    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    code = main(["generate", "A person:", "--model", str(tiny_model.path), "--json-schema", str(schema),
                 "--max-tokens", "160", "--seed", "4", "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert parses(json.loads(out)["text"], PERSON)
    assert main(["generate", "Pick:", "--model", str(tiny_model.path), "--choice", "red", "--choice", "blue",
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["text"] in ("red", "blue")
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "nonsense"}')
    assert main(["generate", "x", "--model", str(tiny_model.path), "--json-schema", str(bad)]) == 2
    assert "invalid JSON schema" in capsys.readouterr().err
