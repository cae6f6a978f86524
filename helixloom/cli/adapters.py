"""``helixloom models`` and ``helixloom adapters list|show|add|extract|export-gguf|export-helixnet|
remove``: the models that can be used and the registered LoRA adapters."""

from __future__ import annotations

import argparse
import json
import sys

from helixloom.errors import HelixloomError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``models`` and ``adapters`` commands."""
    from helixloom.cli.common import usage

    models = sub.add_parser(
        "models", help="list the models that can be used", description="List model specs."
    )
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(run=cmd_models)

    adapters = sub.add_parser(
        "adapters", help="manage registered LoRA adapters", description="Manage adapters."
    )
    asub = adapters.add_subparsers(title="actions", metavar="ACTION")
    alist = asub.add_parser("list", help="list registered adapters")
    alist.add_argument("--json", action="store_true", help="print JSON")
    alist.set_defaults(run=cmd_adapters_list)
    aadd = asub.add_parser(
        "add",
        help="register a PEFT LoRA folder under a name",
        description="Register a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) "
        "under NAME, so --adapter NAME and the server's model NAME use it.",
    )
    aadd.add_argument("name", help="the name to use it by")
    aadd.add_argument("path", help="the PEFT adapter folder")
    aadd.add_argument("--replace", action="store_true", help="replace an adapter already registered as NAME")
    aadd.set_defaults(run=cmd_adapters_add)
    aext = asub.add_parser(
        "extract",
        help="make a LoRA adapter from a full fine-tune (truncated SVD of the weight deltas)",
        description="Extract a LoRA adapter from a fully fine-tuned model: for every linear layer but the "
        "output head, the best rank-r approximation (truncated SVD) of W_tuned - W_base, written as a "
        "standard PEFT adapter whose applied update (alpha/r)*B*A equals that approximation. This is how "
        "HelixNet-LMoE made its three role adapters (rank 64, alpha 128).",
    )
    aext.add_argument(
        "--base", required=True, metavar="SPEC", help="the base model the fine-tune started from"
    )
    aext.add_argument("--tuned", required=True, metavar="SPEC", help="the fully fine-tuned model")
    aext.add_argument("--rank", type=int, default=64, help="LoRA rank r (default 64)")
    aext.add_argument("--alpha", type=float, default=128.0, help="LoRA alpha (default 128)")
    aext.add_argument("--out", required=True, help="the adapter folder to write")
    aext.add_argument("--name", help="also register the adapter under this name")
    aext.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    aext.set_defaults(run=cmd_adapters_extract)
    aexp = asub.add_parser(
        "export-gguf",
        help="convert a PEFT LoRA to a GGUF LoRA for llama.cpp",
        description="Write a registered adapter (or a PEFT folder) as a GGUF LoRA that llama.cpp (the "
        "llamacpp backend, llama-server --lora) applies to the base model's GGUF file. By default the file "
        "is written into the adapter folder as adapter_model.gguf, stamped with the adapter's content "
        "version: the llamacpp backend uses it until the adapter changes (without it, the backend "
        "exports one itself on first use).",
    )
    aexp.add_argument("name", metavar="NAME_OR_PATH", help="registered adapter name or PEFT folder")
    aexp.add_argument(
        "--base",
        default="default",
        metavar="SPEC",
        help="the base model: default, or the .gguf file llama.cpp loads",
    )
    aexp.add_argument("--out", help="the .gguf file to write (default: NAME's folder/adapter_model.gguf)")
    aexp.set_defaults(run=cmd_adapters_export_gguf)
    ahx = asub.add_parser(
        "export-helixnet",
        help="export a HelixNet-LMoE set (its role LoRAs) for vLLM and/or llama.cpp",
        description="Write the HelixNet set NAME (made by `helixloom train helixnet`) into --out as other "
        "servers use it: for vLLM, each role's PEFT adapter with the `vllm serve ... --lora-modules "
        "name=path` line and an example request per role; for llama.cpp, each role's GGUF LoRA with the "
        "`llama-server --lora ...` line and an example request per role (its per-request `lora` field). "
        "helixnet.json lists it all.",
    )
    ahx.add_argument("name", metavar="NAME", help="the HelixNet set's name")
    ahx.add_argument("--out", required=True, metavar="DIR", help="the folder to write (empty or absent)")
    ahx.add_argument(
        "--format", choices=("vllm", "gguf", "both"), default="both", help="what to write (default both)"
    )
    ahx.add_argument(
        "--base",
        metavar="SPEC",
        help="the base model as vLLM names it (default: the adapters' base_model_name_or_path)",
    )
    ahx.add_argument(
        "--base-gguf",
        metavar="FILE",
        help="the base model's .gguf file llama.cpp loads (default: the GGUF the set's base came from)",
    )
    ahx.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    ahx.add_argument("--json", action="store_true", help="print what was written as JSON")
    ahx.set_defaults(run=cmd_adapters_export_helixnet)
    ashow = asub.add_parser(
        "show",
        help="show an adapter: its record, and the report learn stored with it",
        description="Show a registered adapter's record and, for one made by `helixloom learn`, its report: "
        "held-out accuracy on generated questions and citation accuracy (base and adapter), the "
        "forgetting ratio (general-text perplexity, adapter over base), pairs kept and dropped by reason, "
        "and the time of each phase.",
    )
    ashow.add_argument("name", metavar="NAME")
    ashow.add_argument("--json", action="store_true", help="print JSON")
    ashow.set_defaults(run=cmd_adapters_show)
    arm = asub.add_parser("remove", help="forget a registered adapter (its folder is left alone)")
    arm.add_argument("name")
    arm.set_defaults(run=cmd_adapters_remove)
    adapters.set_defaults(run=lambda _: usage(adapters))


def cmd_models(args: argparse.Namespace) -> int:
    from helixloom import models
    from helixloom.paths import home

    rows = [
        {
            "spec": models.DEFAULT_SPEC,
            "name": models.DEFAULT_NAME,
            "status": "ready" if models.is_cached(models.resolve("default")) else "converted on first use",
        }
    ]
    for name, folder in models.cached_models():
        if name != models.DEFAULT_NAME:
            rows.append({"spec": str(folder), "name": name, "status": "ready"})
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        print(f"{row['spec']:<40} {row['name']:<28} {row['status']}")
    print(f"\nAlso: any local Hugging Face folder, a .gguf file, or org/name. State: {home()}")
    return 0


def cmd_adapters_list(args: argparse.Namespace) -> int:
    from helixloom.cli.common import open_store

    with open_store() as store:
        records = store.list_adapters()
    if args.json:
        print(
            json.dumps(
                [
                    {"name": r.name, "path": str(r.path), "base_model": r.base_model, **(r.meta or {})}
                    for r in records
                ]
            )
        )
        return 0
    if not records:
        print("no adapters registered (add one with `helixloom adapters add NAME PATH`)")
    for r in records:
        print(f"{r.name:<24} rank={(r.meta or {}).get('rank')!s:<4} base={r.base_model}  {r.path}")
    return 0


def cmd_adapters_show(args: argparse.Namespace) -> int:
    from helixloom.cli.common import open_store

    with open_store() as store:
        record = store.get_adapter(args.name)
    if record is None:
        raise HelixloomError(f"no adapter named {args.name}", "see `helixloom adapters list`")
    meta = dict(record.meta or {})
    if args.json:
        print(
            json.dumps(
                {"name": record.name, "path": str(record.path), "base_model": record.base_model, **meta}
            )
        )
        return 0
    print(f"{record.name}  base={record.base_model}  rank={meta.get('rank')}  {record.path}")
    if meta.get("documents"):
        for doc_id, doc in meta["documents"].items():
            print(f"  [DOC_ID:{doc_id}] {doc.get('title')}  ({doc.get('source')})")
    report = meta.get("report")
    if isinstance(report, dict):
        from helixloom.training.learn_report import format_report

        print(format_report(report))
    return 0


def cmd_adapters_add(args: argparse.Namespace) -> int:
    from helixloom import adapters
    from helixloom.cli.common import open_store

    with open_store() as store:
        record = adapters.register(store, args.name, args.path, replace=args.replace)
    print(f"registered adapter {record.name} -> {record.path}")
    return 0


def cmd_adapters_extract(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from helixloom import adapters, models
    from helixloom.cli.common import open_store
    from helixloom.training.extract import ExtractConfig, extract_lora

    config = ExtractConfig(rank=args.rank, alpha=args.alpha)
    models.resolve(args.base)
    models.resolve(args.tuned)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise HelixloomError(f"{out} exists and is not empty", "pick a new --out, or pass --overwrite")
    bar = tqdm(total=0, unit="layer", desc="extracting", file=sys.stderr)

    def progress(i: int, total: int, name: str) -> None:
        bar.total = total
        bar.set_postfix_str(name[-40:])
        bar.update(1)

    report = extract_lora(args.base, args.tuned, out, config, overwrite=args.overwrite, on_layer=progress)
    bar.close()
    for layer in report.layers:
        print(f"{layer.module:<60} relative error {layer.relative_error:.4f}")
    print(
        f"wrote {report.out}: {len(report.layers)} layers at rank {report.rank}, alpha {report.alpha:g}; "
        f"worst relative error {report.max_relative_error:.4f}"
    )
    for label, names in (
        ("unchanged linear layers (no LoRA needed)", report.skipped_unchanged),
        ("changed biases a LoRA cannot carry", report.bias_changed),
        ("changed non-linear weights a LoRA cannot carry", report.other_changed),
    ):
        if names:
            print(f"{label}: {len(names)} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    if args.name:
        with open_store() as store:
            adapters.register(store, args.name, out, replace=True)
        print(f"registered as {args.name}")
    return 0


def cmd_adapters_export_gguf(args: argparse.Namespace) -> int:
    from pathlib import Path

    from helixloom import adapters, gguf_lora
    from helixloom.cli.common import open_store
    from helixloom.engine.llamacpp import GGUF_ADAPTER_FILE

    with open_store() as store:
        _, folder = adapters.resolve(store, args.name)
    base = gguf_lora.base_gguf_for(args.base)
    out = Path(args.out) if args.out else folder / GGUF_ADAPTER_FILE
    if out.suffix != ".gguf":
        raise HelixloomError(f"--out {out} must end in .gguf")
    from helixloom.engine.lora_folder import adapter_version

    # Stamped with the folder's content version: the llamacpp backend uses it until a retrain.
    done = gguf_lora.export(folder, base, out, version=adapter_version(folder))
    print(
        f"wrote {done.out}: {done.tensors} LoRA layers, rank {done.rank}, alpha {done.alpha:g} ({done.arch})"
    )
    return 0


def cmd_adapters_remove(args: argparse.Namespace) -> int:
    from helixloom.cli.common import open_store

    with open_store() as store:
        if not store.remove_adapter(args.name):
            raise HelixloomError(f"no adapter named {args.name!r}", "see `helixloom adapters list`")
    print(f"removed adapter {args.name}")
    return 0


def cmd_adapters_export_helixnet(args: argparse.Namespace) -> int:
    from pathlib import Path

    from helixloom.cli.common import open_store
    from helixloom.helixnet.export import FORMATS, export_helixnet

    formats = FORMATS if args.format == "both" else (args.format,)
    with open_store() as store:
        done = export_helixnet(
            store,
            args.name,
            Path(args.out),
            formats=formats,
            base=args.base,
            base_gguf=Path(args.base_gguf) if args.base_gguf else None,
            overwrite=args.overwrite,
        )
    if args.json:
        print(json.dumps(done.as_dict()))
        return 0
    print(f"wrote HelixNet set {done.name} to {done.out} (manifest: helixnet.json)")
    for fmt, line in done.commands.items():
        print(f"{fmt}: {line}")
    return 0
