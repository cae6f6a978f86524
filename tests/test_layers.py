"""The package's layering and its light start: checked with the real tools, in fresh processes.

The layers themselves are declared once, in pyproject.toml's ``[tool.importlinter]``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "peft", "trl")


def _env(**extra: str) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT), **extra}


def test_import_contracts_are_kept() -> None:
    """import-linter's contracts (layers, acyclic siblings) from pyproject.toml all hold."""
    tool = Path(sys.executable).with_name("lint-imports")
    command = str(tool) if tool.is_file() else shutil.which("lint-imports")
    assert command, "lint-imports is missing: install the test extra (pip install -e '.[test]')"
    done = subprocess.run(
        [command, "--no-cache"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


def test_no_module_imports_itself_back() -> None:
    """No import cycle between modules of helixloom, a package and its own modules included
    (import-linter's acyclic_siblings compares siblings only, not a module with its package)."""
    script = textwrap.dedent(
        """
        import json, grimp
        graph = grimp.build_graph("helixloom")
        index, low, stack, on_stack, cycles = {}, {}, [], set(), []

        def visit(module):  # Tarjan's strongly connected components
            index[module] = low[module] = len(index)
            stack.append(module)
            on_stack.add(module)
            for imported in sorted(graph.find_modules_directly_imported_by(module)):
                if imported not in index:
                    visit(imported)
                    low[module] = min(low[module], low[imported])
                elif imported in on_stack:
                    low[module] = min(low[module], index[imported])
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))

        for module in sorted(graph.modules):
            if module not in index:
                visit(module)
        print(json.dumps(cycles))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == []


# A stand-in for a remote OpenAI-compatible server: it serves one model and nothing else, which is
# all the remote engine asks at start-up when told not to look for a chat template.
SERVE_ON_A_REMOTE_ENGINE = """
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Models(BaseHTTPRequestHandler):
    def do_GET(self):
        found = self.path.rstrip("/") == "/v1/models"
        body = json.dumps({"object": "list", "data": [{"id": "x", "object": "model"}]}).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if found else 0))
        self.end_headers()
        if found:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


remote = ThreadingHTTPServer(("127.0.0.1", 0), Models)
threading.Thread(target=remote.serve_forever, daemon=True).start()
spec = f"openai:http://127.0.0.1:{remote.server_address[1]}/v1#x"

import uvicorn

from helixloom.cli import build_parser

seen = {}


def run_instead(app, **options):  # uvicorn.run would serve forever; ask the app what it serves
    from starlette.testclient import TestClient

    with TestClient(app, base_url="http://localhost") as client:
        seen["health"] = client.get("/health").json()["status"]
        seen["models"] = [m["id"] for m in client.get("/v1/models").json()["data"]]


uvicorn.run = run_instead
args = build_parser().parse_args(["serve", "--model", spec])
assert args.command_parser is build_parser  # the server checks job command lines with the CLI's parser
code = args.run(args)
heavy = sorted(m for m in HEAVY if m in sys.modules)
print(json.dumps({"code": code, "seen": seen, "spec": spec, "heavy": heavy}))
"""


def test_serving_a_remote_engine_imports_no_training_stack(tmp_path: Path) -> None:
    """`helixloom serve --model openai:URL` builds the whole CLI parser, loads the remote engine, opens
    the store and answers requests without importing torch, transformers, peft or trl."""
    script = f"HEAVY = {HEAVY!r}\n" + SERVE_ON_A_REMOTE_ENGINE
    env = _env(HELIXLOOM_HOME=str(tmp_path / "home"), HELIXLOOM_REMOTE_CHAT_TEMPLATE="none")
    env.pop("HELIXLOOM_DB", None)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    assert result["seen"] == {"health": "ok", "models": [result["spec"], "helixnet", "weave"]}
    assert result["heavy"] == []
