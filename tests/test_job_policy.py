"""What a remote client may run as a job (helixloom.server.job_policy), checked against the CLI's own
parser: each abuse found in the security review is refused, and ordinary jobs pass with their paths
resolved under uploads/ and outputs/ of HELIXLOOM_HOME (relative to it, where the job runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helixloom.cli import build_parser
from helixloom.errors import HelixloomError
from helixloom.server.job_policy import ALLOWED, JobPolicy


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "uploads").mkdir()
    (tmp_path / "uploads" / "prompts.txt").write_text("Say hi.\n")
    (tmp_path / "uploads" / "docs").mkdir()
    (tmp_path / "uploads" / "docs" / "a.md").write_text("# A\ntext\n")
    (tmp_path / "rewards" / "rm1").mkdir(parents=True)
    (tmp_path / "adapters" / "mine").mkdir(parents=True)
    return tmp_path


@pytest.fixture
def policy(home: Path) -> JobPolicy:
    return JobPolicy(
        home=home, models=frozenset({"default"}), adapters=frozenset({"mine"}), rewards=frozenset({"rm1"})
    )


def check(policy: JobPolicy, line: str) -> list[str]:
    argv = line.split()
    build_parser().parse_args(argv)  # the runner parses with the CLI parser first
    return policy.check(build_parser(), argv)


def test_every_allowed_command_exists_in_the_cli_with_those_flags() -> None:
    parser = build_parser()
    for words, flags in ALLOWED.items():
        sub = JobPolicy._subparser(parser, words)
        dests = {a.dest for a in sub._actions}
        assert set(flags) <= dests, (words, set(flags) - dests)
        assert sub.get_default("job"), words  # only job commands


def test_ordinary_jobs_pass_with_paths_resolved_in_the_home(policy: JobPolicy, home: Path) -> None:
    assert check(policy, "learn uploads/./docs --name mydocs --epochs 2") == [
        "learn",
        "uploads/docs",
        "--name",
        "mydocs",
        "--epochs",
        "2",
    ]
    argv = check(policy, "iterate --name better --prompts uploads/prompts.txt --reward rm:rm1 --adapter mine")
    assert argv[argv.index("--prompts") + 1] == "uploads/prompts.txt"
    assert argv[argv.index("--reward") + 1] == "rm:rewards/rm1"
    argv = check(
        policy, f"eval winrate --model default --prompts {home}/uploads/prompts.txt --out outputs/w.json"
    )
    assert argv[argv.index("--prompts") + 1] == "uploads/prompts.txt"  # the home's location is not echoed
    assert argv[-1] == "outputs/w.json"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("eval winrate --prompts /etc/passwd", "outside"),
        ("eval winrate --prompts uploads/../../etc/passwd", "outside"),
        ("eval winrate --prompts uploads/prompts.txt --out /tmp/x", "outside"),
        ("eval winrate --prompts uploads/prompts.txt --out=/tmp/x", "outside"),
        ("eval winrate --prompts uploads/prompts.txt --ou /tmp/x", "outside"),  # an abbreviation
        ("eval winrate --prompts uploads/prompts.txt --out helixloom.db", "outside outputs/"),
        ("eval winrate --prompts uploads/prompts.txt --out uploads/prompts.txt", "outside outputs/"),
        ("prompts generate --seed uploads/prompts.txt --out adapters/mine/x", "outside outputs/"),
        ("learn . --name everything", "outside uploads/"),
        ("eval winrate --prompts helixloom.db", "outside uploads/"),
        ("iterate --name r --prompts uploads/prompts.txt --reward rm:uploads", "no trained reward"),
        ("iterate --name r --prompts uploads/prompts.txt --reward head:../x", "bad reward name"),
        ("train sft --data uploads/prompts.txt --name a --adapter uploads/docs", "not registered"),
        ("eval winrate --prompts uploads/prompts.txt --judge-template uploads/prompts", ".yaml"),
        ("learn uploads/docs --name d --teacher-url http://evil/v1", "cannot be used"),
        ("learn uploads/docs --name d --teacher openai:http://evil/v1#m", "not allowed"),
        ("eval winrate --prompts uploads/prompts.txt --judge openai:http://evil/v1", "not allowed"),
        ("iterate --name r --prompts uploads/prompts.txt --reward py:/tmp/x.py:f", "Python rewards"),
        ("iterate --name r --prompts uploads/prompts.txt --reward judge:openai:http://e/v1", "not allowed"),
        ("iterate --name r --prompts uploads/prompts.txt --reward rubric:/etc/passwd", "outside"),
        ("learn uploads/docs --name ../../x", "bad name name"),
        ("learn /etc --name x", "outside"),
        ("train sft --data uploads/prompts.txt --name a --adapter /etc", "not registered"),
        ("eval winrate --prompts uploads/missing.txt", "does not exist"),
        ("serve --host 0.0.0.0", "cannot be run from the API"),
        ("adapters add x /etc", "cannot be run from the API"),
    ],
)
def test_abuse_is_refused(policy: JobPolicy, line: str, message: str) -> None:
    with pytest.raises(HelixloomError, match=message):
        check(policy, line)


def test_a_link_out_of_the_home_is_refused(policy: JobPolicy, home: Path) -> None:
    (home / "uploads" / "escape").symlink_to("/etc")
    with pytest.raises(HelixloomError, match="outside"):
        check(policy, "learn uploads/escape --name x")


def test_operator_allowed_models_pass(home: Path) -> None:
    policy = JobPolicy(home=home, models=frozenset({"default", "openai:http://gpu:8000/v1#big"}))
    argv = check(policy, "learn uploads/docs --name d --teacher openai:http://gpu:8000/v1#big")
    assert "openai:http://gpu:8000/v1#big" in argv


def test_train_helixnet_takes_the_verifier_or_an_allowed_teacher(policy: JobPolicy, home: Path) -> None:
    argv = check(
        policy, "train helixnet --name hx --teacher verifier --prompts uploads/prompts.txt --limit 4"
    )
    assert argv[argv.index("--teacher") + 1] == "verifier"
    assert argv[argv.index("--prompts") + 1] == "uploads/prompts.txt"
    assert "default" in check(policy, "train helixnet --name hx --teacher default --actor-adapter mine")
    with pytest.raises(HelixloomError, match="not allowed"):
        check(policy, "train helixnet --name hx --teacher openai:http://evil/v1#m")
    with pytest.raises(HelixloomError, match="not registered"):
        check(policy, "train helixnet --name hx --actor-adapter /etc")


def test_every_flag_of_a_job_command_is_allowed_or_refused_on_purpose() -> None:
    # A flag added to the CLI must be sorted: allowed with a kind of value, or refused with a reason.
    # Otherwise jobs over HTTP silently lose it (as --repair and --engine once did).
    from helixloom.cli import build_parser
    from helixloom.server.job_policy import ALLOWED, REFUSED

    parser = build_parser()
    for words, allowed in ALLOWED.items():
        sub = JobPolicy._subparser(parser, words)
        dests = {a.dest for a in sub._actions if a.dest != "help"}
        refused = REFUSED.get(words, {})
        assert not set(allowed) & set(refused), words
        assert dests == set(allowed) | set(refused), (words, dests ^ (set(allowed) | set(refused)))


def test_new_flags_pass_over_http(policy: JobPolicy) -> None:
    argv = check(policy, "train helixnet --name hx --teacher verifier --no-repair --keep-share 0.1")
    assert "--no-repair" in argv and argv[argv.index("--keep-share") + 1] == "0.1"
    assert "--engine" in check(
        policy, "prompts generate --seed uploads/prompts.txt --out outputs/p.txt --engine hf"
    )
    with pytest.raises(HelixloomError, match="cannot be used"):
        check(policy, "improve --name x --server http://evil:8000")
