"""``helixloom train sft|dpo|evaluator`` and their data loading, on the tiny model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from helixloom.cli import main
from helixloom.errors import HelixloomError
from helixloom.store import NewMessage, Store
from helixloom.training.configs import LoraSFTConfig
from helixloom.training.data import liked_rows, load_sft_data, mix_general, sft_row
from helixloom.training.evaluator_tune import Example, evaluator_rows, split, train_evaluator

FAST = ["--max-steps", "2", "--batch-size", "2", "--rank", "4", "--learning-rate", "1e-3"]


def words(text: str) -> int:
    return len(text.split())


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sft_rows_of_every_form_and_clear_errors(tmp_path: Path) -> None:
    data = _write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"prompt": "Once upon", "completion": " a time"},
            {"text": "plain text"},
            # a session export: extra fields, and a trailing critique-free user turn is dropped
            {
                "id": "s1",
                "messages": [
                    {"role": "user", "content": "q", "id": 1},
                    {"role": "assistant", "content": "a", "stage": None},
                    {"role": "user", "content": "unanswered"},
                ],
            },
        ],
    )
    doc = tmp_path / "notes.md"
    doc.write_text("# Notes\n\n" + "Paragraph with words. " * 60)
    loaded = load_sft_data([data, doc], words, chunk_tokens=64)
    kinds = [next(iter(r)) for r in loaded.rows]
    assert kinds[:4] == ["messages", "prompt", "text", "messages"]
    assert loaded.rows[3]["messages"][-1] == {"role": "assistant", "content": "a"}
    chunks = [r["text"] for r in loaded.rows[4:]]
    assert len(chunks) >= 3 and all(words(c) <= 64 for c in chunks)
    assert loaded.sources[str(data)] == 4
    for bad, msg in [
        ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "user message"),
        ({"prompt": "p", "completion": "  "}, "completion is empty"),
        ({"question": "?"}, "expected 'messages'"),
    ]:
        with pytest.raises(HelixloomError, match=msg):
            sft_row(bad, "row 1")
    with pytest.raises(HelixloomError, match="does not exist"):
        load_sft_data([tmp_path / "missing.jsonl"], words)


def test_mix_general_makes_up_the_ratio(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"General paragraph number {i} about many things." for i in range(200)))
    rows = [{"text": f"user row {i}"} for i in range(30)]
    mixed, added = mix_general(rows, [corpus], 0.25, words, chunk_tokens=16)
    assert added == 10 and len(mixed) == 40
    assert sum(r["text"].startswith("user row") for r in mixed) == 30
    with pytest.raises(HelixloomError, match="between 0 and 1"):
        mix_general(rows, [corpus], 1.0, words)


def test_liked_rows_from_the_store(tmp_path: Path) -> None:
    store = Store.open_default()
    liked = store.record_session(
        "api",
        [
            NewMessage("user", "What is 2+2?"),
            NewMessage("assistant", "4"),
            NewMessage("assistant", "bad", stage="critic"),
        ],
    )
    store.add_rating("session", liked.id, 1)
    disliked = store.record_session("api", [NewMessage("user", "x"), NewMessage("assistant", "y")])
    store.add_rating("session", disliked.id, -1)
    rows = liked_rows(store)
    assert rows == [
        {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]}
    ]


def test_train_sft_cli_with_documents_mix_and_store(tiny_model, tmp_path: Path, capsys) -> None:
    data = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Say hi", "completion": " hi"}] * 3)
    corpus = tmp_path / "general.txt"
    corpus.write_text("\n\n".join(f"General text {i}." for i in range(50)))
    args = ["train", "sft", "--data", str(data), "--name", "mine", "--base", str(tiny_model.path)]
    assert main([*args, "--mix", str(corpus), "--mix-ratio", "0.5", "--chunk-tokens", "16", *FAST]) == 0
    captured = capsys.readouterr()
    assert "3 training rows" in captured.err and "mixed in 3 rows" in captured.err
    assert "trained mine: 2 steps" in captured.out
    assert (Path(captured.out.split("adapter ")[-1].strip()) / "adapter_config.json").is_file()
    # The name is taken now; a second run must say so.
    assert main([*args, *FAST]) == 2
    assert "registered" in capsys.readouterr().err
    # Nothing to train on is a clear error.
    assert main(["train", "sft", "--name", "empty", "--base", str(tiny_model.path), "--from-store"]) == 2
    assert "no training rows" in capsys.readouterr().err


def test_train_dpo_cli(tiny_model, tmp_path: Path, capsys) -> None:
    rows = [
        {"prompt": "Once upon a time", "chosen": " a fox jumped.", "rejected": " no no no."},
        {
            "messages": [{"role": "user", "content": "Capital of France?"}],
            "chosen": "Paris.",
            "rejected": "Berlin.",
        },
    ]
    data = _write_jsonl(tmp_path / "prefs.jsonl", rows)
    args = ["train", "dpo", "--data", str(data), "--name", "pref", "--base", str(tiny_model.path), *FAST]
    assert main(args) == 0
    assert "2 preference pairs" in capsys.readouterr().err
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "c"}])
    assert main(["train", "dpo", "--data", str(bad), "--name", "x", "--base", str(tiny_model.path)]) == 2
    assert "line 1" in capsys.readouterr().err


def test_dpo_with_an_nll_term_raises_the_chosen_answers_likelihood(tiny_model, tmp_path: Path) -> None:
    # RPO: DPO alone only widens the chosen-rejected margin; the NLL term also pulls the chosen up
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helixloom.training.configs import LoraDPOConfig
    from helixloom.training.dpo import train_dpo

    rows = [
        {"prompt": f"Question {i}:", "chosen": " the quiet fox sleeps.", "rejected": f" no {i} no."}
        for i in range(8)
    ]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model.path))

    def chosen_logprob(adapter: Path) -> float:
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model.path), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(adapter)).eval()
        prompt = tokenizer("Question 3:").input_ids
        full = tokenizer("Question 3: the quiet fox sleeps.").input_ids
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([full])).logits[0, :-1].log_softmax(-1)
        picked = logits.gather(1, torch.tensor(full[1:])[:, None])[:, 0]
        return float(picked[len(prompt) - 1 :].sum())

    got = {}
    for weight in (0.0, 2.0):
        cfg = LoraDPOConfig(
            rank=4, learning_rate=1e-3, max_steps=6, batch_size=4, save_steps=1000, sft_weight=weight
        )
        out = tmp_path / f"w{weight}"
        train_dpo(str(tiny_model.path), rows, out, tmp_path / f"run{weight}", cfg)
        got[weight] = chosen_logprob(out)
    assert got[2.0] > got[0.0] + 0.5, got
    with pytest.raises(HelixloomError, match="sft_weight"):
        LoraDPOConfig(sft_weight=-1)


def _examples(n: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        good = i % 2 == 0
        word = "Paris" if good else "Berlin"
        out.append(Example(f"Capital of France? ({rng.randint(0, 99)})", f"It is {word}.", int(good)))
    return out


def test_evaluator_rows_answer_yes_or_no_after_the_template() -> None:
    rows = evaluator_rows(_examples(2, 0), "Is it right?", "P:{prompt} R:{response} Q:{question}\nAnswer:\n")
    assert rows[0]["completion"] == "Yes" and rows[1]["completion"] == "No"
    assert rows[0]["prompt"].endswith("Q:Is it right?\nAnswer:\n") and "It is Paris." in rows[0]["prompt"]
    assert (
        evaluator_rows(_examples(1, 0), "Q", "{prompt}{response}{question} Answer:")[0]["completion"]
        == " Yes"
    )
    train, test = split(_examples(20, 0), 0.2, seed=0)
    assert len(test) == 4 and {e.label for e in test} == {0, 1} and len(train) == 16


def test_tuned_evaluator_learns_the_ratings(tiny_model, tmp_path: Path) -> None:
    config = LoraSFTConfig(rank=8, alpha=16, learning_rate=1e-2, epochs=15, batch_size=8, save_steps=1000)
    result = train_evaluator(
        str(tiny_model.path),
        _examples(40, 1),
        tmp_path / "evaluator",
        tmp_path / "run",
        config,
        question="Is the answer right?",
        held_out=0.25,
    )
    assert result.held_out == 10
    # The random model cannot tell the answers apart; the tuned evaluator can.
    assert result.accuracy_before == 0.5
    assert result.accuracy_after is not None and result.accuracy_after >= 0.9
    assert result.train.changed_fraction == 1.0
    with pytest.raises(HelixloomError, match="both kinds"):
        train_evaluator(
            str(tiny_model.path), _examples(1, 0), tmp_path / "e2", tmp_path / "r2", question="Q?"
        )


def test_train_evaluator_cli_from_jsonl(tiny_model, fresh_tiny_engine, tmp_path: Path, capsys) -> None:
    from helixloom.weave.evaluator import Evaluator, Question

    # 7 thumbs up and 3 down, half held out (4 up, 2 down): a constant verdict scores 1/3 or 2/3.
    pool = _examples(14, 2)
    examples = [e for e in pool if e.label][:7] + [e for e in pool if not e.label][:3]
    rows = [{"prompt": e.prompt, "response": e.response, "label": e.label} for e in examples]
    data = _write_jsonl(tmp_path / "labels.jsonl", rows)
    question = "Is the answer right?"
    args = [
        "train",
        "evaluator",
        "--data",
        str(data),
        "--name",
        "ev",
        "--base",
        str(tiny_model.path),
        "--json",
    ]
    assert main([*args, "--question", question, "--held-out", "0.5", *FAST]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["examples"] == 10 and out["held_out"] == 6 and out["steps"] == 2
    # The accuracies printed are the held-out share the base model and the saved adapter get right,
    # measured again here from the evaluator's yes/no log-odds.
    _, held_out = split(examples, 0.5, seed=0)
    assert sorted(e.label for e in held_out) == [0, 0, 1, 1, 1, 1]
    fresh_tiny_engine.load_adapter("ev", out["adapter"])

    def right(adapter: str | None) -> float:
        scores = Evaluator(fresh_tiny_engine, [Question(question)], adapter=adapter).score(
            [(e.prompt, e.response) for e in held_out]
        )
        return sum((s > 0) == bool(e.label) for s, e in zip(scores, held_out, strict=True)) / len(held_out)

    assert out["accuracy_before"] == right(None)
    assert out["accuracy_after"] == right("ev")
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "response": "r", "label": 3}])
    assert (
        main(["train", "evaluator", "--data", str(bad), "--name", "x", "--base", str(tiny_model.path)]) == 2
    )
    assert "not 0 or 1" in capsys.readouterr().err


def test_sft_dpo_and_raft_render_a_conversation_to_the_same_tokens(tiny_model, tmp_path: Path) -> None:
    """One chat-template path: the prompt tokens TRL's SFT and DPO trainers build (SFT rows, `train
    dpo` rows, and iterate's DPO pairs and RAFT rows) are the tokens the served prompt has."""
    import random as _random

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from helixloom.engine import load_engine
    from helixloom.prompting import render
    from helixloom.training.chat_template import render_prompt
    from helixloom.training.dpo import dpo_rows
    from helixloom.training.iterate_state import Sample
    from helixloom.training.pairing import training_rows
    from helixloom.training.sft import to_prompt_completion

    folder = str(tiny_model.path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    engine = load_engine(folder)
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is Paris?"},
    ]
    served = engine.tokenize(render(engine, conversation).prompt)
    sample = Sample(0, "Where is Paris?", ["France.", "Mars."], [1.0, 0.0], [2, 2])

    def iterate_rows(method: str) -> list[dict]:
        rows, _ = training_rows(
            [sample],
            method=method,
            how="max_min",
            rng=_random.Random(0),
            messages=lambda p: [conversation[0], {"role": "user", "content": p}],
            render=lambda m: render(engine, m).prompt,
        )
        return [r.to_json() for r in rows]

    sft_row = {"messages": [*conversation, {"role": "assistant", "content": "France."}]}
    sft = to_prompt_completion([sft_row, *iterate_rows("raft")], tokenizer, None)
    dpo_cli = {"prompt": render_prompt(tokenizer, conversation), "chosen": "France.", "rejected": "Mars."}
    dpo = dpo_rows([dpo_cli, *iterate_rows("dpo")])

    model = AutoModelForCausalLM.from_pretrained(folder)
    common = {"output_dir": str(tmp_path), "report_to": [], "use_cpu": True, "max_length": 256}
    sft_data = SFTTrainer(
        model=model,
        args=SFTConfig(**common, completion_only_loss=True),
        train_dataset=Dataset.from_list(sft),
        processing_class=tokenizer,
    ).train_dataset
    dpo_data = DPOTrainer(
        model=model,
        args=DPOConfig(**common),
        train_dataset=Dataset.from_list(dpo),
        processing_class=tokenizer,
    ).train_dataset
    sft_prompts = [
        [t for t, label in zip(r["input_ids"], r["labels"], strict=True) if label == -100] for r in sft_data
    ]
    dpo_prompts = [list(r["prompt_ids"]) for r in dpo_data]
    assert len(sft_prompts) == 2 and len(dpo_prompts) == 2  # SFT + RAFT, `train dpo` + iterate's DPO
    assert served[:1] == [tokenizer.bos_token_id] and served.count(tokenizer.bos_token_id) == 1
    for ids in sft_prompts + dpo_prompts:
        assert ids == served


def test_resume_passes_over_a_half_written_checkpoint(tmp_path: Path) -> None:
    from helixloom.training.trainer import last_complete_checkpoint, prepare_run_dir

    def checkpoint(step: int, *, state: str | None, weights: bool) -> Path:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if weights:
            (folder / "adapter_model.safetensors").write_bytes(b"weights")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
        return folder

    assert last_complete_checkpoint(tmp_path) is None
    good = checkpoint(2, state='{"global_step": 2}', weights=True)
    checkpoint(4, state='{"global_st', weights=True)  # killed while the state was being written
    checkpoint(6, state=None, weights=True)  # killed before the state
    checkpoint(8, state='{"global_step": 8}', weights=False)  # weights missing
    (tmp_path / "checkpoint-10.partial").mkdir()
    assert prepare_run_dir(tmp_path, resume=True) == str(good)
    assert prepare_run_dir(tmp_path, resume=False) is None
    assert not list(tmp_path.glob("checkpoint-*"))


def test_output_layer_on_loss_tokens_only_gives_the_same_loss_and_gradients(tiny_model) -> None:
    """The training speed-up scores only the answer's positions; the loss and every LoRA gradient
    must equal TRL's own all-positions path (and TRL must still decide through the name we patch)."""
    import torch
    from peft import get_peft_model
    from trl.trainer import utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    from helixloom.training.trainer import KeptProbabilities, lora_config, output_layer_on_loss_tokens_only

    assert callable(trl_utils._use_triton), "TRL moved the switch the speed-up relies on"
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model.path), dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    model = get_peft_model(model, lora_config(LoraSFTConfig(rank=4, alpha=8, dropout=0.0)))  # no noise
    ids = torch.randint(5, 200, (3, 24))
    labels = ids.clone()
    labels[:, :15] = -100  # a prompt, then the answer
    labels[2, 20:] = -100  # and a shorter answer (its padding)

    def loss_and_grads() -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)
        loss = -out.log_probs.sum() / (labels != -100).sum()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    loss_all, grads_all = loss_and_grads()
    original = trl_utils._ChunkedLogProbFunction
    with output_layer_on_loss_tokens_only():
        assert trl_utils._use_triton(torch.device("cpu")) is True  # the compact path is taken
        assert isinstance(trl_utils._ChunkedLogProbFunction, KeptProbabilities)  # and keeps the probabilities
        loss_compact, grads_compact = loss_and_grads()
    assert trl_utils._use_triton(torch.device("cpu")) is False  # restored afterwards
    assert trl_utils._ChunkedLogProbFunction is original
    assert loss_compact == pytest.approx(loss_all, rel=1e-5)
    assert sum(float(g.abs().sum()) for g in grads_all) > 0  # (LoRA A starts with zero gradients: B is 0)
    for a, b in zip(grads_all, grads_compact, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kept_probabilities_score_as_trls_function_does(dtype: str, monkeypatch) -> None:
    """The CPU scoring that keeps the probabilities (two products instead of three) gives TRL's
    log-probabilities, entropy, mean logit, top-1 and gradient; over its memory budget it is TRL's."""
    import torch
    from trl.trainer import utils as trl_utils

    from helixloom.training import trainer

    torch.manual_seed(0)
    kind = getattr(torch, dtype)
    hidden = torch.randn(37, 16, dtype=kind, requires_grad=True)
    weight = torch.randn(300, 16, dtype=kind) * 0.5
    targets = torch.randint(0, 300, (37,))
    targets[0] = int((hidden[0].detach() @ weight.T).argmax())  # one top-1 hit at least
    outputs = ("log_probs", "entropy", "mean_logits", "is_top1")
    original = trl_utils._ChunkedLogProbFunction
    calls = []

    class Counting:
        @staticmethod
        def apply(*args):
            calls.append(1)
            return original.apply(*args)

    kept = trainer.KeptProbabilities(Counting)

    def run(fn):
        h = hidden.detach().clone().requires_grad_(True)
        log_probs, entropy, _, mean_logits, is_top1 = fn.apply(
            h, weight, None, targets, 0.7, 128, None, 1.0, outputs
        )
        (log_probs * torch.linspace(0.5, 1.5, 37)).sum().backward()
        return log_probs.detach(), entropy, mean_logits, is_top1, h.grad

    want = run(original)
    got = run(kept)
    assert not calls  # kept: TRL's function was not called
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == "float32" else {"rtol": 2e-2, "atol": 2e-2}
    for a, b in zip(want[:3], got[:3], strict=True):
        torch.testing.assert_close(b.float(), a.float(), **tol)
    assert torch.equal(want[3], got[3]) and bool(got[3].any())
    torch.testing.assert_close(got[4].float(), want[4].float(), **tol)
    assert got[4].abs().sum() > 0

    h = hidden.detach().clone().requires_grad_(True)
    log_probs = kept.apply(h, weight, None, targets, 1.0, 128, None, 1.0, ("log_probs",))[0]
    log_probs.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):  # its probabilities became the gradient
        log_probs.sum().backward()

    with pytest.raises(NotImplementedError, match="entropy"):  # no silent zero gradient through it
        h = hidden.detach().clone().requires_grad_(True)
        kept.apply(h, weight, None, targets, 1.0, 128, None, 1.0, outputs)[1].sum().backward()

    monkeypatch.setattr(trainer, "KEPT_PROBABILITIES_BYTES", 1000)  # too small: TRL's recomputing path
    again = run(kept)
    assert calls
    torch.testing.assert_close(again[4], want[4])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kept_probabilities_get_the_gradient_of_confident_answers_right(dtype: str) -> None:
    """Fact learning drives the answer's probability towards 1, where 1 - p in bf16 is mostly
    rounding: each position's gradient must stay as close to the exact (float64) one as TRL's does.
    With a logit scale, a temperature and a bias."""
    import torch
    from trl.trainer import utils as trl_utils

    from helixloom.training import trainer

    torch.manual_seed(1)
    kind = getattr(torch, dtype)
    weight = torch.randn(300, 16, dtype=torch.float64)
    targets = torch.randint(0, 300, (24,))
    # the first positions point at their target's row, harder and harder: p_t from ~0.5 to > 0.9999
    hidden = torch.randn(24, 16, dtype=torch.float64) * 0.3
    hidden[:12] += weight[targets[:12]] * torch.linspace(0.1, 1.2, 12)[:, None]
    bias = torch.randn(300, dtype=torch.float64) * 0.1
    scale, temperature = 1.3, 0.9
    weights = torch.linspace(0.5, 1.5, 24, dtype=torch.float64)

    h = hidden.clone().requires_grad_(True)
    exact = ((h @ weight.T + bias) * scale / temperature).log_softmax(-1).gather(1, targets[:, None])[:, 0]
    (exact * weights).sum().backward()
    assert exact[:12].exp().max() > 0.9999  # confident answers are in the test

    def grad_of(fn) -> torch.Tensor:
        h = hidden.to(kind).requires_grad_(True)
        out = fn.apply(
            h, weight.to(kind), bias.to(kind), targets, temperature, 128, None, scale, ("log_probs",)
        )
        (out[0] * weights.float()).sum().backward()
        return h.grad.double()

    def row_error(g: torch.Tensor) -> torch.Tensor:
        return (g - h.grad).norm(dim=1) / h.grad.norm(dim=1)

    trl_error = row_error(grad_of(trl_utils._ChunkedLogProbFunction))
    kept_error = row_error(grad_of(trainer.KeptProbabilities(trl_utils._ChunkedLogProbFunction)))
    allowed = 1e-5 if dtype == "float32" else 0.02
    assert bool((kept_error <= 2 * trl_error + allowed).all()), (kept_error, trl_error)


def test_batches_of_similar_length_pad_less(tiny_model, tmp_path: Path) -> None:
    # Half the rows are short, half long; a batch pads to its longest row, so a random batch that
    # mixes the two pays for the long one twice. Grouping by length processes fewer positions.
    from helixloom.training.sft import train_lora

    long_prompt = " ".join(["the lighthouse keeper wrote down the weather"] * 8)
    rows = [{"prompt": "Hi", "completion": "ok"} for _ in range(16)]
    rows += [{"prompt": f"{long_prompt} {i}", "completion": "noted"} for i in range(16)]
    config = LoraSFTConfig(rank=4, alpha=8, epochs=1, batch_size=2, save_steps=1000)
    seen = {}
    for grouped in (False, True):
        out = tmp_path / str(grouped)
        result = train_lora(
            str(tiny_model.path), rows, out / "adapter", out / "run", config, group_by_length=grouped
        )
        assert result.steps == 16
        seen[grouped] = result.tokens
    assert seen[True] < 0.8 * seen[False]


def test_a_kl_anchor_holds_the_adapter_closer_to_the_base_on_general_text(tiny_model, tmp_path: Path) -> None:
    # The same rows, the same steps: with the anchor the adapter's next-token distributions on the
    # anchor's text stay nearer the base model's (the KL a step adds is what it then measures).
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helixloom.training.sft import KLAnchor, train_lora

    general = [f"the lighthouse keeper wrote down the weather on day {i} and went to sleep" for i in range(8)]
    rows = [{"prompt": f"Question {i}:", "completion": "zebra zebra zebra zebra"} for i in range(16)]
    config = LoraSFTConfig(rank=4, alpha=8, epochs=2, batch_size=4, learning_rate=5e-3, save_steps=1000)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    kl = {}
    for weight in (0.0, 4.0):
        out = tmp_path / str(weight)
        train_lora(
            str(tiny_model.path), rows, out / "adapter", out / "run", config,
            anchor_texts=general, anchor_weight=weight,
        )  # fmt: skip
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model.path), out / "adapter"
        )
        model.eval()
        with torch.no_grad():
            probe = KLAnchor(general, tokenizer, 1.0, batch_size=8, top_k=None)  # the exact KL
            kl[weight] = float(probe.loss(model))
    assert kl[0.0] > 0.01  # the rows moved the model on general text too
    assert kl[4.0] < 0.5 * kl[0.0]
    with pytest.raises(ValueError):
        KLAnchor([], tokenizer, 1.0)


def test_the_restricted_anchor_is_the_exact_kl_when_its_vocabulary_is_the_whole_one(tiny_model) -> None:
    # The anchor's short path (the decoder's hidden state times the chosen rows of the output
    # embeddings) must give the model's own logits: with every token chosen the two KLs are one.
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helixloom.training.sft import KLAnchor

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path)
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model.path),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),  # moved
    )
    general = [f"the keeper wrote down the weather on day {i}" for i in range(4)]
    vocab = model.get_base_model().config.vocab_size
    exact = KLAnchor(general, tokenizer, 1.0, top_k=None)
    whole = KLAnchor(general, tokenizer, 1.0, top_k=vocab)
    few = KLAnchor(general, tokenizer, 1.0, top_k=5, extra_ids=[3, 4])
    for _ in range(3):  # the first pass fills the base's cache, the next ones read it
        with torch.no_grad():
            e, w, f = float(exact.loss(model)), float(whole.loss(model)), float(few.loss(model))
        assert e > 0.01 and abs(w - e) < 1e-4 * max(1.0, e)
        assert f > 0  # a KL over 5 tokens and the 2 extra: positive, and not the exact one
    assert not whole._exact and len(whole._base) == 2  # the short path was used, the base kept
    with pytest.raises(ValueError):
        KLAnchor(general, tokenizer, 1.0, top_k=0)


def test_a_lora_trained_on_a_bf16_base_keeps_fp32_weights_and_precision_is_checked(
    tiny_model, tmp_path: Path
) -> None:
    # bf16 halves the base's cost on CPUs with native bf16; the adapter itself stays fp32, so it
    # loads on the fp32 model that serves it.
    from safetensors.torch import load_file

    from helixloom.errors import HelixloomError
    from helixloom.training.learn_config import LearnConfig
    from helixloom.training.sft import train_lora
    from helixloom.training.trainer import resolve_precision

    rows = [{"prompt": f"Question {i}:", "completion": "zebra zebra zebra"} for i in range(8)]
    config = LoraSFTConfig(rank=4, alpha=8, epochs=1, batch_size=4, learning_rate=5e-3, save_steps=1000)
    general = [f"the keeper wrote down the weather on day {i}" for i in range(4)]
    result = train_lora(
        str(tiny_model.path), rows, tmp_path / "a", tmp_path / "r", config,
        anchor_texts=general, anchor_weight=1.0, bf16=True,
    )  # fmt: skip
    assert result.steps == 2
    weights = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert weights and {str(v.dtype) for v in weights.values()} == {"torch.float32"}
    assert resolve_precision("bf16") is True and resolve_precision("fp32") is False
    with pytest.raises(HelixloomError, match="precision"):
        LearnConfig(precision="fp16")
    with pytest.raises(HelixloomError, match="context_share"):
        LearnConfig(context_share=1.5)


def test_the_kl_anchor_weighs_the_same_per_step_with_grad_accumulation(tiny_model, tmp_path: Path) -> None:
    # --batch-size 4 and --batch-size 2 --grad-accum 2 are the same optimizer steps on the same rows
    # (the answer loss is normalised over the whole accumulated batch); the anchor's term must not
    # count once per micro-batch, or accumulating to save memory doubles its weight.
    from safetensors.torch import load_file

    from helixloom.training.sft import train_lora

    rows = [{"prompt": f"Question {i}:", "completion": "zebra zebra zebra zebra"} for i in range(8)]
    general = ["the lighthouse keeper wrote down the weather", "and went to sleep at nine"]  # one batch
    weights = {}
    for weight in (0.0, 4.0):
        for batch, accum in ((4, 1), (2, 2)):
            config = LoraSFTConfig(
                rank=4, alpha=8, dropout=0.0, epochs=1, batch_size=batch, grad_accum=accum,
                learning_rate=5e-3, save_steps=1000,
            )  # fmt: skip
            out = tmp_path / f"{weight}-{batch}"
            result = train_lora(
                str(tiny_model.path), rows, out / "adapter", out / "run", config,
                anchor_texts=general, anchor_weight=weight,
            )  # fmt: skip
            assert result.steps == 2
            weights[weight, batch] = load_file(out / "adapter" / "adapter_model.safetensors")

    def gap(a: dict[str, object], b: dict[str, object]) -> float:
        import torch

        return max(float((torch.as_tensor(a[k]) - torch.as_tensor(b[k])).abs().max()) for k in a)

    moved = gap(weights[4.0, 4], weights[0.0, 4])
    assert moved > 1e-3  # the anchor moved the second step (measured: 4e-3)
    # accumulation alone changes only rounding (2e-5), and so it must with the anchor (before the
    # fix: 3.7e-3, the anchor counted twice)
    assert gap(weights[0.0, 4], weights[0.0, 2]) < 0.05 * moved
    assert gap(weights[4.0, 4], weights[4.0, 2]) < 0.05 * moved


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_cpu_dropout_drops_like_torchs_dropout(p: float) -> None:
    # The same distribution as nn.Dropout: each element dropped independently with probability p,
    # the rest scaled by 1 / (1 - p); the gradient is the same mask; seeded by torch's generator.
    import torch

    from helixloom.training.trainer import cpu_dropout

    drop = cpu_dropout(p)
    x = torch.ones(2, 1001, 999, requires_grad=True)  # an odd count: two draws per 32-bit integer
    torch.manual_seed(0)
    y = drop(x)
    n = x.numel()
    dropped = y == 0
    share = float(dropped.double().mean())
    assert abs(share - p) < 5 * (p * (1 - p) / n) ** 0.5
    assert torch.all(y[~dropped] == 1 / (1 - p))
    # the two 16-bit halves of one integer are independent: neighbours are both dropped p^2 of the time
    flat = dropped.flatten()[: n // 2 * 2].view(-1, 2)
    both = float(flat.all(dim=1).double().mean())
    assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / (n // 2)) ** 0.5
    # a whole row drops p of its elements too (no stripes in the mask)
    assert abs(float(dropped[0, :, 0].double().mean()) - p) < 5 * (p * (1 - p) / 1001) ** 0.5
    y.backward(torch.ones_like(y))
    assert x.grad is not None and torch.equal(x.grad, y.detach())
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # seeded
    assert not torch.equal(drop(x), y)  # and a new mask each call
    half = drop(torch.ones(64, 64, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16
    drop.eval()
    assert drop(x) is x


def test_auto_precision_is_bf16_where_it_is_native(monkeypatch) -> None:
    # learn's default: bf16 on a GPU or a CPU that computes bf16 natively, fp32 where it is emulated
    import torch

    from helixloom.training import trainer

    for cuda, native, want in ((False, False, False), (False, True, True), (True, False, True)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(trainer, "cpu_bf16", lambda native=native: native)
        assert trainer.resolve_precision("auto") is want
        assert trainer.resolve_precision("fp32") is False and trainer.resolve_precision("bf16") is True


def test_cpu_training_swaps_lora_dropout_and_it_trains(tiny_model, tmp_path: Path, monkeypatch) -> None:
    # Every LoRA layer's dropout becomes cpu_dropout when training on a CPU, and it still acts:
    # training with dropout differs from training without.
    import torch
    from safetensors.torch import load_file

    from helixloom.training import trainer
    from helixloom.training.sft import train_lora

    seen: list[tuple[int, list[str]]] = []
    swap = trainer.use_cpu_dropout

    def spy(model):
        count = swap(model)
        kinds = [type(m).__name__ for m in model.modules() if type(m).__name__.endswith("Dropout")]
        seen.append((count, kinds))
        return count

    monkeypatch.setattr(trainer, "use_cpu_dropout", spy)
    rows = [{"prompt": f"Question {i}:", "completion": "zebra zebra zebra"} for i in range(8)]
    weights = []
    for dropout in (0.0, 0.5):
        config = LoraSFTConfig(rank=4, alpha=8, dropout=dropout, epochs=1, batch_size=4, save_steps=1000)
        out = tmp_path / str(dropout)
        train_lora(str(tiny_model.path), rows, out / "adapter", out / "run", config)
        weights.append(load_file(out / "adapter" / "adapter_model.safetensors"))
    assert seen[0][0] == 0  # dropout 0: PEFT puts an identity there, nothing to swap
    count, kinds = seen[1]
    assert count > 0 and kinds == ["CpuDropout"] * count
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
