"""``helixloom weave``: Weave tree search, continuations steered by a yes/no evaluator or any reward."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from helixloom.errors import HelixloomError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``weave`` command."""
    from helixloom.cli.common import add_model_flags
    from helixloom.weave.search import WeaveConfig as C  # its defaults are the flags'

    wv = sub.add_parser(
        "weave",
        help="Weave tree search: continuations steered by a yes/no evaluator (MiniHF)",
        description="Search a tree of continuations of PROMPT: nodes of --tokens-per-node tokens, expanded "
        "in batches, scored by asking the evaluator model each --question (yes/no log-odds), committed one "
        "level per round. Every node is stored as a tree; the best branch is printed.",
    )
    wv.add_argument("prompt", nargs="?", help="the text to continue; '-' reads it from standard input")
    wv.add_argument(
        "--from-node", metavar="NODE_ID", help="continue a stored tree: search under this node (no PROMPT)"
    )
    wv.add_argument(
        "--question",
        action="append",
        default=[],
        metavar="TEXT",
        help="a yes/no question about the continuation (repeatable; answer yes is good). "
        "Prefix with 'no:' when no is the good answer, and 'W*' for a weight, e.g. '2*Is it sad?'",
    )
    wv.add_argument(
        "--reward",
        metavar="SPEC",
        help="steer by a reward instead of --question: head:NAME or rm:NAME (trained on your ratings), "
        "improve:NAME (what an improve run learned from its users' ratings), constitution[:FILE], "
        "evaluator[:QUESTION], rubric:FILE, judge[:SPEC], py:MODULE:FUNCTION",
    )
    add_model_flags(wv)
    wv.add_argument("--evaluator-model", metavar="SPEC", help="evaluator model (default: --model)")
    wv.add_argument("--evaluator-adapter", metavar="NAME_OR_PATH", help="LoRA adapter for the evaluator")
    wv.add_argument(
        "--template", metavar="FILE", help="evaluator prompt with {prompt}, {response}, {question}"
    )
    wv.add_argument(
        "--budget", type=int, default=C.budget, help="nodes to generate in all (default %(default)s)"
    )
    wv.add_argument(
        "--round-budget", type=int, default=C.round_budget, help="nodes per round (default %(default)s)"
    )
    wv.add_argument(
        "--n-expand", type=int, default=C.n_expand, help="children per expansion (default %(default)s)"
    )
    wv.add_argument(
        "--tokens-per-node", type=int, default=C.tokens_per_node, help="tokens per node (default %(default)s)"
    )
    wv.add_argument(
        "--beam-width", type=int, default=C.beam_width, help="branches kept per round (default %(default)s)"
    )
    wv.add_argument(
        "--max-lookahead",
        type=int,
        default=C.max_lookahead,
        help="levels below the committed one (default %(default)s)",
    )
    wv.add_argument(
        "--temperature",
        type=float,
        default=C.temperature,
        help="of the evaluator scores (default %(default)s)",
    )
    wv.add_argument(
        "--sampling-temperature",
        type=float,
        default=C.sampling_temperature,
        help="of the generator (default %(default)s)",
    )
    wv.add_argument(
        "--seed", type=int, default=C.seed, help="the same seed grows the same tree (default %(default)s)"
    )
    wv.add_argument(
        "--json", action="store_true", help="print the best branches, scores and the tree id as JSON"
    )
    wv.set_defaults(run=cmd_weave)


def parse_question(text: str) -> Any:
    from helixloom.weave.evaluator import parse_question as parse

    return parse(text)


def cmd_weave(args: argparse.Namespace) -> int:
    from pathlib import Path

    from helixloom import adapters as adapter_registry
    from helixloom import models, weave
    from helixloom.cli.common import open_store
    from helixloom.engine.pool import EnginePool
    from helixloom.engine.select import load_for_inference

    if (args.prompt is None) == (args.from_node is None):
        raise HelixloomError("give either PROMPT or --from-node NODE_ID", "see helixloom weave --help")
    prompt = (sys.stdin.read() if args.prompt == "-" else args.prompt) if args.prompt is not None else ""
    if args.prompt is not None and not prompt.strip():
        raise HelixloomError("the prompt is empty", param="prompt")
    if args.reward and args.question:
        raise HelixloomError("give --question or --reward, not both")
    if not args.question and not args.reward:
        raise HelixloomError(
            "Weave needs at least one --question for the evaluator, or a --reward",
            "e.g. --question 'Is it sad?' or --reward head:mine",
        )
    questions = [parse_question(q) for q in args.question]
    config = weave.WeaveConfig(
        budget=args.budget,
        round_budget=args.round_budget,
        n_expand=args.n_expand,
        tokens_per_node=args.tokens_per_node,
        beam_width=args.beam_width,
        max_lookahead=args.max_lookahead,
        temperature=args.temperature,
        sampling_temperature=args.sampling_temperature,
        seed=args.seed,
    )
    template = None
    if args.template:
        if not Path(args.template).is_file():
            raise HelixloomError(f"template file {args.template} does not exist")
        template = Path(args.template).read_text()
    evaluator_spec = args.evaluator_model or args.model
    models.resolve(args.model)
    models.resolve(evaluator_spec)
    with open_store() as store:
        parent = None
        if args.from_node is not None:
            from helixloom import loom

            parent = store.get_node(args.from_node)
            if parent is None:
                raise HelixloomError(
                    f"no node {args.from_node}", "node ids are in weave --json output and the loom"
                )
            prompt = loom.branch_text(store, parent.id)
        adapter = adapter_registry.resolve(store, args.adapter, model=args.model) if args.adapter else None
        ev_adapter = (
            adapter_registry.resolve(store, args.evaluator_adapter, model=evaluator_spec)
            if args.evaluator_adapter
            else None
        )
        # A reward head and an improve run's reward read hidden states, which only transformers gives.
        needs = ("supports_embeddings",) if (args.reward or "").startswith(("head:", "improve:")) else ()
        pool = EnginePool(lambda spec: load_for_inference(spec, args.engine, needs=needs))
        engine = pool.get(args.model)
        if adapter:
            engine.load_adapter(adapter[0], str(adapter[1]))
        ev_engine = pool.get(evaluator_spec)
        if ev_adapter:
            ev_engine.load_adapter(ev_adapter[0], str(ev_adapter[1]))
        scorer: weave.Scorer
        if args.reward:
            from helixloom.training.reward_spec import load_reward

            reward = load_reward(
                args.reward,
                engine=ev_engine,
                store=store,
                evaluator_adapter=ev_adapter[0] if ev_adapter else None,
                evaluator_template=template,
            )
            scorer = weave.RewardScorer(reward)
        else:
            scorer = weave.Evaluator(
                ev_engine, questions, template=template, adapter=ev_adapter[0] if ev_adapter else None
            )
        done = [0]

        def progress(node: Any) -> None:
            if node.parent is not None:
                done[0] += 1
                print(f"\rweave: {done[0]}/{config.budget} nodes", end="", file=sys.stderr, flush=True)

        result, tree_id = weave.run(
            prompt,
            engine,
            scorer,
            config,
            adapter=adapter[0] if adapter else None,
            store=store,
            parent=parent,
            on_node=progress,
        )
        print(file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "text": result.text,
                    "tree_id": tree_id,
                    "generated": result.generated,
                    "best": [
                        {
                            "text": n.branch_text(include_root=False),
                            "score": n.score,
                            "depth": n.depth,
                            "node_id": n.node_id,
                        }
                        for n in result.best[:5]
                    ],
                }
            )
        )
    else:
        print(prompt + result.text)
        print(
            f"\n(tree {tree_id}: {result.generated} nodes; best score {result.best[0].score:.3f})",
            file=sys.stderr,
        )
    return 0
