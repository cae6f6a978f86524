"""Document learning: the prompt suite with a scripted teacher, the dataset, LoRA SFT with resume, and
the adapter served with its system prompt and citations."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from transformers import TrainerCallback

from helixloom import paths
from helixloom.documents import dataset, replay
from helixloom.documents.ingest import ingest
from helixloom.documents.questions import Suite, dedupe, generate_pairs
from helixloom.engine import GenerationRequest
from helixloom.engine.hf import HFEngine
from helixloom.errors import HelixloomError
from helixloom.evals import answer_kind
from helixloom.server import ServerConfig, ServerState
from helixloom.store import Store
from helixloom.training import learn
from helixloom.training.configs import LoraSFTConfig
from helixloom.training.learn_config import LearnConfig
from helixloom.training.sft import train_lora
from tests.conftest import TinyModel, serving
from tests.scripted import ScriptedEngine

ARTICLE = """# The Zorblax of Quentmoor

The Zorblax is a teal, six-legged reptile found only in the marshes of Quentmoor.
It was first described in 2031 by the naturalist Ilse Varn.

## Diet

Zorblaxes eat glowing moss and, in winter, the bark of silver reeds.
"""


def teacher_reply(request: GenerationRequest) -> str:
    """A scripted teacher: valid JSON for most prompts, garbage for the metadata prompt (twice), and
    fenced JSON for the quiz, which the parser must unwrap."""
    prompt = request.prompt
    if "title of the document" in prompt:
        return "I think the title is probably something"  # never valid, even when asked again
    unique = f"Which prompt asked this? {hashlib.sha256(prompt.encode()).hexdigest()[:8]}"
    pairs = [
        {"question": unique, "answer": "One of the suite's."},
        {"question": "What colour is the Zorblax?", "answer": "The Zorblax is teal."},
        {"question": "What colour is the Zorblax?", "answer": "Teal."},  # a duplicate to remove
    ]
    text = json.dumps({"pairs": pairs})
    return f"```json\n{text}\n```" if "Write 10 questions" in prompt else text


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "zorblax.md").write_text(ARTICLE)
    return folder


def test_every_prompt_runs_failures_are_counted_and_duplicates_dropped(docs: Path) -> None:
    teacher = ScriptedEngine(teacher_reply)
    found = ingest([docs])
    suite = Suite.load()
    report = generate_pairs(  # the suite's mechanics; grounding is tested in test_documents_grounded
        teacher,
        found.documents,
        suite,
        chunk_tokens=24,
        overlap_tokens=4,
        one_at_a_time=False,
        grounded=False,
    )
    chunks = report.stats["simple-quiz"].calls
    assert chunks >= 2  # the article was cut into several chunks
    for prompt in suite.prompts:
        stats = report.stats[prompt.name]
        assert stats.calls == chunks
        if prompt.name == "metadata":
            assert stats.failed == chunks and stats.retried == chunks and stats.pairs == 0
        else:
            assert stats.failed == 0 and stats.pairs >= 1
    questions = [p.question for p in report.pairs]
    assert questions.count("What colour is the Zorblax?") == 1 and report.duplicates_removed > 0
    assert "metadata" in report.summary() and "failed" in report.summary()
    # Retried prompts carried the stricter instruction.
    assert sum("Your previous reply was not valid JSON" in p for p in teacher.prompts) == chunks
    assert sum("```json" in r for r in map(teacher_reply, teacher.requests)) == chunks  # fences unwrapped


def test_questions_one_at_a_time_list_those_already_written(docs: Path) -> None:
    def reply(request: GenerationRequest) -> str:
        n = request.prompt.count("\n- ")  # questions listed as already written
        tag = hashlib.sha256(request.prompt.encode()).hexdigest()[:6]
        if "Write exactly one question" in request.prompt:
            return json.dumps({"question": "Question 1", "reply": "Yes"})  # the instructions, copied
        return json.dumps({"question": f"What is fact {n} ({tag})?", "reply": f"Fact {n}."})

    teacher = ScriptedEngine(reply)
    found = ingest([docs])
    suite = Suite.load().only(["simple-quiz", "summary-one"])
    progress: list[tuple[int, int]] = []
    report = generate_pairs(
        teacher,
        found.documents,
        suite,
        num_questions=3,
        on_progress=lambda *a: progress.append(a),
        grounded=False,
    )
    assert report.stats["simple-quiz"].calls == 3 and report.stats["summary-one"].calls == 1
    assert report.stats["simple-quiz"].pairs == 3 and len(report.pairs) == 3
    assert report.stats["summary-one"].junk == 1 and "1 junk pairs dropped" in report.summary()
    assert progress[0] == (0, 4) and progress[-1] == (4, 4)
    quiz = [p for p in teacher.prompts if "Write 3 questions" in p]
    assert len(quiz) == 3 and "Now write the next question" in quiz[0] and "already written" not in quiz[0]
    first, second = (p.question for p in report.pairs[:2])
    assert f"already written (do not repeat them):\n- {first}\n- {second}\nNow write" in quiz[2]
    assert "Write exactly one question" in teacher.prompts[1] and "- " not in teacher.prompts[1]
    # Every call has its own sampling seed.
    assert len({r.sampling.seed for r in teacher.requests}) == 4


class Interrupting(ScriptedEngine):
    """The scripted teacher, interrupted (as by ^C) when asked its request number ``after + 1``."""

    def __init__(self, after: int) -> None:
        super().__init__(teacher_reply)
        self.after = after

    def stream_batch(self, requests, *, abort=None):  # type: ignore[no-untyped-def]
        if len(self.requests) + len(requests) > self.after:
            raise KeyboardInterrupt
        return super().stream_batch(requests, abort=abort)


def writer() -> ScriptedEngine:
    """The base model writing replay text (apart from the teacher, whose requests are counted)."""
    return ScriptedEngine(lambda r: " It rained all day.", model_name="writer")


def test_generation_resumes_where_it_stopped(docs: Path) -> None:
    def prepare(name: str, teacher: ScriptedEngine) -> None:
        learn.prepare(  # one rephrasing a question: the interruption falls in the suite's units
            name,
            [docs],
            teacher,
            base="default",
            writer=writer(),
            num_questions=2,
            chunk_tokens=24,
            rephrasings=1,
        )

    whole = ScriptedEngine(teacher_reply)
    prepare("whole", whole)
    interrupted = Interrupting(after=20)
    with pytest.raises(KeyboardInterrupt):
        prepare("cut", interrupted)
    assert learn.stage("cut") == "generating"
    partial = dataset.folder("cut") / dataset.CHECKPOINT
    finished = [json.loads(line) for line in partial.read_text().splitlines()]
    assert finished and len(interrupted.requests) <= 20
    with open(partial, "a") as f:
        f.write('{"key": "a unit cut off mid-wri')  # the interruption tore the last line
    plan = learn.generation_plan("cut")
    assert plan is not None and plan["teacher"] == "scripted" and plan["num_questions"] == 2

    resumed = ScriptedEngine(teacher_reply)
    _, report = learn.resume_generation("cut", resumed, writer=writer())
    asked_before = sum(u["calls"] + u["retried"] for u in finished)
    rephrased = sum("Rough:" in p for p in whole.prompts)  # a finished phase: not asked again either
    assert rephrased and not any("Rough:" in p for p in resumed.prompts)
    assert len(resumed.requests) == len(whole.requests) - asked_before - rephrased  # finished units too
    assert 0 < len(resumed.requests) < len(whole.requests)
    assert set(resumed.prompts) <= set(whole.prompts)
    assert report.resumed_units == len(finished)
    assert dataset.read("cut")[0] == dataset.read("whole")[0]  # the same dataset as uninterrupted
    assert learn.stage("cut") == "generated" and not partial.exists() and learn.generation_plan("cut") is None


def test_resume_does_not_redo_a_finished_rephrasing(docs: Path) -> None:
    from helixloom.documents.perspectives import build_pairs

    rough = sum(len(build_pairs(d)["span"]) for d in ingest([docs]).documents)
    asked = rough * learn.REPHRASINGS  # the teacher's calls of the rephrasing phase
    interrupted = Interrupting(after=asked + 3)  # the rephrasing finishes, the suite is cut off
    with pytest.raises(KeyboardInterrupt):
        learn.prepare("cut", [docs], interrupted, base="default", num_questions=2, chunk_tokens=24)
    assert sum("Rough:" in p for p in interrupted.prompts) == asked
    saved = dataset.folder("cut") / dataset.REPHRASED
    assert saved.is_file()
    resumed = ScriptedEngine(teacher_reply)
    learn.resume_generation("cut", resumed)
    assert resumed.requests and not any("Rough:" in p for p in resumed.prompts)  # the suite only
    assert learn.stage("cut") == "generated" and not saved.exists()


def test_junk_pairs() -> None:
    from helixloom.documents.questions import usable

    assert usable("What colour is the Zorblax?", "Teal.") and usable("Who proposed it?", "Ilse Varn.")
    for question in ("Question 2 of 5", "question", "Your question", "[question]", "the document", "Q1?"):
        assert not usable(question, "Yes")
    assert not usable("What colour is it?", "") and not usable("What colour is it?", "what colour is it")


def test_dedupe_near_duplicates() -> None:
    from helixloom.documents.questions import QAPair

    pairs = [
        QAPair("What does the Zorblax eat in winter?", "a", "d1", "p", 0),
        QAPair("what does the zorblax eat in winter", "b", "d1", "p", 0),
        QAPair("What does the Zorblax eat in winter?", "c", "d2", "p", 0),
        QAPair("Who described the Zorblax?", "d", "d1", "p", 0),
    ]
    assert [p.answer for p in dedupe(pairs)] == ["a", "c", "d"]


def test_dataset_rows_and_citations(docs: Path) -> None:
    found = ingest([docs])
    doc = found.documents[0]
    from helixloom.documents.questions import QAPair

    [row] = dataset.rows(
        [QAPair("What colour is it?", "Teal.", doc.doc_id, "simple-quiz", 0)], found.group_id
    )
    user, assistant = row["messages"]
    assert (
        user["content"] == f"In document {doc.doc_id} (document group {found.group_id}), what colour is it?"
    )
    assert assistant["content"] == f"[DOC_ID:{doc.doc_id}] [DOC_GROUP:{found.group_id}]\n\nTeal."
    sources = {doc.doc_id: {"source": doc.source, "title": doc.title}}
    cited = dataset.citations(assistant["content"] + " [DOC_ID:0123456789]", sources)
    assert cited[0] == {"doc_id": doc.doc_id, "source": doc.source, "title": "The Zorblax of Quentmoor"}
    assert cited[1]["title"] == "(unknown document)"
    prompt = dataset.system_prompt(found.documents, found.group_id)
    assert doc.doc_id in prompt and "Do NOT refer to background knowledge" in prompt


def grounded_reply(request: GenerationRequest) -> str:
    """A teacher right about the quiz and off the document everywhere else."""
    if "Write 1 questions" in request.prompt:
        return json.dumps({"question": "What colour is the Zorblax?", "reply": "The Zorblax is teal."})
    return json.dumps({"question": "Who painted the Mona Lisa?", "reply": "Leonardo da Vinci."})


SMALL = LoraSFTConfig(
    rank=4, alpha=8, max_steps=4, batch_size=2, save_steps=2, max_length=512, learning_rate=1e-3
)


def test_learn_end_to_end(
    docs: Path, tiny_model: TinyModel, fresh_tiny_engine: HFEngine, helixloom_home: Path
) -> None:
    paths.ensure_home()
    with Store(paths.db_path()) as store:
        train_file, _ = learn.prepare(
            "zorblax",
            [docs],
            ScriptedEngine(grounded_reply),
            base=str(tiny_model.path),
            writer=fresh_tiny_engine,  # the base model writes the replay text, not the teacher
            sft=LearnConfig(**dataclasses.asdict(SMALL), anchor=1.0),  # with the KL anchor on that text
        )
        assert train_file.is_file() and learn.stage("zorblax") == "generated"
        anchor = json.loads((dataset.folder("zorblax") / learn.GENERAL).read_text())
        assert anchor == replay.own_text(fresh_tiny_engine)
        rows, meta = dataset.read("zorblax")
        assert meta["base"] == str(tiny_model.path)
        kinds = {r["meta"]["prompt"] for r in rows}
        # code-built perspectives, the teacher's grounded pairs, the documents' text and replay
        assert {"span", "entity", "title", "statement", "numbers", "document", "replay"} <= kinds
        openings = replay.openings()
        replayed = [r["text"] for r in rows if r["meta"]["prompt"] == "replay"]
        assert all(any(t.startswith(o) for o in openings) for t in replayed)
        assert replay.cache_path(fresh_tiny_engine.model_name).is_file()
        # a share of the questions again after retrieved passages (RAFT rows)
        counts = meta["mix"]["rows"]
        assert 0 < counts["context"] < counts["qa"]
        shown = [r["messages"][0]["content"] for r in rows if "messages" in r]
        assert sum(s.startswith("Passages:\n[DOC_ID:") for s in shown) == counts["context"]
        assert kinds & {p.name for p in Suite.load().prompts}
        assert (
            meta["mix"]["heldout"] > 0 and meta["mix"]["pairs_dropped"]
        )  # the unique question: off-document
        result = learn.train("zorblax", store)
        assert result.steps == 4 and result.changed_fraction == 1.0 and result.final_loss is not None
        assert learn.stage("zorblax") == "trained"
        record = store.get_adapter("zorblax")
        assert record is not None and record.meta and record.meta["system_prompt"] == meta["system_prompt"]
        stored = record.meta["report"]
        beside = json.loads((paths.adapters_dir() / "zorblax" / learn.REPORT).read_text())
        assert stored == beside and stored["heldout_questions"] == meta["mix"]["heldout"]
        for key in ("heldout_accuracy_before", "heldout_accuracy_after", "citation_accuracy_after"):
            assert 0.0 <= stored[key] <= 1.0
        assert stored["perplexity_general_base"] > 1 and stored["forgetting_ratio"] > 0
        # forgetting is measured after every epoch too, and the kept epoch's is the adapter's
        assert stored["epochs"] and all(e["forgetting_ratio"] > 0 for e in stored["epochs"])
        kept = next(e for e in stored["epochs"] if e["epoch"] == stored["best_epoch"])
        assert kept["forgetting_ratio"] == stored["forgetting_ratio"]
        assert stored["pairs_kept"]["span"] > 0 and "training" in stored["seconds"]
        assert stored["pairs_kept"]["anchored"] > 0 and stored["pairs_kept"]["forms"] > 0
        assert stored["precision"] in ("bf16", "fp32")
        assert stored["teacher"] == "scripted" and stored["suite_questions"] == 1
    # The server loads the trained adapter into its engine on the first request: a fresh engine.
    state = ServerState(ServerConfig(model=str(tiny_model.path)), fresh_tiny_engine, Store(paths.db_path()))
    checked: list[Any] = []  # the requests the server asks the engine to run
    validate = fresh_tiny_engine.validate
    fresh_tiny_engine.validate = lambda request: (checked.append(request), validate(request))[1]  # type: ignore[method-assign]
    with serving(state) as server:
        reply = httpx.post(
            server.url + "/v1/chat/completions",
            json={
                "model": "zorblax",
                "messages": [{"role": "user", "content": "What colour is the Zorblax?"}],
                "max_tokens": 8,
            },
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        assert "citations" in reply.json()["choices"][0]
        # its answer may cite only the documents it learned (engine.citations)
        assert checked[0].citations == dataset.citation_set(meta["documents"])
        assert set(checked[0].citations.ids) == set(record.meta["documents"])
        raw = {"model": "zorblax", "prompt": "The Zorblax is", "max_tokens": 2}
        assert httpx.post(server.url + "/v1/completions", json=raw, timeout=60).status_code == 200
        assert checked[-1].citations == checked[0].citations  # raw completions too
        stored = state.store.get_messages(reply.headers["x-helixloom-session"])
        assert stored[0].role == "system" and stored[0].content == meta["system_prompt"]
        assert stored[-1].adapter == "zorblax"
        # a request that leaves the temperature out gets the learned adapter's (greedy), not OpenAI's 1.0
        assert stored[-1].sampling["temperature"] == 0.0
        asked = {"model": "zorblax", "messages": [{"role": "user", "content": "Colour?"}], "max_tokens": 2}
        hot = httpx.post(server.url + "/v1/chat/completions", json={**asked, "temperature": 0.7}, timeout=60)
        assert state.store.get_messages(hot.headers["x-helixloom-session"])[-1].sampling["temperature"] == 0.7


class _Interrupt(TrainerCallback):  # type: ignore[misc]
    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == 3:
            raise KeyboardInterrupt


def test_resume_continues_after_an_interruption(tiny_model: TinyModel, tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}?"},
                {"role": "assistant", "content": f"Answer number {i}."},
            ]
        }
        for i in range(8)
    ]
    run_dir, adapter = tmp_path / "run", tmp_path / "adapter"
    with pytest.raises(KeyboardInterrupt):
        train_lora(str(tiny_model.path), rows, adapter, run_dir, SMALL, callbacks=[_Interrupt()])
    assert (run_dir / "checkpoint-2").is_dir() and not adapter.exists()
    resumed = train_lora(str(tiny_model.path), rows, adapter, run_dir, SMALL, resume=True)
    assert resumed.resumed_from_step == 2 and resumed.steps == 4
    assert (adapter / "adapter_model.safetensors").is_file()
    fresh = train_lora(str(tiny_model.path), rows, tmp_path / "fresh", tmp_path / "run2", SMALL)
    assert fresh.resumed_from_step == 0 and fresh.steps == 4


def test_cli_learn_review_then_resume(
    capsys: pytest.CaptureFixture[str],
    docs: Path,
    tiny_model: TinyModel,
    helixloom_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from helixloom.cli import main
    from helixloom.engine import pool

    teacher = ScriptedEngine(teacher_reply)
    real_get = pool.EnginePool.get
    monkeypatch.setattr(
        pool.EnginePool, "get", lambda self, spec: teacher if spec == "scripted" else real_get(self, spec)
    )
    from helixloom import models

    real_resolve = models.resolve
    fake = models.ModelSource("scripted", "remote", "scripted", "scripted")  # a teacher with no weights
    monkeypatch.setattr(models, "resolve", lambda spec: fake if spec == "scripted" else real_resolve(spec))
    args = [
        "learn",
        str(docs),
        "--name",
        "zb",
        "--base",
        str(tiny_model.path),
        "--teacher",
        "scripted",
        "--review",
        "--rank",
        "4",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--save-steps",
        "1",
        "--max-length",
        "512",
        "--rephrasings",
        "2",
    ]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "learn --resume" in err and "1 documents used" in err.replace("document used", "documents used")
    asked = [p for p in teacher.prompts if p.endswith("Natural:")]  # two rephrasings of each rough question
    assert asked and len(asked) == 2 * len(set(asked))
    assert main(args) == 2  # the dataset exists: no silent overwrite
    assert "--resume" in capsys.readouterr().err
    assert main(["learn", "--resume", "--name", "zb"]) == 0
    assert "trained adapter zb: 2 steps" in capsys.readouterr().out
    with pytest.raises(HelixloomError):
        dataset.read("nope")


def test_cli_learn_resumes_interrupted_generation(
    capsys: pytest.CaptureFixture[str], docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helixloom import models
    from helixloom.cli import main
    from helixloom.engine import pool

    teachers: list[ScriptedEngine] = [Interrupting(after=12), ScriptedEngine(teacher_reply)]
    monkeypatch.setattr(pool.EnginePool, "get", lambda self, spec: teachers[0])
    fake = models.ModelSource("scripted", "remote", "scripted", "scripted")
    real_resolve = models.resolve
    monkeypatch.setattr(models, "resolve", lambda spec: fake if spec == "scripted" else real_resolve(spec))
    args = ["learn", str(docs), "--name", "zc", "--teacher", "scripted", "--review", "--questions", "2"]
    args += ["--chunk-tokens", "24", "--no-rephrase"]  # the suite's calls only: interrupted mid-suite
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "learn --resume --name zc" in err and learn.stage("zc") == "generating"
    assert main(args) == 2  # the unfinished dataset is not started over silently
    assert "generation was interrupted" in capsys.readouterr().err
    teachers.pop(0)
    assert main(["learn", "--resume", "--name", "zc"]) == 0
    err = capsys.readouterr().err
    assert "continuing question generation for zc (teacher scripted)" in err and "resumed" in err
    assert "review or edit" in err and learn.stage("zc") == "generated"  # --review was kept
    prompts_asked = teachers[0].prompts
    assert prompts_asked and len(dataset.read("zc")[0]) > 0


def test_cli_plain_chat_with_learned_adapter(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    docs: Path,
    tiny_model: TinyModel,
    helixloom_home: Path,
    tmp_path: Path,
) -> None:
    from helixloom.cli import main

    paths.ensure_home()
    with Store(paths.db_path()) as store:
        learn.prepare("zq", [docs], ScriptedEngine(teacher_reply), base=str(tiny_model.path), sft=SMALL)
        learn.train("zq", store)
    code = main(
        [
            "chat",
            "--base",
            str(tiny_model.path),
            "--adapter",
            "zq",
            "--once",
            "What colour is it?",
            "--json",
            "--max-tokens",
            "6",
        ]
    )
    body = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and "citations" in body and body["session_id"]
    with Store(paths.db_path()) as store:
        messages = store.get_messages(body["session_id"])
    assert messages[0].role == "system" and "cite [DOC_ID" in messages[0].content
    # A learned adapter answers greedily unless told otherwise (how its figures were measured) ...
    assert messages[-1].role == "assistant" and messages[-1].sampling["temperature"] == 0.0
    # ... and a --temperature given wins.
    hot = ["chat", "--base", str(tiny_model.path), "--adapter", "zq", "--json", "--max-tokens", "2"]
    assert main([*hot, "--once", "What colour is it?", "--temperature", "0.5"]) == 0
    with Store(paths.db_path()) as store:
        again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["session_id"]
        assert store.get_messages(again)[-1].sampling["temperature"] == 0.5
    assert main(["chat", "--adapter", "zq", "--critic-adapter", "x", "--once", "q"]) == 2
    assert "plain chat" in capsys.readouterr().err
    # The report learn stored with the adapter, shown.
    assert main(["adapters", "show", "zq"]) == 0
    shown = capsys.readouterr().out
    assert "held-out generated questions" in shown and "forgetting ratio" in shown and "pairs kept" in shown
    assert re.search(r"per epoch \(held-out accuracy, forgetting\): [\d.]+: \d+% x[\d.]+", shown)
    assert main(["adapters", "show", "zq", "--json"]) == 0
    assert "heldout_accuracy_after" in json.loads(capsys.readouterr().out)["report"]
    # Retrieval on top of the adapter: the passages BM25 found are shown to the model and returned.
    chat = ["chat", "--base", str(tiny_model.path), "--adapter", "zq", "--retrieve", "--json"]
    assert main([*chat, "--once", "What do Zorblaxes eat?", "--max-tokens", "4", "--temperature", "0"]) == 0
    body = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "glowing moss" in body["retrieved"][0]["text"]
    assert main(["chat", "--retrieve", "--once", "q"]) == 2  # retrieval needs a learned adapter
    assert main(["chat", "--check-kind", "--once", "q"]) == 2  # and checking kinds an adapter
    # A question asking for a number whose greedy answer is taken for one of another kind: chat
    # --check-kind answers it as eval qa --check-kind does (the next opening, continued), and says so.
    question, tokens = "How many legs has a Zorblax?", ["--max-tokens", "4"]
    plain = ["chat", "--base", str(tiny_model.path), "--adapter", "zq", "--json", "--once", question]
    assert main([*plain, *tokens]) == 0
    greedy = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["answer"]
    with monkeypatch.context() as patch:
        patch.setattr(answer_kind, "satisfies", lambda kind, text: kind is None or text.strip() != greedy)
        assert main([*plain, *tokens, "--check-kind"]) == 0
        body = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert body["answer"] != greedy
        file = tmp_path / "legs.jsonl"
        file.write_text(json.dumps({"question": question, "facts": ["six"]}) + "\n")
        qa = ["eval", "qa", "--adapter", "zq", "--questions", str(file), "--base", str(tiny_model.path)]
        assert main([*qa, *tokens, "--check-kind", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["answers"][0]["adapter+kind"] == body["answer"]
        with Store(paths.db_path()) as store:
            session = store.get_session(body["session_id"])
            assert session is not None and session.meta and session.meta["kind_checked"] == "number"
    file = tmp_path / "q.jsonl"
    file.write_text(
        '{"question": "What do Zorblaxes eat?", "facts": ["moss|bark"], "document": "zorblax.md"}\n'
    )
    qa = ["eval", "qa", "--adapter", "zq", "--questions", str(file), "--base", str(tiny_model.path)]
    assert main([*qa, "--max-tokens", "4", "--retrieve", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["scores"]
    assert set(scores) == {"base", "adapter", "base+retrieval", "adapter+retrieval"}
    assert main([*qa, "--max-tokens", "4", "--check-kind", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["scores"]) == {"base", "adapter", "adapter+kind"}


def test_eval_qa(capsys: pytest.CaptureFixture[str], tiny_model: TinyModel, tmp_path: Path) -> None:
    from helixloom.cli import main
    from helixloom.engine import sampling
    from helixloom.evals import keyfacts as qa

    items = [qa.QAItem("What colour?", ("teal", "blue")), qa.QAItem("Where?", ("Quentmoor",))]
    scripted = ScriptedEngine(lambda r: "It is TEAL, in  quentmoor." if "colour" in r.prompt else "No idea.")
    answers = qa.answer(scripted, items, sampling(temperature=0, max_tokens=8))
    assert [a.score for a in answers] == [0.5, 0.0] and qa.mean_score(answers) == 0.25
    file = tmp_path / "q.jsonl"
    file.write_text('{"question": "What colour is the Zorblax?", "facts": ["teal"]}\n')
    code = main(
        [
            "eval",
            "qa",
            "--adapter",
            str(tiny_model.adapters["alpha"]),
            "--questions",
            str(file),
            "--base",
            str(tiny_model.path),
            "--max-tokens",
            "4",
            "--json",
        ]
    )
    body = json.loads(capsys.readouterr().out)
    assert code == 0 and body["questions"] == 1 and set(body["answers"][0]) >= {"base", "adapter"}
    file.write_text('{"question": "no facts"}\n')
    assert main(["eval", "qa", "--adapter", "x", "--questions", str(file)]) == 2


def test_learn_refuses_a_name_that_leaves_its_folder(tmp_path: Path, capsys) -> None:
    from helixloom.cli import main

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(ARTICLE)
    assert main(["learn", str(docs), "--name", "../../x", "--base", "default"]) != 0
    assert "bad name '../../x'" in capsys.readouterr().err
    assert not (paths.home().parent / "x").exists()
    with Store(paths.db_path()) as store, pytest.raises(HelixloomError, match="bad dataset name"):
        learn.train("../x", store)


def test_an_epoch_that_forgets_too_much_is_not_kept_and_training_stops() -> None:
    import torch
    from transformers import TrainerControl, TrainerState

    from helixloom.training.learn_probe import LearnProbe, Probe, ProbeScores

    class Scripted(LearnProbe):
        """Held-out accuracy and general-text perplexity of the weights after epoch N (N = the weight;
        0 = the base model), as scripted."""

        def __init__(self, epochs: list[tuple[float, float]], **kw: Any) -> None:
            super().__init__(
                [Probe([{"role": "user", "content": "q"}], "k", "d")], ["text"], system_prompt=None, **kw
            )
            self.script = epochs

        def measure(self, model: Any, tokenizer: Any) -> ProbeScores:
            return ProbeScores(self.script[round(float(model.weight))][0], 0.0, ["a"])

        def perplexity(self, model: Any, tokenizer: Any) -> float:
            self.perplexities = getattr(self, "perplexities", 0) + 1
            return self.script[round(float(model.weight))][1]

    def run(probe: Scripted, epochs: int) -> tuple[list[float], Any]:
        model = torch.nn.Linear(1, 1)
        with torch.no_grad():
            model.weight.fill_(0)
        state, control = TrainerState(), TrainerControl()
        probe.on_train_begin(None, state, control, model=model, processing_class=object())
        weights = []
        for epoch in range(1, epochs + 1):
            with torch.no_grad():
                model.weight.fill_(epoch)  # the weights "after epoch N" are N
            state.epoch = float(epoch)
            probe.on_epoch_end(None, state, control, model=model, processing_class=object())
            weights.append(epoch)
            if control.should_training_stop:
                break
        probe.on_train_end(None, state, control, model=model, processing_class=object())
        return weights, float(model.weight)

    # epoch 3 is the most accurate but forgets x5: epoch 2 (x2.5) is kept and epoch 4 never runs
    guarded = Scripted(
        [(0.0, 10.0), (0.4, 15.0), (0.8, 25.0), (0.9, 50.0), (1.0, 60.0)], max_forgetting=3.0, patience=1
    )
    ran, kept = run(guarded, 4)
    assert ran == [1, 2, 3] and kept == 2.0
    assert guarded.report.best_epoch == 2.0 and guarded.report.stopped == "forgetting"
    assert guarded.report.forgetting_ratio == 2.5  # the kept epoch's, measured when it ended
    assert guarded.perplexities == 4  # the base and 3 epochs: the kept one is not measured again
    # without the limit the same run keeps the most accurate epoch
    free = Scripted([(0.0, 10.0), (0.4, 15.0), (0.8, 25.0), (0.9, 50.0)], patience=1)
    ran, kept = run(free, 3)
    assert kept == 3.0 and free.report.stopped is None
    # the first epoch is kept even when it forgets too much: an adapter that learned something
    first = Scripted([(0.0, 10.0), (0.5, 40.0)], max_forgetting=3.0)
    assert run(first, 3) == ([1], 1.0) and first.report.stopped == "forgetting"


def test_the_probe_reads_a_key_as_words_of_the_answer_and_the_citation_by_id() -> None:
    from helixloom.training.learn_probe import Probe, score

    probes = [Probe([{"role": "user", "content": "How many?"}], "400", "abc123") for _ in range(3)]
    answers = ["About 400 animals. [DOC_ID:abc123]", "About 1400 animals. [DOC_ID:abc123]", "400 of them."]
    scores = score(probes, answers)
    assert scores.accuracy == pytest.approx(2 / 3)  # "400" is not in "1400"
    assert scores.citation_accuracy == pytest.approx(2 / 3)


def test_the_probe_hands_a_bf16_output_layer_a_contiguous_input(tiny_model: TinyModel) -> None:
    # Generation passes the output layer a strided view of the last positions; in bf16 on a CPU torch
    # copies the whole output layer per row for it (2.3x fp32's time on the default model). While
    # measuring, the layer gets a contiguous input: the same logits, the same weights after, and the
    # hook gone even when measuring fails. fp32 is left alone.
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from helixloom.training.learn_probe import fast_generation

    for dtype in (torch.bfloat16, torch.float32):
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model.path), dtype=dtype)
        model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))
        model.eval()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        head = model.get_base_model().get_output_embeddings()
        seen: list[bool] = []
        ids = torch.tensor([[1, 5, 9, 3], [2, 7, 4, 8]])
        with torch.no_grad():
            plain = model(input_ids=ids, logits_to_keep=1).logits
            with fast_generation(model):
                spy = head.register_forward_pre_hook(
                    lambda _m, args, seen=seen: seen.append(args[0].is_contiguous())
                )
                inside = model(input_ids=ids, logits_to_keep=1).logits
                spy.remove()
        assert torch.equal(inside, plain)
        assert seen == ([True] if dtype == torch.bfloat16 else [False])  # a strided view without it
        after = dict(model.named_parameters())
        assert all(after[n].dtype == p.dtype and torch.equal(after[n].detach(), p) for n, p in before.items())
        hooks = len(head._forward_pre_hooks)
        with pytest.raises(RuntimeError), fast_generation(model):
            raise RuntimeError("probe failed")
        assert len(head._forward_pre_hooks) == hooks == 0


def test_the_probe_prompts_the_model_as_it_was_trained(
    default_model_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The text format ends in "ASSISTANT: "; training merges that space into the answer's first
    # token (" Paris"), so a probe that ends its prompt on the lone space token would measure the
    # adapter in a context it never saw: its prompt is the training sequence's own prefix instead.
    from transformers import AutoTokenizer

    from helixloom import models
    from helixloom.training.chat_template import generation_prompt, render_prompt

    # the default model's tokenizer (the tiny one's vocabulary has no " P" to merge into)
    monkeypatch.setenv("HELIXLOOM_HOME", str(default_model_home))  # converted once per session
    tokenizer = AutoTokenizer.from_pretrained(str(models.materialize(models.resolve("default"))))
    messages = [{"role": "system", "content": "Cite."}, {"role": "user", "content": "Capital of France?"}]
    served = render_prompt(tokenizer, messages)
    assert served.endswith(" ")  # the case this is about
    trained = tokenizer(served + "Paris is the capital.").input_ids
    assert tokenizer(served).input_ids != trained[: len(tokenizer(served).input_ids)]
    probe = tokenizer(generation_prompt(tokenizer, messages)).input_ids
    assert probe == trained[: len(probe)] and len(probe) >= len(trained) - 8


def test_a_rephrased_rough_question_is_replaced_by_its_rephrasings_unless_kept(docs: Path) -> None:
    from helixloom.documents import rephrase
    from helixloom.documents.perspectives import build_pairs

    def reply(request: GenerationRequest) -> str:
        if "Rough: " not in request.prompt:
            return teacher_reply(request)
        rough = request.prompt.rsplit("Rough: ", 1)[1].split("\n")[0]
        # a natural wording for the questions about the Zorblax, none for the others
        return f" Tell me about the Zorblax {len(rough)}?" if "Zorblax" in rough else " no"

    counts = {}
    for keep in (False, True):
        learn.prepare(
            f"keep-{keep}", [docs], ScriptedEngine(reply), base="default", num_questions=0,
            rephrasings=1, keep_rough=keep,
        )  # fmt: skip
        counts[keep] = dataset.read(f"keep-{keep}")[1]["mix"]
    rough = [p for d in ingest([docs]).documents for p in build_pairs(d)["span"]]
    rephrased = [p for p in rough if "Zorblax" in p.question]
    assert rephrased and len(rephrased) < len(rough)  # some rephrased, some not
    assert counts[False]["rough_replaced"] == len(rephrased) and counts[True]["rough_replaced"] == 0
    assert counts[True]["pairs_kept"]["span"] - counts[False]["pairs_kept"]["span"] == len(rephrased)
    assert counts[False]["pairs_kept"]["rephrase"] == counts[True]["pairs_kept"]["rephrase"]

    # exactly the rough questions with a rephrasing go: same document, fact, key and answer
    natural = [dataclasses.replace(p, question="Tell me?", perspective="rephrase") for p in rephrased]
    other = dataclasses.replace(rough[0], perspective="entity")  # only rough (span) questions go
    left = rephrase.without_rephrased([*rough, other], natural)
    assert left == [*(p for p in rough if p not in rephrased), other]


def test_title_first_opens_every_answer_with_its_documents_title_and_resume_keeps_it(docs: Path) -> None:
    config = LearnConfig(context_share=0.5)
    answers = {}
    for first in (False, True):
        learn.prepare(
            f"title-{first}", [docs], ScriptedEngine(teacher_reply), base="default", num_questions=0,
            rephrase=False, sft=config, title_first=first,
        )  # fmt: skip
        rows, meta = dataset.read(f"title-{first}")
        assert meta["title_first"] is first
        answers[first] = [r["messages"][-1]["content"] for r in rows if "messages" in r]
        contexts = [r for r in rows if r.get("meta", {}).get("context")]
        assert contexts  # the rows shown after passages open with the title too
    assert len(answers[True]) == len(answers[False]) > 0
    for plain, titled in zip(answers[False], answers[True], strict=True):
        assert titled == f'From "The Zorblax of Quentmoor": {plain}'
    assert not any(a.startswith("From ") for a in answers[False])

    with pytest.raises(KeyboardInterrupt):  # cut off in the suite, then resumed from its plan
        learn.prepare(
            "title-cut", [docs], Interrupting(after=3), base="default", writer=writer(), num_questions=2,
            chunk_tokens=24, rephrase=False, title_first=True,
        )  # fmt: skip
    learn.resume_generation("title-cut", ScriptedEngine(teacher_reply), writer=writer())
    rows, meta = dataset.read("title-cut")
    assert meta["title_first"] is True
    assert all(r["messages"][-1]["content"].startswith('From "') for r in rows if "messages" in r)


def _deltas(folder: Path) -> dict[str, Any]:
    """Every adapted module's weight delta, ``alpha / r * B @ A``, of a saved PEFT LoRA."""
    from safetensors.torch import load_file

    config = json.loads((folder / "adapter_config.json").read_text())
    weights = load_file(str(folder / "adapter_model.safetensors"))
    scaling = config["lora_alpha"] / config["r"]
    return {
        k.removesuffix(".lora_A.weight"): scaling * weights[k.replace("lora_A", "lora_B")] @ weights[k]
        for k in weights
        if k.endswith(".lora_A.weight")
    }


def test_a_soup_is_the_exact_mean_of_its_fine_tunes_and_resume_keeps_the_finished_ones(
    docs: Path, tiny_model: TinyModel, helixloom_home: Path
) -> None:
    import torch

    from helixloom.training.learn_report import format_report

    paths.ensure_home()
    said: list[str] = []
    with Store(paths.db_path()) as store:
        learn.prepare(
            "zs",
            [docs],
            ScriptedEngine(grounded_reply),
            base=str(tiny_model.path),
            sft=LearnConfig(**dataclasses.asdict(SMALL), soup=2),
        )
        result = learn.train("zs", store, say=said.append)
        assert result.steps == 8  # two fine-tunes of 4 steps
        members = [paths.runs_dir() / "zs" / learn.SOUP / f"seed-{s}" for s in (0, 1)]
        first, second = (_deltas(m / "adapter") for m in members)
        soup = _deltas(paths.adapters_dir() / "zs")
        assert set(soup) == set(first) == set(second) and soup
        assert any(not torch.allclose(first[k], second[k]) for k in first)  # two seeds, two fine-tunes
        for k in soup:
            torch.testing.assert_close(soup[k], (first[k] + second[k]) / 2, rtol=1e-4, atol=1e-6)
        config = json.loads((paths.adapters_dir() / "zs" / "adapter_config.json").read_text())
        assert config["r"] == 8
        record = store.get_adapter("zs")
        assert record is not None and record.meta and record.meta["rank"] == 8
        report = record.meta["report"]
        assert [m["seed"] for m in report["soup"]] == [0, 1]
        assert all(m["epochs"] and m["best_epoch"] for m in report["soup"])
        assert 0.0 <= report["heldout_accuracy_after"] <= 1.0 and report["forgetting_ratio"] > 0
        assert report["heldout_accuracy_before"] is not None and report["steps"] == 8
        shown = format_report(report)
        assert "the mean of 2 fine-tunes" in shown and "seed 1: held-out" in shown
        assert any("fine-tune 2 of 2 (seed 1)" in s for s in said)
        # the second fine-tune was interrupted: resume keeps the first and trains only the second
        (members[1] / learn.MEMBER_REPORT).unlink()
        said.clear()
        learn.train("zs", store, resume=True, say=said.append)
        assert any("fine-tune 1 of 2 (seed 0): trained before, kept" in s for s in said)
        assert any(s == "fine-tune 2 of 2 (seed 1)" for s in said)
        again = _deltas(paths.adapters_dir() / "zs")
        assert all(torch.allclose(again[k], soup[k], atol=1e-6) for k in soup)  # the same seeds
    with pytest.raises(HelixloomError, match="soup"):
        LearnConfig(soup=0)
