"""``helixloom train helixnet``: make HelixNet's critic and regenerator (the seed's phases 2 and 3).

A linear recipe in four phases, each leaving files under ``HELIXLOOM_HOME/runs/helixnet/NAME/``:

1. **teach**: the actor (base model + optional actor adapter) answers every prompt (``samples`` per
   prompt, a distinct seed each), and the teacher writes a critique of the first answer and a
   regeneration (``helixnet_teachers``). Each finished batch is appended to ``lessons.partial.jsonl``;
2. **rows**: the lessons become training rows in the seed's exact formats: the critic's prompt ends
   ``CRITIQUE:`` and its completion is the critique; the regenerator's ends ``REGENERATOR: REGENERATED
   ANSWER:`` and its completion is the regeneration (``critic.jsonl``, ``regenerator.jsonl``). The
   regenerator learns mainly from responses that failed (target: a passing sample or the repaired
   response), plus at most ``keep_share`` of rows whose response passed and is kept unchanged
   (``regenerator_mix``), so it learns to fix, and to leave a good answer alone, not to copy;
3. **train**: one LoRA per role (``adapters/NAME-critic``, ``adapters/NAME-regenerator``);
4. **register** both adapters, each with ``{"helixnet": NAME, "role": ...}`` in its metadata: that
   is the set ``--helixnet NAME`` resolves (``adapters.helixnet_set``).

A killed run resumes where it stopped: the lessons already written are kept, a trained role is not
trained again, and a role's training resumes from its last checkpoint. The rows are rebuilt from the
lessons on every run, and a role is trained afresh when its rows or its training settings differ
from those it was trained with (``trained_with`` in ``state.json``), so a resumed run with another
``critic_pass_share`` or regenerator setting retrains exactly the role it changes.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from helixloom import adapters, atomic, jobs, jsonl, paths
from helixloom.engine import Engine, GenerationRequest, SamplingParams
from helixloom.errors import HelixloomError
from helixloom.evals.instructions import InstructionPrompt
from helixloom.prompting import PromptFormat, Stage
from helixloom.store import Store
from helixloom.training.configs import REGENERATOR_EPOCHS, HelixRoleSFTConfig, HelixTrainConfig, LoraSFTConfig
from helixloom.training.helixnet_teachers import OUTCOMES, Attempt, Teacher
from helixloom.training.sft import train_lora
from helixloom.training.trainer import TrainResult

Say = Callable[[str], None]
ROLES: tuple[Stage, ...] = ("critic", "regenerator")
PARTIAL = "lessons.partial.jsonl"


@dataclass(frozen=True)
class Actor:
    """The actor that answers the prompts: an engine and its adapter (None: the base model)."""

    engine: Engine
    adapter: str | None = None


@dataclass
class HelixTrainResult:
    """What a run made: examples per role, the adapters, and seconds per phase."""

    name: str
    prompts: int
    examples: dict[str, int]  # role -> training rows
    skipped_regenerations: int  # prompts where the teacher gave no regeneration (no sample passed)
    adapters: dict[str, str]  # role -> registered adapter name
    targets: dict[str, int] = field(default_factory=dict)  # lesson outcome (teachers.OUTCOMES) -> count
    regenerator_mix: dict[str, int] = field(default_factory=dict)  # fix / keep rows, keep_available
    critic_mix: dict[str, int] = field(default_factory=dict)  # failed / passing responses, passing targets
    train: dict[str, TrainResult] = field(default_factory=dict)  # roles trained in this run
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["train"] = {
            role: {"steps": r.steps, "final_loss": r.final_loss, "changed_fraction": r.changed_fraction}
            for role, r in self.train.items()
        }
        return out


def run_dir(name: str) -> Path:
    return paths.runs_dir() / "helixnet" / name


def role_rows(
    fmt: PromptFormat, engine: Engine, system: str, question: str, response: str, critique: str,
    regeneration: str | None,
) -> dict[str, dict[str, str]]:  # fmt: skip
    """The training rows one lesson gives, role -> raw ``prompt``/``completion``, in the format's exact
    prompts (the seed's for ``helixnet``). The completion starts with the space the seed's prompts
    leave out after ``CRITIQUE:`` and ``REGENERATED ANSWER:``."""
    rows: dict[str, dict[str, str]] = {}
    if critique.strip():
        prompt = fmt.critic_prompt(engine, system, question, response)
        rows["critic"] = {"prompt": prompt, "completion": " " + critique.strip()}
        if regeneration is not None and regeneration.strip():
            prompt = fmt.regenerator_prompt(engine, system, question, response, critique.strip())
            rows["regenerator"] = {"prompt": prompt, "completion": " " + regeneration.strip()}
    return rows


def teach(
    prompts: Sequence[InstructionPrompt],
    actor: Actor,
    teacher: Teacher,
    checkpoint: Path,
    *,
    fmt: PromptFormat,
    system: str,
    config: HelixTrainConfig,
) -> list[dict[str, Any]]:
    """Phase 1: the actor's answers and the teacher's lessons, one row per prompt, appended to
    ``checkpoint`` batch by batch; prompts already in it are not asked again."""
    done = {row["id"]: row for _, row in jsonl.read(checkpoint)} if checkpoint.is_file() else {}
    todo = [p for p in prompts if p.id not in done]
    n = config.samples if teacher.wants_samples else 1
    stop = tuple(fmt.stop)
    with jobs.progress_bar(len(prompts), desc="teach", unit="prompt", initial=len(done)) as bar:
        for start in range(0, len(todo), config.gen_batch):
            batch = todo[start : start + config.gen_batch]
            requests = [
                GenerationRequest(
                    fmt.actor_prompt(actor.engine, system, p.prompt, ()),
                    SamplingParams(
                        temperature=config.temperature,
                        max_tokens=config.max_tokens,
                        stop=stop,
                        token_healing=True,
                        seed=_seed(config.sample_seed, p.id, j),
                    ),
                    actor.adapter,
                )
                for p in batch
                for j in range(n)
            ]
            texts = [fmt.clean("actor", r.text) for r in actor.engine.generate(requests)]
            attempts = [Attempt(p, system, tuple(texts[i * n : (i + 1) * n])) for i, p in enumerate(batch)]
            lessons = teacher.teach(attempts)
            rows = [
                {
                    "id": a.prompt.id,
                    "question": a.prompt.prompt,
                    "response": a.response,
                    "samples_passing": sum(a.prompt.passes(s) for s in a.samples)
                    if a.prompt.checks
                    else None,
                    "critique": lesson.critique,
                    "regeneration": lesson.regeneration,
                    "outcome": lesson.outcome,
                    "target_critique": lesson.target_critique,
                }
                for a, lesson in zip(attempts, lessons, strict=True)
            ]
            with checkpoint.open("a") as f:
                for row in rows:
                    f.write(json.dumps(row) + "\n")
                    done[row["id"]] = row
            bar.update(len(batch))
    return [done[p.id] for p in prompts]


def train_helixnet(
    name: str,
    prompts: Sequence[InstructionPrompt],
    actor: Actor,
    teacher: Teacher,
    store: Store,
    *,
    base: str,
    config: HelixTrainConfig | None = None,
    sft: LoraSFTConfig | None = None,
    prompt_format: PromptFormat | None = None,
    system: str | None = None,
    resume: bool = False,
    role_sft: Mapping[Stage, LoraSFTConfig] | None = None,
    say: Say = lambda _: None,
) -> HelixTrainResult:
    """Teach, build role rows, train the critic and the regenerator LoRAs on ``base`` and register
    them as the HelixNet set ``name`` (adapters ``NAME-critic`` and ``NAME-regenerator``).

    With ``resume`` an interrupted run of ``name`` continues (its plan must match this one's teacher
    and base); without it an existing run of ``name`` is an error, so nothing is overwritten by
    accident. ``role_sft`` gives a role its own training settings (default: ``sft`` for both; with no
    ``sft``, the measured recipe ``HelixRoleSFTConfig`` with ``REGENERATOR_EPOCHS`` for the regenerator)."""
    paths.check_name(name, "helixnet set name")
    config = config or HelixTrainConfig()
    if sft is None:  # the measured recipe, the regenerator with its own epochs unless given
        sft = HelixRoleSFTConfig()
        role_sft = {"regenerator": replace(sft, epochs=REGENERATOR_EPOCHS), **(role_sft or {})}
    fmt = prompt_format or PromptFormat.load("helixnet")
    system = fmt.system if system is None else system
    if config.limit:
        prompts = prompts[: config.limit]
    if not prompts:
        raise HelixloomError("no prompts to train HelixNet on", param="prompts")
    folder = run_dir(name)
    plan = {
        "base": base,
        "actor_adapter": actor.adapter,
        "teacher": teacher.name,
        "format": fmt.name,
        "prompts": len(prompts),
        "config": asdict(config),
    }
    state = _start(folder, plan, resume)
    seconds: dict[str, float] = dict(state.get("seconds", {}))

    t0 = time.perf_counter()
    if "teach" not in state["done"]:
        say(f"teaching: {len(prompts)} prompts, teacher {teacher.name}")
        lessons = teach(
            prompts, actor, teacher, folder / PARTIAL, fmt=fmt, system=system, config=config
        )  # fmt: skip
        atomic.write_jsonl(folder / "lessons.jsonl", lessons)
        (folder / PARTIAL).unlink(missing_ok=True)
        seconds["teach"] = time.perf_counter() - t0
        state = _mark(folder, state, "teach", seconds)
    lessons = [row for _, row in jsonl.read(folder / "lessons.jsonl")]
    # rebuilt on every run (cheap): a resumed run with other row settings trains on its own rows
    all_rows, mixes = build_rows(
        lessons, fmt, actor.engine, system,
        keep_share=config.keep_share, critic_pass_share=config.critic_pass_share,
    )  # fmt: skip
    for role in ROLES:
        atomic.write_jsonl(folder / f"{role}.jsonl", all_rows[role])
    atomic.write_json(folder / "mix.json", mixes)
    examples: dict[str, int] = {role: len(all_rows[role]) for role in ROLES}
    mix, critic_mix = mixes["regenerator"], mixes["critic"]
    targets = {o: n for o in OUTCOMES if (n := sum(1 for row in lessons if row.get("outcome") == o))}
    say(
        f"role data: {examples['critic']} critic and {examples['regenerator']} regenerator examples; "
        f"targets {targets}; regenerator mix {mix}; critic mix {critic_mix}"
    )

    trained: dict[str, TrainResult] = {}
    for role in ROLES:
        rows_of_role = all_rows[role]
        role_config = (role_sft or {}).get(role, sft)
        fingerprint = _fingerprint(rows_of_role, role_config)
        recorded = state.get("trained_with", {}).get(role)
        # None: trained before runs recorded what a role was trained with; it is trusted as it is
        if role in state["done"] and recorded in (fingerprint, None):
            continue
        if recorded != fingerprint:
            if recorded is not None:  # other rows or settings: its checkpoints are not this training's
                say(f"the {role}'s rows or settings changed: training it afresh")
                shutil.rmtree(folder / f"train-{role}", ignore_errors=True)
            state = _train_with(folder, state, role, fingerprint)
        if not rows_of_role:
            raise HelixloomError(
                f"the teacher gave no {role} examples",
                "use more prompts, more --samples, or a stronger --teacher",
            )
        t0 = time.perf_counter()
        say(f"training the {role} on {len(rows_of_role)} examples")
        trained[role] = train_lora(
            base,
            rows_of_role,
            paths.adapters_dir() / f"{name}-{role}",
            folder / f"train-{role}",
            role_config,
            resume=resume and (folder / f"train-{role}").is_dir(),
        )
        seconds[f"train_{role}"] = time.perf_counter() - t0
        state = _mark(folder, state, role, seconds)

    registered: dict[str, str] = {}
    for role in ROLES:
        adapter_name = f"{name}-{role}"
        meta = {"helixnet": name, "role": role, "teacher": teacher.name, "examples": examples[role]}
        if actor.adapter:
            meta["actor_adapter"] = actor.adapter
        adapters.register(store, adapter_name, paths.adapters_dir() / adapter_name, replace=True, meta=meta)
        registered[role] = adapter_name
    _mark(folder, state, "register", seconds)
    skipped = sum(1 for row in lessons if row["critique"] and not row["regeneration"])
    return HelixTrainResult(
        name, len(prompts), dict(examples), skipped, dict(registered), targets, mix, critic_mix,
        dict(trained), seconds,
    )  # fmt: skip


def build_rows(
    lessons: Sequence[dict[str, Any]],
    fmt: PromptFormat,
    engine: Engine,
    system: str,
    *,
    keep_share: float,
    critic_pass_share: float = 0.0,
) -> tuple[dict[str, list[dict[str, str]]], dict[str, dict[str, int]]]:
    """Role rows from the lessons, and each role's mix (``{"regenerator": ..., "critic": ...}``).

    Regenerator: a row whose response passed (``kept``) is one of at most ``keep_share`` of its rows
    (the first ones in prompt order); every other regeneration is a fix row, counted by where its
    target came from (``fix_sample``, ``fix_repaired``...). When no response failed there is nothing
    to fix, and every kept row is used (the regenerator can only learn to keep a good answer then).

    Critic: every critique of a response is a row. The actor fails most prompts, and a critic that
    learns only from them learns to say every answer fails (session 6's trained critic did). So while
    passing answers are under ``critic_pass_share`` of its rows, the verified regeneration of a failed
    response (a passing answer to the same question, differing from the failed one mostly in what
    the checks look at) is added with the teacher's critique of it (``target_critique``), first ones
    in prompt order."""
    usable = [row for row in lessons if row["critique"].strip() and (row["regeneration"] or "").strip()]
    fix = sum(1 for row in usable if row.get("outcome") != "kept")
    kept_available = len(usable) - fix
    keep_room = int(keep_share * fix / (1 - keep_share)) if fix else kept_available
    criticised = [row for row in lessons if row["critique"].strip()]
    passed = sum(1 for row in criticised if row.get("outcome") == "kept")
    failed = sum(1 for row in criticised if row.get("outcome") in ("sample", "repaired", "none"))
    # the fewest passing rows p with p / (p + failed) >= critic_pass_share
    pass_room = max(0, math.ceil(critic_pass_share * failed / (1 - critic_pass_share)) - passed)
    rows: dict[str, list[dict[str, str]]] = {r: [] for r in ROLES}
    mix = {"keep": 0, "keep_available": kept_available}
    critic_mix = {"response_failed": failed, "response_passed": passed, "target_passed": 0}
    for lesson in lessons:
        regeneration = lesson["regeneration"]
        outcome = lesson.get("outcome", "teacher")
        if outcome == "kept" and mix["keep"] >= keep_room:
            regeneration = None
        made = role_rows(
            fmt, engine, system, lesson["question"], lesson["response"], lesson["critique"], regeneration
        )
        for role, row in made.items():
            rows[role].append(row)
        if "regenerator" in made:
            key = "keep" if outcome == "kept" else f"fix_{outcome}"
            mix[key] = mix.get(key, 0) + 1
        vouched = lesson.get("target_critique")
        room = critic_mix["target_passed"] < pass_room
        if vouched and lesson["regeneration"] and outcome != "kept" and room:
            prompt = fmt.critic_prompt(engine, system, lesson["question"], lesson["regeneration"].strip())
            rows["critic"].append({"prompt": prompt, "completion": " " + vouched.strip()})
            critic_mix["target_passed"] += 1
    return rows, {"regenerator": mix, "critic": critic_mix}


def _seed(seed: int, prompt_id: str, sample: int) -> int:
    """A sample's seed from the prompt and sample only, so batching and resuming repeat the same text."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{sample}".encode()).hexdigest()
    return int(digest[:12], 16)


def _fingerprint(rows: Sequence[dict[str, str]], sft: LoraSFTConfig) -> str:
    """What a role is trained with: its rows and its training settings."""
    digest = hashlib.sha256(json.dumps(asdict(sft), sort_keys=True).encode())
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _train_with(folder: Path, state: dict[str, Any], role: str, fingerprint: str) -> dict[str, Any]:
    """Record that ``role`` is (being) trained with ``fingerprint``; it and the set are not done."""
    done = [p for p in state["done"] if p not in (role, "register")]
    state = {**state, "done": done, "trained_with": {**state.get("trained_with", {}), role: fingerprint}}
    atomic.write_json(folder / "state.json", state)
    return state


def _start(folder: Path, plan: dict[str, Any], resume: bool) -> dict[str, Any]:
    state_file = folder / "state.json"
    if state_file.is_file():
        if not resume:
            raise HelixloomError(
                f"a HelixNet training run named {folder.name} exists",
                "continue it with --resume, or pick another --name",
            )
        state: dict[str, Any] = json.loads(state_file.read_text())
        old = state["plan"]
        for key in ("base", "actor_adapter", "teacher", "format"):
            if old.get(key) != plan.get(key):
                raise HelixloomError(
                    f"--resume with another {key}: the run used {old.get(key)!r}, not {plan.get(key)!r}"
                )
        return state
    folder.mkdir(parents=True, exist_ok=True)
    state = {"plan": plan, "done": [], "seconds": {}}
    atomic.write_json(state_file, state)
    return state


def _mark(folder: Path, state: dict[str, Any], phase: str, seconds: dict[str, float]) -> dict[str, Any]:
    state = {**state, "done": [*state["done"], phase], "seconds": seconds}
    atomic.write_json(folder / "state.json", state)
    return state
