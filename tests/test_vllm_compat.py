"""What benchmark and evaluation clients expect from a vLLM-compatible server: token-id prompts on
/v1/completions, /tokenizer_info, /version, /health, and the exact requests lm-evaluation-harness's
``local-completions`` model sends with each of its tokenizer options.

The lm-eval requests are replicated from its source (``LocalCompletionsAPI._create_payload``,
``TemplateAPI.create_message``, ``parse_logprobs``, ``TemplateLM._encode_pair``, ``RemoteTokenizer``)
and their answers checked against the model's own log-probabilities, computed here with torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import httpx
import openai
import pytest

from helixloom import __version__
from helixloom.engine.hf import HFEngine
from helixloom.server import ServerConfig, ServerState
from helixloom.store import Store
from tests.conftest import TinyModel, serving


@dataclass
class Served:
    url: str
    state: ServerState
    engine: HFEngine

    @property
    def model(self) -> str:
        return self.state.base_id

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=60)


@pytest.fixture(scope="module")
def served(
    tiny_model: TinyModel, tiny_engine: HFEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    store = Store(tmp_path_factory.mktemp("compat") / "helixloom.db")
    state = ServerState(ServerConfig(model=str(tiny_model.path), run_jobs=False), tiny_engine, store)
    with serving(state) as server:
        yield Served(server.url, state, tiny_engine)


def true_logprobs(engine: HFEngine, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1, straight from the model (the oracle)."""
    import torch

    with torch.inference_mode():
        logits = engine.base_model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [float(logprobs[i - 1, t]) for i, t in enumerate(ids) if i > 0]


def greedy_next(engine: HFEngine, ids: list[int]) -> int:
    import torch

    with torch.inference_mode():
        return int(engine.base_model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())


# ----------------------------------------------------------------------------- token-id prompts


def test_token_id_prompts_single_and_batched(served: Served) -> None:
    tok = served.engine.tokenizer
    texts = ["The quick brown fox", "Paris is the capital of"]
    ids = [tok(t, add_special_tokens=True).input_ids for t in texts]
    client = served.client()
    by_text = client.completions.create(model=served.model, prompt=texts, temperature=0, max_tokens=6)
    one = client.completions.create(model=served.model, prompt=ids[0], temperature=0, max_tokens=6)
    batch = client.completions.create(model=served.model, prompt=ids, temperature=0, max_tokens=6)
    assert one.choices[0].text == by_text.choices[0].text
    assert [c.text for c in batch.choices] == [c.text for c in by_text.choices]
    assert batch.usage is not None and batch.usage.prompt_tokens == sum(len(i) for i in ids)
    # Ids without a BOS are read as they are: no BOS is added (the text path adds one).
    bare = tok(texts[0], add_special_tokens=False).input_ids
    scored = client.completions.create(model=served.model, prompt=bare, echo=True, logprobs=0, max_tokens=0)
    lp = scored.choices[0].logprobs
    assert lp is not None and len(lp.tokens or []) == len(bare) and (lp.token_logprobs or [1.0])[0] is None
    got = (lp.token_logprobs or [])[1:]
    assert got == pytest.approx(true_logprobs(served.engine, bare), abs=1e-4)


@pytest.mark.parametrize(
    ("prompt", "words"),
    [([], "never empty"), ([[]], "never empty"), ([10**9], "outside the vocabulary"), ([[1], "a"], "prompt")],
)
def test_bad_token_id_prompts_are_clean_400s(served: Served, prompt: object, words: str) -> None:
    reply = served.post("/v1/completions", {"model": served.model, "prompt": prompt, "max_tokens": 2})
    assert reply.status_code == 400 and words in reply.json()["error"]["message"]


# ------------------------------------------------------------------------ vLLM's side routes


def test_tokenizer_info_version_and_health(served: Served) -> None:
    tok = served.engine.tokenizer
    info = httpx.get(served.url + "/tokenizer_info").json()
    assert info["eos_token"] == tok.eos_token and info["bos_token"] == tok.bos_token
    assert (
        info["chat_template"] == tok.chat_template and info["model_max_length"] == served.engine.max_model_len
    )
    assert httpx.get(served.url + "/version").json() == {"version": __version__}
    assert httpx.get(served.url + "/health").status_code == 200


# ------------------------------------------------------------------ lm-evaluation-harness's requests


class LmEval:
    """lm-eval's ``local-completions`` as far as what it sends and how it reads the answers."""

    def __init__(self, served: Served, *, tokenized_requests: bool, tokenizer_backend: str) -> None:
        self.served = served
        self.tokenized_requests = tokenized_requests
        self.backend = tokenizer_backend
        if tokenizer_backend == "remote":
            # RemoteTokenizer: validates /tokenizer_info, then /tokenize and /detokenize per call.
            base = served.url  # lm-eval strips /v1/completions from base_url
            assert "eos_token" in httpx.get(base + "/tokenizer_info").json()
            self.info = httpx.get(base + "/tokenizer_info").json()
        self.hf = served.engine.tokenizer

    def encode(self, text: str) -> list[int]:
        if self.backend == "remote":
            reply = self.served.post("/tokenize", {"prompt": text, "add_special_tokens": False})
            tokens = reply.json()["tokens"]
            assert isinstance(tokens, list)
            return tokens
        return list(self.hf(text, add_special_tokens=False).input_ids)

    def decode(self, ids: list[int]) -> str:
        if self.backend == "remote":
            return str(self.served.post("/detokenize", {"tokens": ids}).json()["prompt"])
        return str(self.hf.batch_decode([ids])[0])

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole, ctx = self.encode(context + continuation), self.encode(context)
        return ctx, whole[len(ctx) :]

    def message(self, batch: list[list[int]]) -> Any:
        if not self.tokenized_requests:
            texts = [self.decode(ids) for ids in batch]
            return texts[0] if len(texts) == 1 else texts
        return batch

    def loglikelihood(self, pairs: list[tuple[str, str]], batch_size: int) -> list[tuple[float, bool]]:
        inputs, ctxlens = [], []
        for context, continuation in pairs:
            ctx, cont = self.encode_pair(context, continuation)
            inputs.append(ctx + cont)
            ctxlens.append(len(ctx))
        return self.loglikelihood_tokens(inputs, ctxlens, batch_size)

    def loglikelihood_tokens(
        self, inputs: list[list[int]], ctxlens: list[int], batch_size: int
    ) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool]] = []
        for start in range(0, len(inputs), batch_size):
            chunk, lens = inputs[start : start + batch_size], ctxlens[start : start + batch_size]
            payload = {
                "model": self.served.model,
                "prompt": self.message(chunk),
                "temperature": 0,
                "max_tokens": 1,
                "logprobs": 1,
                "seed": 1234,
                "echo": True,
            }
            reply = self.served.post("/v1/completions", payload)
            assert reply.status_code == 200, reply.text
            for choice, ctxlen in zip(
                sorted(reply.json()["choices"], key=itemgetter("index")), lens, strict=True
            ):
                logprobs = choice["logprobs"]["token_logprobs"][ctxlen:-1]
                tops = choice["logprobs"]["top_logprobs"][ctxlen:-1]
                greedy = all(lp == max(top.values()) for lp, top in zip(logprobs, tops, strict=True))
                out.append((sum(logprobs), greedy))
        return out

    def generate_until(self, context: str, until: list[str], max_gen_toks: int) -> str:
        prompt = self.message([self.encode(context)]) if self.tokenized_requests else context
        payload = {
            "prompt": prompt,
            "model": self.served.model,
            "max_tokens": max_gen_toks,
            "temperature": 0,
            "stop": until,
            "seed": 1234,
        }
        reply = self.served.post("/v1/completions", payload)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["choices"][0]["text"])


PAIRS = [
    ("The quick brown fox", " jumps over the lazy dog"),
    ("Question: what is the capital of France?\nAnswer:", " Paris"),
    ("def add(a, b):\n   ", " return a + b"),  # trailing spaces move to the continuation
]


@pytest.mark.parametrize("tokenized_requests", [True, False])
@pytest.mark.parametrize("tokenizer_backend", ["huggingface", "remote"])
def test_lm_eval_local_completions_runs_unchanged(
    served: Served, tokenized_requests: bool, tokenizer_backend: str
) -> None:
    """Log-likelihoods (echo + logprobs, max_tokens 1, lm-eval slicing ``[ctxlen:-1]``) equal the
    model's own, batched or not, with every tokenizer option; generations equal plain greedy ones."""
    lm = LmEval(served, tokenized_requests=tokenized_requests, tokenizer_backend=tokenizer_backend)
    for batch_size in (1, 2):
        results = lm.loglikelihood(PAIRS, batch_size)
        for (context, continuation), (total, _) in zip(PAIRS, results, strict=True):
            ctx, cont = lm.encode_pair(context, continuation)
            ids = ctx + cont
            if not tokenized_requests:  # the server reads the text: it puts its BOS first
                ids = [served.engine.tokenizer.bos_token_id, *ids]
            expected = sum(true_logprobs(served.engine, ids)[-len(cont) :])
            assert total == pytest.approx(expected, abs=1e-3), (context, batch_size)
    if tokenized_requests:
        # is_greedy is read from each continuation token's top-1 logprob: true for the model's own
        # greedy continuation, false once a token is not the argmax.
        ids = lm.encode("The quick brown fox")
        for _ in range(3):
            ids.append(greedy_next(served.engine, ids))
        wrong = [*ids[:-1], (ids[-1] + 1) % len(served.engine.tokenizer)]
        ctxlen = len(ids) - 3
        results = lm.loglikelihood_tokens([ids, wrong], [ctxlen, ctxlen], 2)
        assert [greedy for _, greedy in results] == [True, False]
    # Generation: what the model greedily continues the ids the server read (the text path adds BOS).
    text = lm.generate_until("The quick brown fox", ["\n\n"], 8)
    ids = lm.encode("The quick brown fox")
    if not tokenized_requests:
        ids = [served.engine.tokenizer.bos_token_id, *ids]
    made: list[int] = []
    while len(made) < 8 and (not made or made[-1] not in served.engine.eos_token_ids):
        made.append(greedy_next(served.engine, ids + made))
    expected = served.engine.tokenizer.decode(made, skip_special_tokens=True).split("\n\n")[0]
    assert text == expected
