"""Jobs: long commands record progress, logs and their end in the store; the server runs submitted ones."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helixloom import jobs
from helixloom.cli import build_parser, main
from helixloom.engine.hf import HFEngine
from helixloom.errors import HelixloomError
from helixloom.server import BackgroundServer, ServerConfig, ServerState
from helixloom.server.job_runner import check_command
from helixloom.store import Store
from tests.conftest import TinyModel, serving

FAST = ["--max-steps", "2", "--batch-size", "2", "--rank", "4", "--learning-rate", "1e-3"]


def _data(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": "Say hi", "completion": " hi"}) + "\n" for _ in range(4)))
    return path


def test_run_job_records_progress_log_and_result(tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        with jobs.run_job("train", name="n", params={"argv": ["x"]}, store=store) as job:
            running = store.get_job(job.id)
            assert running is not None and running.status == "running" and running.pid == os.getpid()
            bar = jobs.progress_bar(7, desc="fine-tuning", unit="step")
            for _ in range(7):
                bar.update(1)
            bar.close()
            quiet = jobs.progress_bar(3, desc="hidden", disable=True)  # tqdm counts nothing when disabled
            quiet.update(2)
            quiet.close()
            hidden = store.get_job(job.id)
            assert hidden is not None and (hidden.progress, hidden.total, hidden.message) == (2, 3, "hidden")
            bar = jobs.progress_bar(7, desc="fine-tuning", unit="step", initial=6)
            bar.update(1)
            bar.close()
            jobs.log("halfway")
            job.result = {"steps": 7}
        done = store.get_job(job.id)
        assert done is not None
        assert (done.status, done.progress, done.total, done.message) == ("succeeded", 7, 7, "done")
        assert done.result == {"steps": 7} and done.name == "n"
        assert store.job_logs(job.id) == ["halfway"]
        assert jobs.active() is None
        # Outside a job, bars and log lines record nothing and do not fail.
        jobs.log("nobody listens")
        jobs.progress_bar(2).update(2)


def test_run_job_failure_and_interrupt_are_recorded(tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        with pytest.raises(HelixloomError, match="bad data"), jobs.run_job("train", store=store):
            raise HelixloomError("bad data")
        with pytest.raises(KeyboardInterrupt), jobs.run_job("iterate", store=store):
            raise KeyboardInterrupt
        interrupted, failed = store.list_jobs()
        assert (failed.status, failed.error) == ("failed", "bad data")
        assert interrupted.status == "cancelled" and "checkpoints are kept" in (interrupted.message or "")
        with (
            jobs.run_job("train", store=store),
            pytest.raises(HelixloomError, match="already running"),
            jobs.run_job("train", store=store),
        ):
            pass


def test_sigterm_cancels_a_job(tmp_path: Path) -> None:
    with Store(tmp_path / "db") as store:
        with pytest.raises(jobs.JobCancelled), jobs.run_job("train", store=store) as job:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        after = store.get_job(job.id)
        assert after is not None and after.status == "cancelled"
    assert signal.getsignal(signal.SIGTERM) is not jobs._on_sigterm  # restored


def test_reap_marks_jobs_of_dead_processes_failed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with Store(tmp_path / "db") as store:
        gone = store.create_job("iterate")
        store.update_job(gone.id, status="running", pid=dead.pid, host=socket.gethostname())
        alive = store.create_job("train")
        store.update_job(alive.id, status="running", pid=os.getpid(), host=socket.gethostname())
        elsewhere = store.create_job("train")
        store.update_job(elsewhere.id, status="running", pid=dead.pid, host="another-machine")
        assert [j.id for j in jobs.reap(store)] == [gone.id]
        after = store.get_job(gone.id)
        assert after is not None and after.status == "failed" and "--resume" in (after.error or "")
        assert {j.id for j in store.list_jobs(status="running")} == {alive.id, elsewhere.id}


def test_cli_commands_are_jobs(tiny_model: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _data(tmp_path)
    args = ["train", "sft", "--data", str(data), "--name", "j1", "--base", str(tiny_model.path), *FAST]
    assert main(args) == 0
    missing = ["train", "sft", "--data", str(tmp_path / "missing.jsonl"), "--name", "j2", *FAST]
    assert main(missing) == 2  # refused before the (default) model loads
    capsys.readouterr()
    assert main(["jobs", "list", "--json"]) == 0
    failed, ok = json.loads(capsys.readouterr().out)
    assert (ok["kind"], ok["name"], ok["status"]) == ("train", "j1", "succeeded")
    assert ok["progress"] == ok["total"] == 2 and ok["params"]["argv"] == args
    assert ok["result"]["steps"] == 2 and ok["result"]["adapter_dir"].endswith("j1")  # the TrainResult
    assert failed["status"] == "failed" and "missing.jsonl" in failed["error"]
    assert main(["jobs", "show", ok["id"][:6]]) == 0
    out = capsys.readouterr().out
    assert f"job {ok['id']} (train, j1): succeeded" in out and "command: helixloom train sft" in out
    assert main(["jobs", "show", failed["id"]]) == 1
    assert main(["jobs", "show", "zzz"]) == 2
    assert "no job zzz" in capsys.readouterr().err
    assert main(["jobs", "cancel", ok["id"]]) == 2
    assert "already succeeded" in capsys.readouterr().err
    # Commands that are not long work are not recorded; --job-id is refused for them.
    assert main(["jobs", "list", "--status", "running"]) == 0
    assert main(["--job-id", "abc", "models"]) == 2


def test_check_command_uses_the_cli_parser(tiny_model: TinyModel) -> None:
    assert check_command(["iterate", "--prompts", "p.jsonl", "--name", "r"], build_parser) == ("iterate", "r")
    with pytest.raises(HelixloomError, match="a job runs one of"):
        check_command(["serve"], build_parser)
    with pytest.raises(HelixloomError, match="--name"):
        check_command(["iterate", "--prompts", "p.jsonl"], build_parser)
    with pytest.raises(HelixloomError, match="not a job command"):
        check_command(["train"], build_parser)


@pytest.fixture
def server(tiny_model: TinyModel, tiny_engine: HFEngine, helixloom_home: Path) -> Iterator[BackgroundServer]:
    from helixloom.paths import ensure_home

    ensure_home()
    state = ServerState(
        ServerConfig(model=str(tiny_model.path)),
        tiny_engine,
        Store.open_default(),
        command_parser=build_parser,
    )
    with serving(state) as running:
        yield running


def _wait(url: str, job_id: str, until: tuple[str, ...], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/api/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job['status']}: {job}")


def test_server_runs_queues_and_cancels_jobs(
    server: BackgroundServer, tiny_model: TinyModel, tmp_path: Path
) -> None:
    url = server.url
    from helixloom.paths import home

    _data(home() / "uploads")  # a job started over HTTP reads only under HELIXLOOM_HOME
    data = "uploads/d.jsonl"  # (relative paths are the home's)
    base = ["train", "sft", "--data", str(data), "--base", str(tiny_model.path), "--rank", "4"]
    # Bad command lines are refused with the CLI's own words, before anything runs.
    for body, words in [
        ({"command": "serve --port 1"}, "a job runs one of"),
        ({"argv": ["iterate", "--prompts", "p.jsonl"]}, "--name"),
        ({"command": "train sft 'unclosed"}, "quotation"),
        ({}, "either argv"),
    ]:
        r = httpx.post(url + "/api/jobs", json=body)
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    assert httpx.get(url + "/api/jobs/nope").status_code == 404

    # A job waits while another (a CLI one here) runs on this machine.
    with Store.open_default() as store:  # the server's store
        cli_job = store.create_job("train", name="from-the-cli")
        store.update_job(cli_job.id, status="running", pid=os.getpid(), host=socket.gethostname())
        quick = httpx.post(url + "/api/jobs", json={"argv": [*base, "--name", "quick", *FAST]})
        assert quick.status_code == 201 and quick.json()["status"] == "queued"
        time.sleep(2.5)
        assert httpx.get(f"{url}/api/jobs/{quick.json()['id']}").json()["status"] == "queued"
        store.update_job(cli_job.id, status="succeeded")

    # Then it runs to the end in its own process, recording its progress and log.
    done = _wait(url, quick.json()["id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded", done
    assert done["progress"] == done["total"] == 2 and done["pid"] != os.getpid()
    assert done["log"][0].startswith("queued: helixloom train sft")
    assert "trained quick" in done["output"]
    assert "quick" in {a["id"] for a in httpx.get(url + "/v1/models").json()["data"]}

    # A long job is cancelled while it trains; one queued behind it is cancelled before it starts.
    long_cmd = shlex.join(["helixloom", *base, "--name", "long", "--max-steps", "100000"])
    long_job = httpx.post(url + "/api/jobs", json={"command": long_cmd}).json()
    waiting = httpx.post(url + "/api/jobs", json={"argv": [*base, "--name", "later", *FAST]}).json()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/api/jobs/{long_job['id']}").json()
        if job["status"] == "running" and (job["progress"] or 0) >= 1:
            break
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.5)
    assert httpx.get(f"{url}/api/jobs/{waiting['id']}").json()["status"] == "queued"
    cancelled = httpx.post(f"{url}/api/jobs/{waiting['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and "before it started" in cancelled["message"]
    httpx.post(f"{url}/api/jobs/{long_job['id']}/cancel")
    stopped = _wait(url, long_job["id"], ("cancelled", "failed", "succeeded"), timeout=60)
    assert stopped["status"] == "cancelled", stopped
    assert httpx.post(f"{url}/api/jobs/{long_job['id']}/cancel").status_code == 400
    listed = httpx.get(url + "/api/jobs", params={"kind": "train"}).json()["data"]
    assert [j["name"] for j in listed] == ["later", "long", "quick", "from-the-cli"]
    time.sleep(1.5)  # the runner does not pick up the cancelled job
    assert httpx.get(f"{url}/api/jobs/{waiting['id']}").json()["status"] == "cancelled"


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true", reason="no Chromium here"
)
def test_jobs_page_in_chromium(server: BackgroundServer, tiny_model: TinyModel, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from helixloom.paths import home

    _data(home() / "uploads")
    data = "uploads/d.jsonl"
    command = shlex.join(
        ["train", "sft", "--data", str(data), "--base", str(tiny_model.path), "--name", "ui", *FAST]
    )
    artifacts = Path(__file__).resolve().parent.parent / "artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        page = browser.new_page()
        page.goto(server.url + "/")
        page.click("a[href='/jobs']")
        page.wait_for_selector("#jobs tbody tr")
        assert "no jobs yet" in page.inner_text("#jobs")
        page.fill("#command", "serve")
        page.click("#start")
        page.wait_for_function("document.querySelector('#status').textContent.includes('a job runs one of')")
        page.fill("#command", command)
        page.press("#command", "Enter")
        page.wait_for_selector("#jobs td.status-succeeded", timeout=240_000)
        page.wait_for_function("document.querySelector('#detail-log').textContent.includes('queued')")
        assert "train ui: succeeded" in page.inner_text("#detail-title")
        assert '"steps": 2' in page.inner_text("#detail-result")
        assert "2/2" in page.inner_text("#jobs")
        page.screenshot(path=str(artifacts / "jobs.png"), full_page=True)
        browser.close()
