"""``helixloom learn``: documents become question/answer pairs written by a teacher, then a LoRA that
cites them (``helixloom.training.learn``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from helixloom.errors import HelixloomError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``learn`` command."""
    from helixloom.cli.common import add_sft_flags
    from helixloom.training.learn_config import LearnConfig

    learn = sub.add_parser(
        "learn",
        help="learn documents: grounded question/answer pairs, then a LoRA that cites them",
        description="Turn documents (.txt .md .html .pdf .json conversations, folders, .zip) into "
        "question/answer pairs: built by code from every sentence (wh-questions on its names, numbers and "
        "dates, entity descriptions, vague title questions, every fact asked again with the document's "
        "subject named and in natural question forms), rephrased by the teacher, optionally asked again with "
        "a word swapped for a synonym the teacher finds likely (--synonyms), and (with --questions, "
        "the default for teachers other than the embedded model) written by the teacher through a suite of "
        "prompts, "
        "each kept only when its chunk supports it. Fine-tune a LoRA "
        "adapter NAME on them mixed with the documents' own text and a little general text, stopping "
        "when held-out accuracy stops improving, and register it with its report (see `adapters show`) "
        "and a system prompt that keeps answers to the documents. Answers cite [DOC_ID:...], mapped back "
        "to the files. --review stops after the dataset so you can edit it; --resume continues after a "
        "review or an interruption.",
    )
    learn.add_argument("paths", nargs="*", metavar="PATH", help="files, folders or .zip archives")
    learn.add_argument("--name", required=True, help="name of the dataset and of the adapter")
    learn.add_argument(
        "--base", default="default", metavar="SPEC", help="the model to fine-tune (default: default)"
    )
    learn.add_argument(
        "--teacher",
        metavar="SPEC",
        help="model that writes the pairs (default: --base)",
    )
    learn.add_argument("--teacher-url", metavar="URL", help="an OpenAI-compatible server as the teacher")
    learn.add_argument("--teacher-model", metavar="MODEL", help="the model name on --teacher-url")
    learn.add_argument("--review", action="store_true", help="stop after writing the dataset, to edit it")
    learn.add_argument(
        "--resume", action="store_true", help="continue NAME after --review or an interruption"
    )
    learn.add_argument(
        "--questions",
        type=int,
        default=None,
        help="teacher questions per suite prompt and chunk (0 skips the suite; default: 0 for the "
        "embedded model, whose suite pairs are ungrounded, 1 for any other teacher)",
    )
    learn.add_argument(
        "--no-rephrase",
        dest="rephrase",
        action="store_false",
        help="do not ask the teacher to rephrase the questions built from the sentences",
    )
    learn.add_argument(
        "--rephrasings",
        type=int,
        default=None,
        metavar="N",
        help="the teacher's rephrasings per question built from a sentence, the first greedy, the rest "
        "sampled and each checked; each replaces the question it rephrases unless --keep-rough "
        "(default 5: on the default model 66%% of key facts in four runs, against 61%% with 3 and "
        "the rough questions kept, in slightly less time)",
    )
    learn.add_argument(
        "--keep-rough",
        action="store_true",
        help="keep each question built from a sentence beside the teacher's rephrasings of it (by "
        "default a rephrased one is replaced by its rephrasings; one the teacher could not rephrase "
        "stays)",
    )
    learn.add_argument(
        "--title-first",
        action="store_true",
        help="open every trained answer with its document's title ('From \"<title>\": ...'), so the "
        "adapter names the document before the sentence: the right document cited in 98%% of answers "
        "against 83%%, the same key facts (5 held-out runs, docs/learn-measurements.md)",
    )
    learn.add_argument(
        "--synonyms",
        type=int,
        default=None,
        metavar="N",
        help="per question, up to N copies with one word swapped for a WordNet synonym, kept when the "
        "teacher finds them about as likely as the original (default 0: none; 2 was measured on the "
        "default model: fewer key facts closed-book, 47%% against 53%%, more with --retrieve, 63%% "
        "against 50%%; needs a teacher that scores tokens: the hf engine)",
    )
    learn.add_argument(
        "--chunk-tokens", type=int, default=1024, help="chunk size in teacher tokens (default 1024)"
    )
    learn.add_argument("--prompts", metavar="A,B", help="only these prompts of the suite (comma-separated)")
    learn.add_argument("--suite", metavar="FILE", help="a prompt suite YAML instead of the built-in one")
    add_sft_flags(learn, LearnConfig)
    learn.set_defaults(run=cmd_learn, job="learn")


def cmd_learn(args: argparse.Namespace) -> int:
    from helixloom import jobs, models
    from helixloom.cli.common import open_store, sft_config_from
    from helixloom.documents.questions import Suite
    from helixloom.engine.pool import EnginePool
    from helixloom.paths import check_name
    from helixloom.training import learn, learn_teacher
    from helixloom.training.learn_config import LearnConfig

    check_name(args.name, "name")  # the dataset, run and adapter folders are named after it

    def say(text: str) -> None:
        print(f"helixloom: {text}", file=sys.stderr)
        jobs.log(text)

    def generate(run: Callable[[Callable[[int, int], None], Callable[[str], None]], Any]) -> Any:
        """Run question generation under a progress bar (one phase of the teacher's after another);
        on ^C say how to resume it."""
        bar = jobs.progress_bar(0, desc="teacher")

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        def phase(name: str) -> None:
            bar.reset(total=0)
            bar.set_description(name)

        try:
            return run(progress, phase)
        except KeyboardInterrupt:
            bar.close()
            say(f"finished units are kept; continue with: helixloom learn --resume --name {args.name}")
            raise
        finally:
            bar.close()

    stage = learn.stage(args.name)
    with open_store() as store:
        if args.resume:
            if args.paths:
                raise HelixloomError("--resume takes no PATH: it continues the dataset NAME as it is")
            if stage is None:
                raise HelixloomError(
                    f"nothing to resume: no dataset {args.name}", "start with helixloom learn PATH --name"
                )
            if stage == "trained":
                say(f"{args.name} is already trained; `helixloom chat --adapter {args.name}` to use it")
                return 0
            if stage == "generating":
                plan = learn.generation_plan(args.name) or {}
                teacher_spec = str(plan.get("teacher"))
                models.resolve(teacher_spec)
                teacher = EnginePool().get(teacher_spec)
                writer = _writer(teacher, teacher_spec, str(plan.get("base")))
                say(f"continuing question generation for {args.name} (teacher {teacher_spec})")
                train_file, _ = generate(
                    lambda progress, phase: learn.resume_generation(
                        args.name, teacher, writer=writer, say=say, on_progress=progress, on_phase=phase
                    )
                )
                if plan.get("review") or args.review:
                    say(f"review or edit {train_file}, then run: helixloom learn --resume --name {args.name}")
                    return 0
                result = learn.train(args.name, store, say=say)
            else:
                result = learn.train(args.name, store, resume=True, say=say)
            _report_training(result, args.name)
            return 0
        if not args.paths:
            raise HelixloomError("no documents given", "helixloom learn PATH... --name NAME")
        if stage is not None:
            raise HelixloomError(
                f"a dataset named {args.name} exists"
                + (" (its question generation was interrupted)" if stage == "generating" else ""),
                "continue it with --resume, or pick another --name",
            )
        if args.teacher and args.teacher_url:
            raise HelixloomError("give --teacher or --teacher-url, not both")
        if args.teacher_url:
            if not args.teacher_model:
                raise HelixloomError("--teacher-url needs --teacher-model")
            teacher_spec = f"openai:{args.teacher_url}#{args.teacher_model}"
        else:
            teacher_spec = learn_teacher.teacher_spec(args.base, args.teacher)
        questions = learn_teacher.suite_questions(teacher_spec) if args.questions is None else args.questions
        if questions < 0:
            raise HelixloomError("--questions must be 0 or more")
        sft = sft_config_from(args, LearnConfig)
        suite = Suite.load(args.suite)
        if args.prompts:
            suite = suite.only([p.strip() for p in args.prompts.split(",") if p.strip()])
        models.resolve(args.base)
        models.resolve(teacher_spec)
        teacher = EnginePool().get(teacher_spec)
        writer = _writer(teacher, teacher_spec, args.base)
        train_file, _ = generate(
            lambda progress, phase: learn.prepare(
                args.name,
                args.paths,
                teacher,
                base=args.base,
                writer=writer,
                suite=suite,
                num_questions=questions,
                chunk_tokens=args.chunk_tokens,
                sft=sft,
                teacher_spec=teacher_spec,
                review=args.review,
                rephrase=args.rephrase,
                keep_rough=args.keep_rough,
                title_first=args.title_first,
                **({"synonyms": args.synonyms} if args.synonyms is not None else {}),
                **({"rephrasings": args.rephrasings} if args.rephrasings is not None else {}),
                say=say,
                on_progress=progress,
                on_phase=phase,
            )
        )
        if args.review:
            say(f"review or edit {train_file}, then run: helixloom learn --resume --name {args.name}")
            return 0
        result = learn.train(args.name, store, say=say)
    _report_training(result, args.name)
    return 0


def _writer(teacher: Any, teacher_spec: str, base: str) -> Any:
    """The engine that writes the replay text: the base model's (the teacher's when it is the base)."""
    from helixloom.engine.pool import EnginePool

    return teacher if teacher_spec == base else EnginePool().get(base)


def _report_training(result: Any, name: str) -> None:
    from helixloom import jobs

    jobs.set_result(result)
    resumed = f", resumed at step {result.resumed_from_step}" if result.resumed_from_step else ""
    loss = f", final loss {result.final_loss:.3f}" if result.final_loss is not None else ""
    print(
        f"trained adapter {name}: {result.steps} steps{resumed}{loss}, {result.seconds:.0f} s "
        f"({result.tokens / max(result.seconds, 1e-9):.0f} tokens/s) -> {result.adapter_dir}"
    )
    print(f'ask it: helixloom chat --adapter {name} (or model "{name}" on the server)')
