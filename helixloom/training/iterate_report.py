"""The per-iteration table of an iterate run: as text (``format_table``), as a plot (``plot``) and as
the run's ``report.json`` + ``report.png`` (``write_report``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from helixloom import atomic
from helixloom.training.iterate_state import IterationRow, RunMeta


def write_report(root: Path, state: RunMeta, rows: Sequence[IterationRow]) -> Path:
    """``report.json`` (the table) and ``report.png`` (reward and win rate per iteration) in ``root``."""
    atomic.write_json(
        root / "report.json", {"name": state.name, "meta": state.summary(), "rows": [asdict(r) for r in rows]}
    )
    png = root / "report.png"
    if rows:
        plot(
            rows, png, title=f"helixloom iterate {state.name} ({state.config.method}, reward {state.reward})"
        )
    return png


def plot(rows: Sequence[IterationRow], out: Path, title: str = "") -> None:
    """Mean reward and win rate against the start, per iteration, as a PNG (headless), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [r.iteration for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(its, [r.mean_reward for r in rows], "o-", color="tab:blue", label="mean reward")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean reward", color="tab:blue")
    ax.set_xticks(its)
    ax2 = ax.twinx()
    ax2.plot(its, [r.win_rate for r in rows], "s--", color="tab:orange", label="win rate vs start (reward)")
    judged = [(r.iteration, r.judge_win_rate) for r in rows if r.judge_win_rate is not None]
    if judged:
        ax2.plot(
            [a for a, _ in judged],
            [b for _, b in judged],
            "^:",
            color="tab:green",
            label="win rate vs start (judge)",
        )
    ax2.set_ylabel("win rate vs start (%)", color="tab:orange")
    ax2.set_ylim(0, 100)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [str(h.get_label()) for h in lines], loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        atomic.write_with(out, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def format_table(rows: Sequence[IterationRow]) -> str:
    """The table as aligned text, one line per iteration."""
    names = [("iter", 4), ("mean reward", 11), ("win rate", 8), ("judge win", 9), ("judge cons.", 11)]
    names += [("length", 7), ("pairs", 5), ("loss", 7)]
    header = "  ".join(f"{n:>{w}}" for n, w in names)
    lines = [header]
    for r in rows:
        if r.judge_win_rate is not None:
            judge = f"{r.judge_win_rate:8.1f}%"
        else:  # withheld: the judge's verdicts followed the order more than the answers
            judge = f"{'withheld' if r.judge_consistency is not None else '-':>9}"
        cons = f"{r.judge_consistency:10.0f}%" if r.judge_consistency is not None else f"{'-':>11}"
        loss = f"{r.train_loss:7.4f}" if r.train_loss is not None else f"{'-':>7}"
        pairs = f"{r.pairs:5d}" if r.iteration else f"{'-':>5}"
        lines.append(
            f"{r.iteration:>4}  {r.mean_reward:11.4f}  {r.win_rate:7.1f}%  {judge}  {cons}  "
            f"{r.mean_length:7.1f}  {pairs}  {loss}"
        )
    return "\n".join(lines)
