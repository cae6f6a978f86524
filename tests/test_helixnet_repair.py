"""HelixNet never returns an empty stage (retries, then the previous answer), and the gate keeps the
answer the evaluator prefers; both are reported."""

from __future__ import annotations

from helixloom.engine import sampling
from helixloom.helixnet import NO_CRITIQUE, HelixNet, Role, StageEvent
from helixloom.helixnet.stages import degenerate_kind, is_degenerate, may_be_degenerate, retry_sampling
from helixloom.helixnet_gate import evaluator_gate, gate_question
from tests.scripted import ScriptedEngine

SEEDED = sampling(temperature=0.75, max_tokens=64, seed=7)


def net(outputs: list[str], **kw: object) -> tuple[HelixNet, ScriptedEngine]:
    engine = ScriptedEngine(outputs)
    role = Role(engine, sampling=SEEDED)
    return HelixNet(role, role, role, **kw), engine  # type: ignore[arg-type]


def streamed(events: list[StageEvent], stage: str) -> str:
    return "".join(e.text for e in events if e.kind == "delta" and e.stage == stage)


def test_degenerate_outputs() -> None:
    for text in ("", "  \n", "REGENERATED ANSWER:", "CRITIQUE: ", "RESPONSE: ...", "REGENERATED ANSWER: -"):
        assert is_degenerate(text), text
    for text in ("Cats purr.", "OK", "CRITIQUE: too short", "42"):
        assert not is_degenerate(text), text
    assert may_be_degenerate("REGENERATED") and may_be_degenerate("CRITIQUE: REGEN")
    assert not is_degenerate("OK") and may_be_degenerate("OK")  # held while streaming, until it ends


def test_retry_seeds_are_derived_and_repeatable() -> None:
    first, second = retry_sampling(SEEDED, 1), retry_sampling(SEEDED, 2)
    assert retry_sampling(SEEDED, 0) == SEEDED
    assert len({SEEDED.seed, first.seed, second.seed}) == 3 and first == retry_sampling(SEEDED, 1)
    assert retry_sampling(sampling(temperature=0, seed=1), 1).temperature == 0.75  # greedy would repeat
    assert retry_sampling(sampling(temperature=0.5), 1).seed is None


def test_an_empty_stage_is_resampled_and_never_returned_empty() -> None:
    pipeline, engine = net(
        ["", "CRITIQUE:", "Cats purr.", "REGENERATED ANSWER:", "Too short.", "Cats purr to calm."]
    )
    events: list[StageEvent] = []
    turn = pipeline.answer("Why do cats purr?", on_event=events.append)
    assert (turn.actor.text, turn.critique, turn.regeneration) == (
        "Cats purr.",
        "Too short.",
        "Cats purr to calm.",
    )
    assert [s.attempts for s in turn.stages] == [3, 2, 1] and all(s.fallback is None for s in turn.stages)
    seeds = [r.sampling.seed for r in engine.requests]
    assert seeds[0] == 7 and seeds[1:3] == [retry_sampling(SEEDED, 1).seed, retry_sampling(SEEDED, 2).seed]
    assert turn.actor.sampling.seed == seeds[2]  # the stage says which sampling made its text
    assert [(s.stage, s.attempts) for s in turn.repairs] == [("actor", 3), ("critic", 2)]
    # A thrown-away try streams nothing: the streamed text is the kept text.
    assert streamed(events, "actor") == "Cats purr." and streamed(events, "critic") == "Too short."
    assert turn.actor.usage.completion_tokens == 3  # every try counts: 0 + 1 + 2 words


def test_the_actor_alone_is_the_pipelines_actor_stage() -> None:
    alone = net(["", "Cats purr."])[0].act("Why do cats purr?")
    turn = net(["", "Cats purr.", "Too short.", "Cats purr to calm."])[0].answer("Why do cats purr?")
    assert (alone.text, alone.attempts, alone.sampling) == (turn.actor.text, 2, turn.actor.sampling)


def test_an_empty_regeneration_keeps_the_actors_answer() -> None:
    pipeline, _ = net(["Cats purr.", "Say why.", "", " ", "REGENERATED ANSWER:"])
    events: list[StageEvent] = []
    turn = pipeline.answer("Why do cats purr?", on_event=events.append)
    regen = turn.regenerations[-1]
    assert turn.regeneration == "Cats purr." and regen.attempts == 3
    assert regen.fallback == "empty after 3 attempts; kept the previous answer"  # the label is stripped
    assert streamed(events, "regenerator") == "Cats purr."  # a stream still ends with the answer
    ends = [e.output for e in events if e.kind == "end"]
    assert ends[-1] == regen


def test_an_empty_critique_skips_the_regenerator() -> None:
    pipeline, engine = net(["Cats purr.", "", "CRITIQUE:", "\n"])
    events: list[StageEvent] = []
    turn = pipeline.answer("Why do cats purr?", on_event=events.append)
    assert turn.critique == NO_CRITIQUE and turn.critiques[0].fallback == "empty after 3 attempts"
    regen = turn.regenerations[0]
    assert turn.regeneration == "Cats purr." and regen.attempts == 0
    assert regen.fallback == "skipped: no critique; kept the previous answer"
    assert len(engine.requests) == 4  # the actor and three critic tries; no regenerator call
    assert [(e.kind, e.stage) for e in events if e.stage == "regenerator"] == [
        ("start", "regenerator"),
        ("delta", "regenerator"),
        ("end", "regenerator"),
    ]


def test_no_resampling_when_told() -> None:
    pipeline, _ = net(["", "c", "r"], resamples=0)
    turn = pipeline.answer("q?")
    assert turn.actor.text == "" and turn.actor.fallback == "empty after 1 attempt"


def judge_preferring(good: str) -> ScriptedEngine:
    """An evaluator engine: P(yes) is high when the response being judged is ``good``."""
    return ScriptedEngine([], judge=lambda prompt: 0.9 if good in prompt else 0.2)


def test_the_gate_keeps_the_better_answer_both_ways() -> None:
    for better, kept in (("Because they are content.", "regeneration"), ("Cats purr.", "previous")):
        judge = judge_preferring(better)
        pipeline, _ = net(["Cats purr.", "Say why.", "Because they are content."], gate=evaluator_gate(judge))
        events: list[StageEvent] = []
        turn = pipeline.answer("Why do cats purr?", on_event=events.append)
        decision = turn.regenerations[-1].gate
        assert decision is not None and decision.kept == kept
        assert turn.regeneration == better
        assert decision.regeneration == "Because they are content."
        winner, loser = (
            (decision.regeneration_score, decision.previous_score)
            if kept == "regeneration"
            else (decision.previous_score, decision.regeneration_score)
        )
        assert winner > loser
        assert all(gate_question() in p for p in judge.scored)
        assert streamed(events, "regenerator") == better  # held back, then the kept answer


def test_a_stage_that_repeats_its_instructions_is_resampled_and_never_shown() -> None:
    """The base model's regenerator may answer with HelixNet's own system text; that is no answer."""
    system = "You are a HelixNet. Elaborate on the topic and construct a clear chain of thought."
    assert is_degenerate(" you are a HelixNet.  Elaborate on the topic and construct a clear chain", system)
    assert is_degenerate("You are HelixNet: elaborate on topic, construct the clear chain.", system)
    assert not is_degenerate("You are right: cats purr to calm themselves.", system)
    assert not is_degenerate("Elaborate on the topic.", system)  # a short answer may share words
    assert not is_degenerate(system, "")  # without instructions nothing is an echo
    assert may_be_degenerate("You are a Helix", system) and not may_be_degenerate(
        "You are right, cats", system
    )
    pipeline, _ = net(
        ["Cats purr.", "Say why.", system + " Always answer.", "Cats purr to calm down."], system=system
    )
    events: list[StageEvent] = []
    turn = pipeline.answer("Why do cats purr?", on_event=events.append)
    assert turn.regeneration == "Cats purr to calm down." and turn.regenerations[-1].attempts == 2
    assert streamed(events, "regenerator") == "Cats purr to calm down."  # the echo streamed nothing


def test_a_fallback_says_why_the_stage_was_no_answer() -> None:
    system = "You are a HelixNet. Elaborate on the topic and construct a clear chain of thought."
    assert degenerate_kind(" \n", system) == "empty"
    assert degenerate_kind("REGENERATED ANSWER:", system) == "only a label"
    assert degenerate_kind(system, system) == "its instructions repeated"
    assert degenerate_kind("Cats purr to calm down.", system) is None
    pipeline, _ = net(["Cats purr.", "Say why.", system, system, system], system=system)
    regen = pipeline.answer("Why do cats purr?").regenerations[-1]
    assert regen.fallback == "its instructions repeated after 3 attempts; kept the previous answer"
