"""What a remote client may run as a job (helixloom.server.job_policy), checked against the CLI's own
parser: each abuse found in the security review is refused, and ordinary jobs pass with their paths
made absolute under HELIXLOOM_HOME."""

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
    return tmp_path


@pytest.fixture
def policy(home: Path) -> JobPolicy:
    return JobPolicy(home=home, models=frozenset({"default"}), adapters=frozenset({"mine"}))


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


def test_ordinary_jobs_pass_with_absolute_paths(policy: JobPolicy, home: Path) -> None:
    assert check(policy, "learn uploads/docs --name mydocs --epochs 2") == [
        "learn",
        str(home / "uploads" / "docs"),
        "--name",
        "mydocs",
        "--epochs",
        "2",
    ]
    argv = check(
        policy, "iterate --name better --prompts uploads/prompts.txt --reward evaluator --adapter mine"
    )
    assert argv[argv.index("--prompts") + 1] == str(home / "uploads" / "prompts.txt")
    argv = check(policy, "eval winrate --model default --prompts uploads/prompts.txt --out reports/w.json")
    assert argv[-1] == str(home / "reports" / "w.json")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("eval winrate --prompts /etc/passwd", "outside"),
        ("eval winrate --prompts uploads/../../etc/passwd", "outside"),
        ("eval winrate --prompts uploads/prompts.txt --out /tmp/x", "outside"),
        ("eval winrate --prompts uploads/prompts.txt --out=/tmp/x", "outside"),
        ("eval winrate --prompts uploads/prompts.txt --ou /tmp/x", "outside"),  # an abbreviation
        ("learn uploads/docs --name d --teacher-url http://evil/v1", "cannot be used"),
        ("learn uploads/docs --name d --teacher openai:http://evil/v1#m", "not allowed"),
        ("eval winrate --prompts uploads/prompts.txt --judge openai:http://evil/v1", "not allowed"),
        ("iterate --name r --prompts uploads/prompts.txt --reward py:/tmp/x.py:f", "Python rewards"),
        ("iterate --name r --prompts uploads/prompts.txt --reward judge:openai:http://e/v1", "not allowed"),
        ("iterate --name r --prompts uploads/prompts.txt --reward rubric:/etc/passwd", "outside"),
        ("learn uploads/docs --name ../../x", "bad name name"),
        ("learn /etc --name x", "outside"),
        ("train sft --data uploads/prompts.txt --name a --adapter /etc", "outside"),
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
    assert argv[argv.index("--prompts") + 1] == str(home / "uploads" / "prompts.txt")
    assert "default" in check(policy, "train helixnet --name hx --teacher default --actor-adapter mine")
    with pytest.raises(HelixloomError, match="not allowed"):
        check(policy, "train helixnet --name hx --teacher openai:http://evil/v1#m")
    with pytest.raises(HelixloomError, match="outside"):
        check(policy, "train helixnet --name hx --actor-adapter /etc")
