"""Learning from users, measured: simulated users with hidden tastes rate through a real server, the
improve loop learns a reward from their ratings, trains, promotes, hot-loads; does approval rise?

For each taste (a Python function the loop never sees, ``helixloom.evals.simulated_users``) and each
selection arm (``active``: the reward's Laplace posterior variance; ``bald``: its bootstrap members'
disagreement; ``random``: same seeds, same budget), one
improve run of ``--rounds`` rounds with ``--ratings`` ratings each, on the embedded default model:

- a real ``helixloom serve`` on a loopback port (a subprocess) serves the rating API the simulated
  user answers through (``GET /api/rate/RUN/queue``, ``POST /api/rate/RUN/answer``) and receives
  each promoted adapter with ``POST /v1/load_lora_adapter`` (vLLM's shape); after a promotion a few
  held-out prompts are asked of the server under the adapter's name and compared with the loop's
  own greedy answers (a stale adapter would answer differently);
- per round: approval of the current policy on held-out prompts by the hidden taste (base → each
  round) and the share liked and on the topic (``on_topic``: the tastes do not check it), ratings
  used, the learned reward's agreement with the taste on held-out pairs, mean length, distinct-2,
  KL to the base (a Monte-Carlo estimate on the policy's own held-out answers), promotion or
  rollback with the loop's reason, wall time per phase;
- after the rounds, AutoLoom at inference (``--search N``): N answers per held-out prompt, drawn as
  the run draws its own (forms included when it explores), from the base and from the final policy,
  and the one the run's last reward (``improve:NAME``) scores highest: approval of that pick, of a
  random pick of the same answers, and the share of prompts with any liked answer among them.

Then, per taste, the reward's learning curve for active, bald, top and random selection on one pool
of base-model candidate pairs (several seeds, the loops' budget): agreement on held-out pairs after
every batch of ratings, and how many ratings each needs to reach the agreement random reaches with
the whole budget; and the same for the approval of the answer the reward so far picks among each
held-out prompt's --k base answers, drawn as AutoLoom draws them (forms included: what the ratings
buy when the reward steers a search, with no training in between). This is the part of "active
reaches the same approval with fewer ratings" that is affordable on 2 CPU cores: it measures the
reward, which is what selection changes. The full loops give approval for each arm; ``RULE@N`` arms
ask N ratings a round (e.g. ``--arms top@30,random,random@30``), so the loops can show whether a
rule reaches random's approval with N/--ratings of its ratings in the same rounds.

    python benchmarks/feedback_loop.py [--tastes short_question,bullets] [--arms top,random]
        [--rounds 3] [--ratings 50] [--prompts 16] [--held-out 12] [--k 8] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _home import bench_home

TRAIN_PROMPTS = [
    "Why is the sky blue?",
    "How do plants make their food?",
    "What is a leap year?",
    "Give two tips for writing a clear email.",
    "What is the difference between weather and climate?",
    "How does a refrigerator keep food cold?",
    "Why do we have seasons on Earth?",
    "What does a computer's memory do?",
    "How do bees help farmers?",
    "What is a budget and why is it useful?",
    "Why does ice float on water?",
    "How do vaccines protect people from disease?",
    "What makes a good night's sleep?",
    "How can I learn new words in a foreign language faster?",
    "What is photosynthesis?",
    "Why do cats purr?",
    "How does a bicycle stay upright?",
    "What is the water cycle?",
    "Why should I drink water every day?",
    "How do I start running as a beginner?",
]
HELD_OUT = [
    "What is gravity?",
    "How do I make a cup of tea?",
    "Why do leaves change colour in autumn?",
    "What is a volcano?",
    "How do airplanes fly?",
    "Why is exercise good for you?",
    "What is the moon made of?",
    "How do I save money on groceries?",
    "Why do birds migrate?",
    "What is electricity?",
    "How does the heart pump blood?",
    "What is a good way to study for an exam?",
    "Why is recycling important?",
    "How do rainbows form?",
    "What is the internet?",
    "How do fish breathe underwater?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HELIXLOOM_HOME": str(home)}
    log = (home / "server.log").open("wb")
    # --engine hf: the same weights and numerics as this process's engine, so check_served's greedy
    # answers can agree (the default llama.cpp engine serves a 4-bit model: its greedy answers differ
    # from the loop's even when it serves the right adapter, measured 0/1 twice)
    cmd = [
        sys.executable,
        "-m",
        "helixloom",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--engine",
        "hf",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"helixloom serve exited: see {home / 'server.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.terminate()
    raise RuntimeError("helixloom serve did not start in 10 minutes")


def distinct_n(texts: list[str], n: int = 2) -> float:
    grams = [tuple(t.split()[i : i + n]) for t in texts for i in range(max(0, len(t.split()) - n + 1))]
    return len(set(grams)) / len(grams) if grams else 0.0


def kl_to_base(engine: Any, run: Any, rows: list[dict[str, Any]], adapter: str | None) -> float:
    """Mean over the policy's own answers of log pi(y|x) - log pi_base(y|x) (nats per answer)."""
    if adapter is None:
        return 0.0
    from helixloom.prompting import render

    texts, starts = [], []
    for r in rows:
        prompt = render(engine, run._messages(r["prompt"])).prompt
        texts.append(prompt + r["answer"])
        starts.append(len(prompt))

    def answer_logprob(scored: Any, start: int) -> float:
        pos, total = 0, 0.0
        for tok, lp in zip(scored.tokens, scored.logprobs, strict=True):
            if pos >= start and lp is not None:
                total += lp
            pos += len(tok)
        return total

    pol = engine.prompt_logprobs(texts, adapter=adapter)
    base = engine.prompt_logprobs(texts)
    diffs = [answer_logprob(p, s) - answer_logprob(b, s) for p, b, s in zip(pol, base, starts, strict=True)]
    return sum(diffs) / len(diffs)


def held_out_pairs(taste: Any, rows: list[dict[str, Any]]) -> list[Any]:
    """Pairs of held-out answers to the same prompt that the taste tells apart, the preferred first."""
    from helixloom.training.active import RatedPair

    by_prompt: dict[str, list[str]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], []).append(r["answer"])
    out = []
    for prompt, answers in by_prompt.items():
        uniq = sorted(set(a for a in answers if a.strip()))
        for i in range(len(uniq)):
            for j in range(i + 1, len(uniq)):
                a, b = uniq[i], uniq[j]
                sa, sb = taste.score(prompt, a), taste.score(prompt, b)
                if sa != sb:
                    out.append(RatedPair(prompt, a, b) if sa > sb else RatedPair(prompt, b, a))
    return out


def training_picks(run: Any, taste: Any, rnd: int) -> dict[str, Any]:
    """What round ``rnd`` trained the policy on, by the hidden taste: of its training prompts with at
    least one liked answer among the k, the share whose chosen answer is liked. Where that is near 100%
    for every selection rule, the ratings were not what held the policy back that round."""
    folder = run.root / f"round-{rnd}"
    candidates = json.loads((folder / "candidates.json").read_text())
    rows = json.loads((folder / "train_rows.json").read_text())
    with_liked = liked = 0
    for c in candidates:
        if not any(taste.likes(c["prompt"], a) for a in c["answers"]):
            continue
        with_liked += 1
        chosen = [r["chosen"] for r in rows if c["prompt"] in r["prompt"] and r["chosen"] in c["answers"]]
        liked += bool(chosen) and taste.likes(c["prompt"], chosen[0])
    return {
        "train_prompts_with_a_liked_answer": with_liked,
        "train_picks_liked_of_those": round(100.0 * liked / with_liked, 1) if with_liked else None,
    }


def search_pool(args: argparse.Namespace, engine: Any, run: Any) -> list[dict[str, Any]]:
    """``--k`` base answers to each held-out prompt, drawn as AutoLoom draws a run's (forms included
    when it explores; ``ImproveRun.best_answers``; the loops' base search draws the same when --search
    equals --k): what the learning curve's reward picks from. The
    held-out evaluation's own answers are plain, and hold a list or an answer-then-question for few
    prompts, so a pick among them says little about those tastes."""
    from helixloom.rewards import FunctionReward

    unscored = FunctionReward(lambda prompts, _: [0.0] * len(prompts))
    picks = run.best_answers(
        engine, run.eval_prompts, n=args.k, source="base", seed=args.seed, reward=unscored
    )
    return [{"prompt": p.prompt, "answer": d["answer"]} for p in picks for d in p.candidates]


def run_arm(
    args: argparse.Namespace,
    engine: Any,
    store: Any,
    url: str,
    taste: Any,
    arm: str,
    agreement_pairs: list[Any],
) -> dict[str, Any]:
    from helixloom import adapters as registry
    from helixloom.evals.simulated_users import SimulatedUser, on_topic
    from helixloom.training.active import agreement
    from helixloom.training.configs import ImproveDPOConfig
    from helixloom.training.improve import ImproveConfig, ImproveRun, deploy_http

    name = f"{taste.name.replace('_', '-')}-{arm.replace('@', '-')}"
    rule, per_round = arm_spec(arm)
    config = ImproveConfig(
        rounds=args.rounds,
        ratings=per_round or args.ratings,
        batch=args.batch,
        selection=rule,
        train_pairs=args.train_pairs,
        k=args.k,
        explore=args.explore,
        explore_by=args.explore_by,
        method=args.method,
        raft_epochs=args.raft_epochs,
        thumbs=args.learn_thumbs,
        max_tokens=args.max_tokens,
        eval_samples=args.eval_samples,
        gen_batch=args.gen_batch,
        seed=args.seed,
    )
    train = ImproveDPOConfig(
        learning_rate=args.learning_rate,
        epochs=args.epochs,
        batch_size=4,
        beta=args.beta,
        save_steps=10_000,
        sft_weight=args.sft_weight,
    )
    prompts, held = TRAIN_PROMPTS[: args.prompts], HELD_OUT[: args.held_out]
    run = ImproveRun.create(name, prompts, held, base="default", config=config, train=train, overwrite=True)
    user = SimulatedUser(taste, url, name, seed=args.seed, thumbs=args.thumbs)
    http_deploy = deploy_http(url)
    served_checks: list[dict[str, Any]] = []

    def deploy(adapter_name: str, folder: Path) -> dict[str, Any]:
        try:
            out = http_deploy(adapter_name, folder)
            served = adapter_name
        except Exception as exc:  # the server lacks the endpoint: register a versioned name it loads on use
            served = f"{adapter_name}-r{len(served_checks) + 1}"
            registry.register(store, served, folder, replace=True)
            out = {"how": "registered", "served_as": served, "hot_load_error": str(exc)[:200]}
        served_checks.append(check_served(engine, run, url, served, folder, held[:1]))
        return out

    rows = run.execute(
        engine,
        store,
        rater=lambda items: user.rate(len(items)),
        deploy=deploy,
        say=lambda line: print(f"[{name}] {line}", file=sys.stderr, flush=True),
    )
    user.close()
    table = []
    base_rows = run.eval_answers(None)
    history: list[tuple[int, Any]] = [(0, None)]
    for r in rows:
        history.append((r.round, Path(r.adapter) if r.adapter else None))
    for rnd, adapter in history:
        answers = run.eval_answers(adapter) or base_rows
        texts = [a["answer"] for a in answers]
        approval = 100.0 * sum(taste.likes(a["prompt"], a["answer"]) for a in answers) / len(answers)
        topical = sum(
            taste.likes(a["prompt"], a["answer"]) and on_topic(a["prompt"], a["answer"]) for a in answers
        )
        served_name = run._adapter_name(engine, adapter)
        entry: dict[str, Any] = {
            "round": rnd,
            "approval": round(approval, 1),
            # liked and on the topic (a word of substance shared with the prompt): no taste checks it
            "approval_on_topic": round(100.0 * topical / len(answers), 1),
            "mean_tokens": round(sum(a["tokens"] for a in answers) / len(answers), 1),
            "distinct_2": round(distinct_n(texts), 3),
            "kl_to_base": round(kl_to_base(engine, run, answers, served_name), 3),
        }
        if rnd > 0:
            result = rows[rnd - 1]
            agree = agreement(run.learned_reward(engine, rnd), agreement_pairs)
            entry.update(
                ratings=result.ratings,
                preferences=result.preferences,
                thumb_pairs=result.thumb_pairs,
                both_bad_left_out=result.both_bad,
                reward_agreement_held_out=round(agree, 3) if agree is not None else None,
                reward_agreement_train=round(result.train_agreement or 0, 3),
                dpo_pairs=result.pairs,
                **training_picks(run, taste, rnd),
                chosen_forms=result.chosen_forms,
                candidate_win_rate=round(result.win_rate, 1),
                promoted=result.promoted,
                reason=result.reason,
                deployed=result.deployed,
                seconds=result.seconds,
            )
        table.append(entry)
    search = steered_by_reward(args, engine, run, taste, history[-1][1]) if args.search > 1 else None
    return {
        "run": name,
        "rounds": table,
        "search": search,
        "approval_gain_points": round(table[-1]["approval"] - table[0]["approval"], 1),
        "ratings_used": sum(r.ratings for r in rows),
        "promotions": sum(r.promoted for r in rows),
        "rollbacks": sum(not r.promoted for r in rows),
        "served_checks": served_checks,
    }


def steered_by_reward(
    args: argparse.Namespace, engine: Any, run: Any, taste: Any, adapter: Path | None
) -> Any:
    """AutoLoom at inference (seed 004: "use your reward head to search over many possible
    completions"): ``--search`` answers per held-out prompt, from the base and from the run's final
    policy, and the one the run's last learned reward (``improve:NAME``, as Weave loads it) scores
    highest (``ImproveRun.best_answers``: drawn as the run draws its own, forms included when it
    explores). Beside it, the same answers' mean approval (a pick at random: the baseline, same
    samples) and the share of prompts with any liked answer among them (what a perfect pick could
    reach)."""
    t = time.perf_counter()
    n, held = args.search, run.eval_prompts
    out: dict[str, Any] = {
        "answers_per_prompt": n,
        "of_them_after_a_form": run.config.explore * n // run.config.k,
        "temperature": run.config.eval_temperature,
    }
    for label, source in (("base", "base"), ("policy", "current")):
        if source == "current" and adapter is None:
            out[label] = out["base"]  # nothing promoted: the policy is the base model
            continue
        picks = run.best_answers(engine, held, n=n, source=source, seed=args.seed)
        drawn = [(p.prompt, d["answer"]) for p in picks for d in p.candidates]
        by_chance = 100.0 * sum(taste.likes(q, a) for q, a in drawn) / len(drawn)
        by_reward = 100.0 * sum(taste.likes(p.prompt, p.answer) for p in picks) / len(picks)
        out[label] = {
            "approval_random_pick": round(by_chance, 1),
            "approval_best_by_reward": round(by_reward, 1),
            "gain_over_random_pick_points": round(by_reward - by_chance, 1),
            "prompts_with_a_liked_answer": round(
                100.0
                * sum(any(taste.likes(p.prompt, d["answer"]) for d in p.candidates) for p in picks)
                / len(picks),
                1,
            ),
        }
    out["seconds"] = round(time.perf_counter() - t, 1)
    return out


def check_served(
    engine: Any, run: Any, url: str, served: str, folder: Path, prompts: list[str]
) -> dict[str, Any]:
    """Greedy answers from the server under ``served`` against this process's own under the same folder."""
    import openai

    from helixloom.engine import GenerationRequest, sampling
    from helixloom.prompting import render

    local_name = run._adapter_name(engine, folder)
    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    same = 0
    try:
        for p in prompts:
            r = client.chat.completions.create(
                model=served, messages=[{"role": "user", "content": p}], max_tokens=12, temperature=0
            )
            chat = render(engine, run._messages(p))
            params = sampling(max_tokens=12, temperature=0, stop=chat.stop, token_healing=chat.token_healing)
            mine = engine.generate(
                [GenerationRequest(prompt=chat.prompt, sampling=params, adapter=local_name)]
            )
            same += (r.choices[0].message.content or "") == mine[0].text
    except openai.OpenAIError as exc:
        return {"served_as": served, "error": str(exc)[:200]}
    return {"served_as": served, "greedy_answers_equal": f"{same}/{len(prompts)}"}


def learning_curve(
    args: argparse.Namespace,
    engine: Any,
    taste: Any,
    pool_rows: list[dict[str, Any]],
    agreement_pairs: list[Any],
    held_out_rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """Reward agreement on held-out pairs after each batch of ratings, per selection rule, over seeds;
    and the approval of the answer the reward so far picks among each held-out prompt's base answers
    (``held_out_rows``, ``search_pool``: what the ratings buy when the reward steers a search, with
    no training). With --thumbs the user marks both answers of each pair, and the rules are asked as
    the loop asks them (given the marks)."""
    from helixloom.evals.simulated_users import choose
    from helixloom.training.active import (
        CandidatePair,
        Embedder,
        RatedPair,
        agreement,
        fit_reward,
        select,
        with_thumbs,
    )

    embed = Embedder(engine)
    pool = []
    for j, c in enumerate(pool_rows):
        ans = c["answers"]
        for x in range(len(ans)):
            for y in range(x + 1, len(ans)):
                if ans[x].strip() and ans[y].strip() and ans[x] != ans[y]:
                    pool.append(CandidatePair(f"{j}-{x}-{y}", c["prompt"], ans[x], ans[y]))
    reference = [(c["prompt"], a) for c in pool_rows for a in c["answers"]]
    budget = min(args.curve_budget, len(pool))
    groups: dict[str, list[str]] = {}
    for r in held_out_rows:
        groups.setdefault(r["prompt"], []).append(r["answer"])
    # before any rating the pick is as good as a random one: the answers' mean approval
    random_pick = (
        100.0 * sum(taste.likes(r["prompt"], r["answer"]) for r in held_out_rows) / len(held_out_rows)
    )

    def pick_approval(reward: Any) -> float:
        liked = 0
        for prompt, answers in groups.items():
            scores = reward.score_group(prompt, answers)
            liked += taste.likes(prompt, answers[max(range(len(answers)), key=lambda i: scores[i])])
        return 100.0 * liked / len(groups)

    # bald: the bootstrap members' disagreement, active's rule before Dec 2026, for comparison; top:
    # the loop's default (a prompt's favourite against the challenger the reward is least sure of)
    curves: dict[str, list[list[float]]] = {"active": [], "bald": [], "top": [], "random": []}
    picks: dict[str, list[list[float]]] = {arm: [] for arm in curves}
    for seed in range(args.curve_seeds):
        for arm in curves:
            rng = random.Random(seed)
            rated: list[RatedPair] = []
            marks: dict[str, dict[str, bool]] = {}  # with --thumbs, as the loop's user gives them
            asked: set[str] = set()
            curve, picked = [], []
            ensemble = None
            learns_thumbs = args.thumbs and args.learn_thumbs != "ignore"
            while len(asked) < budget:
                # a full batch, so every point is --batch ratings on (top may offer fewer pairs at a
                # time than --batch when prompts are few: asked again, as the loop asks again)
                want, batch = min(args.batch, budget - len(asked)), []
                while len(batch) < want:
                    got = select(
                        [c for c in pool if c.key not in asked and c not in batch],
                        want - len(batch),
                        strategy=arm,
                        rng=rng,
                        ensemble=ensemble,
                        embed=embed,
                        marks=marks if learns_thumbs else None,  # as the loop asks
                    )
                    if not got:
                        break
                    batch += got
                for c in batch:
                    asked.add(c.key)
                    pick = choose(taste, c.prompt, c.a, c.b)
                    if pick != "skip":
                        chosen, rejected = (c.a, c.b) if pick == "a" else (c.b, c.a)
                        rated.append(RatedPair(c.prompt, chosen, rejected))
                    if args.thumbs:
                        for text in (c.a, c.b):
                            marks.setdefault(c.prompt, {})[text] = taste.likes(c.prompt, text)
                learned = rated
                if learns_thumbs:
                    learned = with_thumbs(rated, marks, ties=args.learn_thumbs == "pairs+ties")[0]
                if learned:
                    reward = fit_reward(learned, embed, seed=seed, reference=reference)
                    ensemble = reward.ensemble
                    curve.append(agreement(reward, agreement_pairs) or 0.5)
                    picked.append(pick_approval(reward))
                else:
                    curve.append(0.5)
                    picked.append(random_pick)
            curves[arm].append(curve)
            picks[arm].append(picked)
    steps = [min(args.batch * (i + 1), budget) for i in range(len(curves["random"][0]))]
    mean_curve = {
        arm: [sum(c[i] for c in cs) / len(cs) for i in range(len(steps))] for arm, cs in curves.items()
    }
    mean_pick = {
        arm: [sum(c[i] for c in cs) / len(cs) for i in range(len(steps))] for arm, cs in picks.items()
    }

    def needed(curve: list[float], target: float) -> int | None:
        return next((steps[i] for i, v in enumerate(curve) if v >= target - 1e-9), None)

    def ratio(got: int | None, base: int | None) -> float | None:
        return round(got / base, 2) if got and base else None

    target = mean_curve["random"][-1]
    need = {arm: needed(mean_curve[arm], target) for arm in curves}
    pick_target = mean_pick["random"][-1]
    # a target no better than picking at random (no liked answer to pick, or nothing learned) says
    # nothing about selection: no ratio then
    learned = pick_target > random_pick
    pick_need = {arm: needed(mean_pick[arm], pick_target) if learned else None for arm in curves}

    def over_random(arm: str) -> float | None:
        return ratio(need[arm], need["random"])

    return {
        "pool_pairs": len(pool),
        "held_out_pairs": len(agreement_pairs),
        "ratings": steps,
        **{f"agreement_{arm}": [round(v, 3) for v in mean_curve[arm]] for arm in curves},
        "target_agreement (random at full budget)": round(target, 3),
        "ratings_to_target_active": need["active"],
        "ratings_to_target_random": need["random"],
        "active_over_random_ratio": over_random("active"),
        "ratings_to_target_bald": need["bald"],
        "bald_over_random_ratio": over_random("bald"),
        "ratings_to_target_top": need["top"],
        "top_over_random_ratio": over_random("top"),
        "pick_approval_base_random_pick": round(random_pick, 1),
        **{f"pick_approval_{arm}": [round(v, 1) for v in mean_pick[arm]] for arm in curves},
        "pick_target (random at full budget)": round(pick_target, 1),
        **{f"pick_ratings_to_target_{arm}": pick_need[arm] for arm in curves},
        "pick_active_over_random_ratio": ratio(pick_need["active"], pick_need["random"]),
        "pick_bald_over_random_ratio": ratio(pick_need["bald"], pick_need["random"]),
        "pick_top_over_random_ratio": ratio(pick_need["top"], pick_need["random"]),
        "pick_answers_per_prompt": len(held_out_rows) // max(1, len(groups)),
        "seeds": args.curve_seeds,
    }


def arm_spec(arm: str) -> tuple[str, int | None]:
    """``RULE`` or ``RULE@N`` (N ratings a round instead of --ratings) -> the rule and N."""
    found = re.fullmatch(r"([a-z]+)(?:@([0-9]+))?", arm)
    if found is None:
        raise ValueError(arm)
    return found[1], int(found[2]) if found[2] else None


def approval_ratings(entry: dict[str, Any], arms: list[str]) -> dict[str, Any] | None:
    """From the full loops: the approval random (at --ratings a round) reaches with its whole budget,
    the ratings each arm had used when its held-out approval first reached it, and their ratio to
    random's (the issue's "same approval with at most 60% of the ratings"). A round's ratings are the
    granularity, and approval comes with training rounds as much as with ratings, so ``RULE@N`` arms
    (N ratings a round, the same rounds) ask it directly: does the rule reach random's approval with
    N/--ratings of its ratings, and does random with as few (``random@N``, the control)?"""
    if "random" not in entry:
        return None
    target = entry["random"]["rounds"][-1]["approval"]

    def needed(arm: str) -> int | None:
        used = 0
        for r in entry[arm]["rounds"]:
            used += r.get("ratings", 0)
            if r["round"] > 0 and r["approval"] >= target:
                return used
        return None

    random_ = needed("random")
    out: dict[str, Any] = {
        "target_approval (random at full budget)": target,
        "ratings_to_target_random": random_,
    }
    for arm in arms:
        if arm != "random" and arm in entry:
            got = needed(arm)
            out[f"ratings_to_target_{arm}"] = got
            out[f"{arm}_over_random_ratio"] = round(got / random_, 2) if got and random_ else None
    return out


def main() -> int:
    from helixloom.training.configs import METHODS
    from helixloom.training.improve import EXPLORE_ALL, EXPLORE_BY, THUMBS, ImproveConfig

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tastes", default="short_question,bullets")
    loop = ImproveConfig()  # the loop's own defaults
    parser.add_argument(
        "--arms",
        default=f"{loop.selection},random",
        help="selection rules, one full loop each (default: the loop's, and random to compare); "
        "RULE@N asks N ratings a round instead of --ratings (e.g. top@30,random,random@30: does top "
        "reach random's approval with 60%% of its ratings, and random with as few?)",
    )
    parser.add_argument("--loops", help="tastes that get full improve loops (default: every --tastes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ratings", type=int, default=50, help="ratings per round")
    parser.add_argument("--batch", type=int, default=10, help="ratings asked at a time")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--held-out", type=int, default=12)
    parser.add_argument(
        "--train-pairs", default="reward", help="the policy's DPO pairs: reward or reward+rated"
    )
    parser.add_argument("--k", type=int, default=8, help="answers per training prompt (the loop's default)")
    parser.add_argument(
        "--explore",
        type=int,
        default=None,
        help="of the k answers, how many are asked for an answer form (the loop's --explore; default: its)",
    )
    parser.add_argument(
        "--explore-by",
        choices=list(EXPLORE_BY),
        default=loop.explore_by,
        help="forms of the explored answers: in turn, or by the reward's picks the round before",
    )
    parser.add_argument(
        "--method",
        choices=list(METHODS),
        default=loop.method,
        help="dpo (best vs worst) or raft (fine-tune on the reward's best answer per prompt)",
    )
    parser.add_argument("--raft-epochs", type=float, default=loop.raft_epochs)
    parser.add_argument(
        "--thumbs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the simulated user also marks both answers of each pair up or down by its taste, as the "
        "rating page asks a person to (still one rating a pair; --no-thumbs: choices alone)",
    )
    parser.add_argument(
        "--learn-thumbs",
        choices=list(THUMBS),
        default=loop.thumbs,
        help="what the loop's reward learns from thumbs (the loop's --thumbs; default: its)",
    )
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--eval-samples", type=int, default=2)
    parser.add_argument("--gen-batch", type=int, default=16)
    from helixloom.training.configs import ImproveDPOConfig  # the loop's own DPO defaults

    loop_dpo = ImproveDPOConfig()
    parser.add_argument("--learning-rate", type=float, default=loop_dpo.learning_rate)
    parser.add_argument("--epochs", type=float, default=loop_dpo.epochs)
    parser.add_argument("--beta", type=float, default=loop_dpo.beta)
    parser.add_argument(
        "--sft-weight",
        type=float,
        default=loop_dpo.sft_weight,
        help="NLL on the chosen answer added to DPO (RPO; 0: off; default: the loop's)",
    )
    parser.add_argument(
        "--search",
        type=int,
        default=8,
        help="answers per held-out prompt the final reward picks from, after each loop (0: skip)",
    )
    parser.add_argument(
        "--curve-budget",
        type=int,
        help="ratings each learning curve may use (default: the loops' budget, --rounds x --ratings)",
    )
    parser.add_argument("--curve-seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-loops", action="store_true", help="only the reward learning curves")
    parser.add_argument("--work", help="HELIXLOOM_HOME to use (default: a temporary folder)")
    args = parser.parse_args()
    if args.explore is None:  # the loop's default: all k
        args.explore = EXPLORE_ALL
    if args.curve_budget is None:
        args.curve_budget = args.rounds * args.ratings
    from helixloom.training.active import STRATEGIES

    arms_run = [a for a in args.arms.split(",") if a]
    for arm in arms_run:
        try:
            rule, per_round = arm_spec(arm)
        except ValueError:
            parser.error(f"--arms: {arm!r} is not RULE or RULE@N")
        if rule not in STRATEGIES or (per_round is not None and per_round < 1):
            parser.error(f"--arms: {arm!r}: rules are {', '.join(STRATEGIES)}, N at least 1")
    if args.prompts > len(TRAIN_PROMPTS) or args.held_out > len(HELD_OUT):
        parser.error(f"at most {len(TRAIN_PROMPTS)} prompts and {len(HELD_OUT)} held out")

    home = bench_home(Path(args.work) if args.work else None, "helixloom-feedback-")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from helixloom.engine import load_engine
    from helixloom.evals.simulated_users import TASTES
    from helixloom.paths import ensure_home
    from helixloom.store import Store

    ensure_home()
    # a kill (SIGTERM) unwinds like Ctrl-C, so the finally below stops the server subprocess (it
    # was left running, serving on its port, when a run was killed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.perf_counter()
    port = free_port()
    server = start_server(home, port)
    url = f"http://127.0.0.1:{port}"
    startup = time.perf_counter() - t0
    report: dict[str, Any] = {
        "benchmark": "feedback_loop",
        "model": "default (Gemma 3 270M base)",
        "settings": {k: v for k, v in vars(args).items() if k != "work"},
        "server_startup_s": round(startup, 1),
        "tastes": {},
    }
    try:
        engine = load_engine("default")
        pick_rows: list[dict[str, Any]] = []
        with Store.open_default() as store:
            for taste_name in args.tastes.split(","):
                taste = TASTES[taste_name]
                t = time.perf_counter()
                entry: dict[str, Any] = {"description": taste.description}
                arms = arms_run
                # The held-out pairs the reward's agreement is measured on: base answers to held-out prompts.
                from helixloom.training.improve import ImproveConfig, ImproveRun

                probe = ImproveRun.create(
                    f"{taste_name.replace('_', '-')}-pool",
                    TRAIN_PROMPTS[: args.prompts],
                    HELD_OUT[: args.held_out],
                    base="default",
                    config=ImproveConfig(
                        rounds=1,
                        k=args.k,
                        explore=args.explore,
                        max_tokens=args.max_tokens,
                        eval_samples=max(args.eval_samples, 4),
                        gen_batch=args.gen_batch,
                        seed=args.seed + 1,
                    ),
                    overwrite=True,
                )
                base_eval = probe._eval_policy(engine, None, None)
                pool = probe._sample(1, engine, None, None)
                pairs = held_out_pairs(taste, base_eval)
                # base answers drawn alike for every taste: drawn once
                pick_rows = pick_rows or search_pool(args, engine, probe)
                entry["learning_curve"] = learning_curve(args, engine, taste, pool, pairs, pick_rows)
                entry["learning_curve"]["seconds"] = round(time.perf_counter() - t, 1)
                print(
                    json.dumps({taste_name: {"learning_curve": entry["learning_curve"]}}),
                    file=sys.stderr,
                    flush=True,
                )
                looped = (args.loops or args.tastes).split(",")
                if not args.skip_loops and taste_name in looped:
                    for arm in arms:
                        t = time.perf_counter()
                        entry[arm] = run_arm(args, engine, store, url, taste, arm, pairs)
                        entry[arm]["seconds"] = round(time.perf_counter() - t, 1)
                        print(json.dumps({taste_name: {arm: entry[arm]}}), file=sys.stderr, flush=True)
                    entry["approval_ratings"] = approval_ratings(entry, arms)
                report["tastes"][taste_name] = entry
    finally:
        server.terminate()
        server.wait(timeout=60)
    report["targets"] = {
        "approval_gain_points >= 30 within 3 rounds of <= 50 ratings": {
            t: {a: e[a]["approval_gain_points"] for a in arms_run if a in e}
            for t, e in report["tastes"].items()
        },
        "approval with the final reward's pick of --search answers (policy, base; random pick: base)": {
            t: {
                a: [e[a]["search"][k]["approval_best_by_reward"] for k in ("policy", "base")]
                + [e[a]["search"]["base"]["approval_random_pick"]]
                for a in arms_run
                if a in e and e[a].get("search")
            }
            for t, e in report["tastes"].items()
        },
        "active ratings <= 0.6 x random's (reward agreement curve)": {
            t: e["learning_curve"]["active_over_random_ratio"] for t, e in report["tastes"].items()
        },
        "active ratings <= 0.6 x random's (approval of the reward's pick of held-out base answers)": {
            t: e["learning_curve"]["pick_active_over_random_ratio"] for t, e in report["tastes"].items()
        },
        "top ratings <= 0.6 x random's (approval of the reward's pick of held-out base answers)": {
            t: e["learning_curve"]["pick_top_over_random_ratio"] for t, e in report["tastes"].items()
        },
        "ratings <= 0.6 x random's (held-out approval, full loops)": {
            t: {k: v for k, v in (e.get("approval_ratings") or {}).items() if k.endswith("_ratio")}
            for t, e in report["tastes"].items()
        },
    }
    report["total_s"] = round(time.perf_counter() - t0, 1)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
