"""Exporting a HelixNet-LMoE set for vLLM (PEFT folders, ``--lora-modules`` line, a request per role)
and llama.cpp (GGUF LoRAs, ``llama-server --lora`` line, a request per role), on the tiny model; the
GGUF LoRAs of a set on the embedded default model load in llama.cpp and change its output."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from helixloom import adapters
from helixloom.errors import HelixloomError
from helixloom.helixnet.export import export_helixnet
from helixloom.store import Store
from tests.conftest import TinyModel


def _register_set(store: Store, name: str, folders: dict[str, Path]) -> None:
    for role, folder in folders.items():
        adapters.register(store, f"{name}-{role}", folder, meta={"helixnet": name, "role": role})


def _tiny_gguf(model_dir: Path, out: Path) -> Path:
    """The tiny Llama's weights as a GGUF file (names and shapes as llama.cpp's converter writes them,
    no tokenizer): the base the exporter maps the LoRA layers onto."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    blocks = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, blocks)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_block_count(blocks)
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    for key, value in load_file(str(model_dir / "model.safetensors")).items():
        gguf_name = names.get_name(key, try_suffixes=(".weight",))
        assert gguf_name is not None, key
        writer.add_tensor(gguf_name, value.astype("float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_export_writes_both_formats_with_their_serve_lines_and_requests(
    tiny_model: TinyModel, helixloom_home: Path, tmp_path: Path
) -> None:
    import gguf
    from safetensors.numpy import load_file

    store = Store(helixloom_home / "helixloom.db")
    roles = {"critic": tiny_model.adapters["alpha"], "regenerator": tiny_model.adapters["beta"]}
    _register_set(store, "hx", roles)
    base_gguf = _tiny_gguf(tiny_model.path, tmp_path / "tiny.gguf")
    out = tmp_path / "export"
    done = export_helixnet(store, "hx", out, base=str(tiny_model.path), base_gguf=base_gguf)

    assert done.roles == {"critic": "hx-critic", "regenerator": "hx-regenerator"}
    manifest = json.loads((out / "helixnet.json").read_text())
    assert manifest == json.loads(json.dumps(done.as_dict()))

    # vLLM: each role's PEFT adapter, unchanged, under its served name; the serve line names them all
    serve = (out / "vllm" / "serve.txt").read_text().strip()
    words = shlex.split(serve)
    assert words[:3] == ["vllm", "serve", str(tiny_model.path)] and "--enable-lora" in words
    assert words[words.index("--max-lora-rank") + 1] == "8"  # beta has rank 8
    modules = dict(w.split("=", 1) for w in words[words.index("--lora-modules") + 1 :])
    assert set(modules) == {"hx-critic", "hx-regenerator"}
    for role, source in roles.items():
        copied = Path(modules[f"hx-{role}"])
        assert (copied / "adapter_config.json").read_text() == (source / "adapter_config.json").read_text()
        assert (copied / "adapter_model.safetensors").read_bytes() == (
            source / "adapter_model.safetensors"
        ).read_bytes()
        request = json.loads((out / "vllm" / "requests" / f"{role}.json").read_text())
        assert request["model"] == f"hx-{role}"
        ending = " \nCRITIQUE:" if role == "critic" else " \nREGENERATOR: REGENERATED ANSWER:"
        assert request["prompt"].startswith("SYSTEM: ") and request["prompt"].endswith(ending)

    # llama.cpp: a GGUF LoRA per role, every PEFT layer in it; one server line loads them all
    line = shlex.split((out / "gguf" / "serve.txt").read_text())
    assert line[:3] == ["llama-server", "-m", str(base_gguf)] and "--lora-init-without-apply" in line
    files = [line[i + 1] for i, w in enumerate(line) if w == "--lora"]
    assert files == [done.files["gguf"]["critic"], done.files["gguf"]["regenerator"]]
    for i, (role, source) in enumerate(roles.items()):
        reader = gguf.GGUFReader(files[i])
        assert str(reader.fields["general.type"].contents()) == "adapter"
        lora_a = {t.name for t in reader.tensors if t.name.endswith(".lora_a")}
        peft_a = [k for k in load_file(str(source / "adapter_model.safetensors")) if "lora_A" in k]
        assert len(lora_a) == len(peft_a) > 0
        request = json.loads((out / "gguf" / "requests" / f"{role}.json").read_text())
        assert request["lora"] == [{"id": i, "scale": 1.0}]  # this role's LoRA on, the other off

    with pytest.raises(HelixloomError, match="not empty"):
        export_helixnet(store, "hx", out, base=str(tiny_model.path), base_gguf=base_gguf)
    only = export_helixnet(store, "hx", tmp_path / "v", formats=("vllm",), base="org/base")
    assert set(only.files) == {"vllm"} and not (tmp_path / "v" / "gguf").exists()
    with pytest.raises(HelixloomError, match="no HelixNet set"):
        export_helixnet(store, "nope", tmp_path / "n", formats=("vllm",))


def test_export_helixnet_command(tiny_model: TinyModel, helixloom_home: Path, tmp_path: Path, capsys) -> None:
    from helixloom.cli import main

    with Store(helixloom_home / "helixloom.db") as store:
        roles = {"critic": tiny_model.adapters["alpha"], "regenerator": tiny_model.adapters["gamma"]}
        _register_set(store, "cli", roles)
    out = tmp_path / "out"
    assert main(["adapters", "export-helixnet", "cli", "--out", str(out), "--format", "vllm", "--json"]) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(done["files"]["vllm"]) == {"critic", "regenerator"}
    assert done["commands"]["vllm"].startswith(f"vllm serve {shlex.quote(str(tiny_model.path))} ")
    assert (out / "vllm" / "requests" / "regenerator.json").is_file()


@pytest.mark.default_model
def test_exported_gguf_loras_load_in_llama_cpp(
    gemma_loras: dict[str, Path], default_model_home: Path, tmp_path: Path
) -> None:
    if os.environ.get("HELIXLOOM_REQUIRE_LLAMACPP") != "1":
        pytest.importorskip("llama_cpp")
    from helixloom.engine import GenerationRequest, sampling
    from helixloom.engine.llamacpp import LlamaCppEngine

    old = os.environ["HELIXLOOM_HOME"]
    os.environ["HELIXLOOM_HOME"] = str(default_model_home)
    try:
        store = Store(tmp_path / "helixloom.db")
        _register_set(store, "g", {"critic": gemma_loras["rand"], "regenerator": gemma_loras["rand2"]})
        done = export_helixnet(store, "g", tmp_path / "out", formats=("gguf",))
        engine = LlamaCppEngine("llamacpp:default")
        prompt = "The capital of France is"

        def greedy(adapter: str | None) -> str:
            params = sampling(temperature=0, max_tokens=8)
            return engine.generate([GenerationRequest(prompt, params, adapter)])[0].text

        plain = greedy(None)
        for role, file in done.files["gguf"].items():
            engine.load_adapter(f"g-{role}", file)  # llama.cpp loads the exported file
            assert greedy(f"g-{role}") != plain  # the exported LoRA is applied
    finally:
        os.environ["HELIXLOOM_HOME"] = old
