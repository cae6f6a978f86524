"""The report stored with every document adapter, as a table for people (free of torch: the CLI's
``adapters show`` prints it without loading a model)."""

from __future__ import annotations

import json
from typing import Any


def format_report(report: dict[str, Any]) -> str:
    """The report as a table for people (``helixloom adapters show`` prints it)."""

    def pct(v: Any) -> str:
        return f"{100 * v:.0f}%" if isinstance(v, int | float) else "-"

    lines = [
        f"{'':<34}{'base':>8}{'adapter':>9}",
        f"{'held-out generated questions':<34}{pct(report.get('heldout_accuracy_before')):>8}"
        f"{pct(report.get('heldout_accuracy_after')):>9}   ({report.get('heldout_questions', 0)} questions)",
        f"{'citation accuracy':<34}{pct(report.get('citation_accuracy_before')):>8}"
        f"{pct(report.get('citation_accuracy_after')):>9}",
        f"{'general-text perplexity':<34}{_num(report.get('perplexity_general_base')):>8}"
        f"{_num(report.get('perplexity_general_adapter')):>9}"
        f"   (forgetting ratio {report.get('forgetting_ratio')})",
        (
            f"the mean of {len(report['soup'])} fine-tunes"
            if report.get("soup")
            else f"best epoch {report.get('best_epoch')}"
            + (f" (stopped early: {report['stopped_early_for']})" if report.get("stopped_early_for") else "")
        )
        + f", {report.get('steps')} steps, "
        f"{report.get('tokens_per_second')} tokens/s"
        + (f", {report['precision']}" if report.get("precision") else ""),
        *_epochs(report.get("epochs") or []),
        *_members(report.get("soup") or []),
        f"teacher {report.get('teacher', '-')}, "
        f"suite questions per prompt {report.get('suite_questions', '-')}",
        f"pairs kept: {json.dumps(report.get('pairs_kept', {}))}",
        f"pairs dropped (not grounded): {json.dumps(report.get('pairs_dropped', {}))}",
        f"rows: {json.dumps(report.get('rows', {}))}"
        + (
            f" ({report['repeated_for_balance']} question rows of rarely asked facts repeated)"
            if report.get("repeated_for_balance")
            else ""
        ),
        f"seconds: {json.dumps(report.get('seconds', {}))}",
    ]
    return "\n".join(lines)


def _epochs(epochs: list[dict[str, Any]]) -> list[str]:
    """One line: held-out accuracy and forgetting after every epoch (what the kept epoch traded)."""
    if not epochs:
        return []
    cells = [
        f"{e.get('epoch')}: {100 * e.get('accuracy', 0):.0f}%"
        + (f" x{e['forgetting_ratio']}" if e.get("forgetting_ratio") else "")
        for e in epochs
    ]
    return ["per epoch (held-out accuracy, forgetting): " + ", ".join(cells)]


def _members(members: list[dict[str, Any]]) -> list[str]:
    """A line per fine-tune of a soup: its seed, what it scored alone, the epoch it kept."""
    return [
        f"  seed {m.get('seed')}: held-out {100 * (m.get('heldout_accuracy_after') or 0):.0f}%, "
        f"citations {100 * (m.get('citation_accuracy_after') or 0):.0f}%, "
        f"forgetting x{m.get('forgetting_ratio')}, best epoch {m.get('best_epoch')}, {m.get('steps')} steps"
        for m in members
    ]


def _num(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, int | float) else "-"
