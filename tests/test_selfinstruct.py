"""Self-instruct prompt generation: filters and their counts with a scripted model, the few-shot
prompt, the similarity measure, and the CLI end to end on the tiny real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helixloom import textsim
from helixloom.engine import GenerationRequest
from helixloom.errors import HelixloomError
from helixloom.training import selfinstruct
from helixloom.training.selfinstruct import Template, generate_prompts
from tests.conftest import TinyModel
from tests.scripted import ScriptedEngine

SEEDS = [
    "Why is gold considered a good reserve asset for central banks?",
    "What are the top 5 yoga poses for stress relief?",
    "Design a simple HTML chat interface with a message box and a send button.",
    "List 10 names from different cultures and say where each comes from.",
]
EXISTING = ["Explain how a bicycle gear system works to a ten year old."]
GOOD = [
    "Write a haiku about the first snow of winter.",
    "How do I reverse a linked list in Python?",
    "Suggest three board games for a family with young children.",
]


def test_rouge_l_and_index() -> None:
    a = textsim.words("What are the top 5 yoga poses for stress relief?")
    b = textsim.words("what are the top 5 yoga poses for back relief")
    assert a == ["what", "are", "the", "top", "5", "yoga", "poses", "for", "stress", "relief"]
    assert textsim.lcs_length(a, b) == 9 and textsim.rouge_l(a, b) == pytest.approx(0.9)
    assert textsim.rouge_l(["a", "b", "c"], ["c", "b", "a"]) == pytest.approx(1 / 3)  # order matters
    assert textsim.rouge_l([], []) == 1.0 and textsim.rouge_l(["a"], []) == 0.0
    index = textsim.NearDuplicates()
    for i, s in enumerate(SEEDS):
        index.add(s, f"s{i}")
    match = index.closest("What are the top 5 yoga poses for back relief?", 0.7)
    assert match is not None and match.tag == "s1" and match.score == pytest.approx(0.9)
    assert index.closest("Write a haiku about the first snow of winter.", 0.7) is None
    # The pruned search finds the same best match as comparing with everything.
    query = textsim.words("Design a chat interface for central banks with names from different cultures")
    best = max(textsim.rouge_l(query, textsim.words(s)) for s in SEEDS)
    found = index.closest_tokens(query)
    assert found is not None and found.score == pytest.approx(best)


def responder(replies: list[str]):  # type: ignore[no-untyped-def]
    """Replies in order; each is what the model writes after the open list number."""
    queue = list(replies)

    def respond(request: GenerationRequest) -> str:
        return queue.pop(0)

    return respond


def test_filters_keep_exactly_the_good_prompts_and_count_why() -> None:
    replies = [
        " " + SEEDS[1],  # an exact echo of a seed
        " What are the top 5 yoga poses for back relief?",  # a seed with one word changed
        " " + GOOD[0] + "\n6. and the model went on to the next item",  # stops at the newline
        " Hi?",  # too short
        " " + EXISTING[0],  # already in the output file
        " Explain how a bicycle gear system works to a 10 year old.",  # near-duplicate of it
        " " + GOOD[0].replace("winter", "spring"),  # near-duplicate of a prompt just kept
        " ...",  # not a prompt
        " " + GOOD[1],
        " " + "very " * 200 + "long",  # too long
        " ,and then a prompt that starts with punctuation",
        " " + GOOD[2],
        " " + "Never read: enough prompts were kept before this one.",
    ]
    engine = ScriptedEngine(responder(replies))
    kept: list[str] = []
    progress: list[tuple[int, int]] = []
    report = generate_prompts(
        engine,
        SEEDS,
        3,
        batch_size=13,
        existing=EXISTING,
        on_prompt=kept.append,
        on_progress=lambda done, total: progress.append((done, total)),
    )
    assert report.prompts == GOOD and kept == GOOD
    assert report.rejected == {"echo": 2, "duplicate": 3, "too_short": 1, "too_long": 1, "unparseable": 2}
    assert report.attempts == 13 and report.surplus == 1 and not report.gave_up
    assert progress == [(3, 3)]
    assert not set(report.prompts) & set(EXISTING)
    # Every request stops at the end of the line and has its own sampling seed.
    assert all(r.sampling.stop == ("\n",) for r in engine.requests)
    assert len({r.sampling.seed for r in engine.requests}) == 13
    assert "2 a near-copy of a seed prompt" in " ".join(report.summary().split())


def test_few_shot_prompt_shows_seeds_then_generated_prompts() -> None:
    engine = ScriptedEngine(lambda r: f" Write a short story about the number {len(engine.requests)}.")
    report = generate_prompts(engine, SEEDS, 6, shots=3, generated_shots=1, batch_size=2, max_similarity=0.95)
    assert len(report.prompts) == 6
    first = engine.prompts[0]
    assert first.startswith(Template.load().header)
    listed = [line.split(". ", 1)[1] for line in first.splitlines() if line[:1].isdigit() and ". " in line]
    assert len(listed) == 3 and set(listed) <= set(SEEDS)  # nothing generated yet: seeds only
    assert first.endswith("\n4.")
    # Later requests mix in one prompt the model wrote before.
    later = engine.prompts[-1]
    assert sum(p in later for p in report.prompts) == 1 and sum(s in later for s in SEEDS) == 2


def test_existing_prompts_are_never_emitted_and_the_run_gives_up() -> None:
    engine = ScriptedEngine(lambda r: " " + EXISTING[0])
    report = generate_prompts(engine, SEEDS, 2, existing=EXISTING, batch_size=4, max_attempts=10)
    assert report.prompts == [] and report.gave_up and report.attempts == 10
    assert report.rejected["duplicate"] == 10
    assert "gave up after 10 attempts" in report.summary()


def test_same_seed_same_requests() -> None:
    def run(seed: int) -> list[GenerationRequest]:
        engine = ScriptedEngine(lambda r: f" Tell me a fact about the number {len(engine.requests)}.")
        generate_prompts(engine, SEEDS, 3, seed=seed, batch_size=2, max_similarity=0.95)
        return engine.requests

    assert run(1) == run(1) and run(1) != run(2)


def test_bad_arguments() -> None:
    engine = ScriptedEngine([])
    with pytest.raises(HelixloomError, match="no seed prompts"):
        generate_prompts(engine, ["  ", ""], 3)
    with pytest.raises(HelixloomError, match="max_similarity"):
        generate_prompts(engine, SEEDS, 3, max_similarity=0)
    with pytest.raises(HelixloomError):
        generate_prompts(engine, SEEDS, 3, min_chars=50, max_chars=10)


def test_read_seeds(tmp_path: Path) -> None:
    text = tmp_path / "seeds.txt"
    text.write_text("First prompt here\n\n  Second prompt here  \n")
    assert selfinstruct.read_seeds(text) == ["First prompt here", "  Second prompt here  "]
    rows = tmp_path / "seeds.jsonl"
    rows.write_text('{"prompt": "One"}\n{"prompt": "Two", "source": "x"}\n')
    assert selfinstruct.read_seeds(rows) == ["One", "Two"]
    rows.write_text('{"prompt": "One"}\n{"text": "no prompt field"}\n')
    with pytest.raises(HelixloomError, match="line 2 has no prompt"):
        selfinstruct.read_seeds(rows)
    rows.write_text('{"prompt": "One"}\n{not json\n')
    with pytest.raises(HelixloomError, match="line 2 is not JSON"):
        selfinstruct.read_seeds(rows)
    with pytest.raises(HelixloomError, match="does not exist"):
        selfinstruct.read_seeds(tmp_path / "missing.txt")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(HelixloomError, match="has no prompts"):
        selfinstruct.read_seeds(tmp_path / "blank.txt")


def test_cli_end_to_end_on_the_tiny_model(
    capsys: pytest.CaptureFixture[str], tiny_model: TinyModel, tmp_path: Path
) -> None:
    """The real pipeline on a real (random) model: what it writes is byte garbage, which the filters
    reject, so the run either keeps a few prompts or gives up; both must be reported and well formed."""
    from helixloom.cli import main

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": s}) + "\n" for s in SEEDS))
    out = tmp_path / "prompts.jsonl"
    args = ["prompts", "generate", "--seed", str(seeds), "--n", "2", "--out", str(out), "--json"]
    args += ["--model", str(tiny_model.path), "--max-tokens", "32", "--shots", "2", "--batch-size", "8"]
    args += ["--max-attempts", "16", "--max-chars", "100000", "--min-chars", "1"]
    code = main(args)
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert set(summary["rejected"]) == set(selfinstruct.REASONS) and summary["requested"] == 2
    assert (
        summary["generated"] + sum(summary["rejected"].values()) + summary["surplus"] == summary["attempts"]
    )
    assert "prompts generated in" in captured.err
    if code == 0:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == summary["generated"] == 2
        assert all(set(r) == {"prompt"} and r["prompt"].strip() == r["prompt"] != "" for r in rows)
    else:
        assert code == 2 and summary["gave_up"] and summary["attempts"] == 16 and not out.exists()
        assert "no usable prompt in 16 attempts" in captured.err


@pytest.fixture
def scripted_model(monkeypatch: pytest.MonkeyPatch) -> ScriptedEngine:
    """``--model scripted`` is a scripted engine that writes "Prompt number K about topic K."."""
    from helixloom import engine as engine_module
    from helixloom import models

    def respond(request: GenerationRequest) -> str:
        k = len(scripted.requests) - 1
        if k >= 40:
            raise KeyboardInterrupt  # the user pressed ^C
        return f" Prompt number {k} about topic {k}.\n"

    scripted = ScriptedEngine(respond)
    real_load, real_resolve = engine_module.load_engine, models.resolve
    fake = models.ModelSource("scripted", "remote", "scripted", "scripted")
    monkeypatch.setattr(
        engine_module,
        "load_engine",
        lambda spec, **kw: scripted if spec == "scripted" else real_load(spec, **kw),
    )
    monkeypatch.setattr(models, "resolve", lambda spec: fake if spec == "scripted" else real_resolve(spec))
    return scripted


def test_cli_writes_appends_and_keeps_prompts_on_interrupt(
    capsys: pytest.CaptureFixture[str], scripted_model: ScriptedEngine, tmp_path: Path
) -> None:
    from helixloom.cli import main

    seeds = tmp_path / "seeds.txt"
    seeds.write_text("\n".join(SEEDS) + "\n")
    out = tmp_path / "out" / "prompts.jsonl"
    common = ["prompts", "generate", "--seed", str(seeds), "--model", "scripted", "--out", str(out), "--json"]
    assert main([*common, "--n", "3", "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary == {
        "generated": 3, "requested": 3, "attempts": 4, "max_attempts": 34, "surplus": 1, "gave_up": False,
        "rejected": dict.fromkeys(selfinstruct.REASONS, 0), "out": str(out), "rows": 3,
    }  # fmt: skip
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert first == [{"prompt": f"Prompt number {k} about topic {k}."} for k in range(3)]
    assert "wrote 3 new prompts" in captured.err and not list(out.parent.glob("*.partial"))

    assert main([*common, "--n", "1"]) == 2  # no silent overwrite
    assert "--append" in capsys.readouterr().err and len(out.read_text().splitlines()) == 3

    # --append keeps the rows and never writes them again (the scripted model repeats itself first).
    scripted_model.requests.clear()
    assert main([*common, "--n", "2", "--append", "--batch-size", "4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = [json.loads(line)["prompt"] for line in out.read_text().splitlines()]
    assert rows[:3] == [r["prompt"] for r in first] and len(rows) == len(set(rows)) == 5
    assert summary["rejected"]["duplicate"] == 3 and summary["rows"] == 5

    # ^C keeps what was made so far; --overwrite replaced the file.
    scripted_model.requests.clear()
    assert main([*common, "--n", "100", "--overwrite", "--batch-size", "8"]) == 130
    err = capsys.readouterr().err
    rows = [json.loads(line)["prompt"] for line in out.read_text().splitlines()]
    assert len(rows) == 40 and "run again with --append" in err
    from helixloom.store import Store

    with Store.open_default() as store:
        assert store.list_jobs(kind="prompts")[0].status == "cancelled"  # not failed: work was kept


def test_cli_bad_seed_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from helixloom.cli import main

    bad = tmp_path / "seeds.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": 3}\n')
    out = tmp_path / "out.jsonl"
    assert main(["prompts", "generate", "--seed", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("helixloom: error:") and "line 2 has no prompt" in err and not out.exists()
    assert main(["prompts", "generate", "--seed", str(tmp_path / "nope.txt"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
