"""A uniform soup of LoRA fine-tunes: several adapters trained on the same data from different seeds,
averaged into one adapter (Wortsman et al., "Model soups", 2022: fine-tunes of one pretrained model
lie in one basin, so the mean of their weights is a model of its own, and usually a better one).

The mean is exact, not an approximation: every adapter's weight delta is ``scaling * B @ A``, and the
mean of N of them is one LoRA of rank ``N * r`` whose ``A`` stacks the members' ``A`` (each scaled by
``scaling / N``) and whose ``B`` sets their ``B`` side by side. PEFT builds exactly that
(``add_weighted_adapter(combination_type="cat")``), so the soup is served like any adapter of that
rank (by PEFT, vLLM, or llama.cpp after GGUF export); it costs one adapter's time to answer, at
twice the LoRA's small share of it for two members.

Why for ``learn`` (measured, benchmarks/learn.py, the default model, Dec 2026): one fine-tune's
recall of the documents moves by about 13 points of key facts between seeds; the soup of two seeds
keeps what both learned and loses what either got by chance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from helixloom import atomic
from helixloom.errors import HelixloomError


def average(base_spec: str, members: Sequence[Path], out_dir: Path) -> tuple[Any, Any]:
    """Write the exact mean of the LoRA adapters in ``members`` (PEFT folders, one base, one set of
    target modules) to ``out_dir``, atomically; returns the fp32 PEFT model holding it as its active
    adapter, and its tokenizer (to measure it without loading again). The mean is taken in fp32 on
    an fp32 base, whatever the members trained in: PEFT gives a new adapter its base's precision."""
    from helixloom.training.trainer import load_for_training

    if len(members) < 2:
        raise HelixloomError("a soup needs two adapters or more")
    for m in members:
        if not (Path(m) / "adapter_config.json").is_file():
            raise HelixloomError(f"{m} is not a PEFT adapter folder")
    model, tokenizer, _ = load_for_training(base_spec, Path(members[0]), bf16=False)
    names = ["default"]
    for i, m in enumerate(members[1:], 1):
        model.load_adapter(str(m), adapter_name=f"member{i}")
        names.append(f"member{i}")
    targets = {frozenset(model.peft_config[n].target_modules or ()) for n in names}
    if len(targets) > 1:
        raise HelixloomError("the adapters of a soup must adapt the same modules")
    model.add_weighted_adapter(names, [1.0 / len(names)] * len(names), "soup", combination_type="cat")
    model.set_adapter("soup")
    for n in names:
        model.delete_adapter(n)
    with atomic.staged_dir(out_dir) as tmp:
        # a PEFT folder holds a non-default adapter in a subfolder of its name: save, then lift it
        model.save_pretrained(str(tmp), selected_adapters=["soup"])
        inner = Path(tmp) / "soup"
        if inner.is_dir():
            for f in inner.iterdir():
                f.rename(Path(tmp) / f.name)
            inner.rmdir()
        tokenizer.save_pretrained(str(tmp))
    model.eval()
    return model, tokenizer
