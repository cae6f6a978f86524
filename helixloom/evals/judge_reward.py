"""A pairwise judge as a reward: the K responses to a prompt play a round-robin tournament.

Every pair is judged in both orders (win 1, tie 0.5), as RLHFlow's pairwise preference model; the
scores are win counts, comparable within a prompt only.
"""

from __future__ import annotations

from collections.abc import Sequence

from helixloom.errors import HelixloomError
from helixloom.evals.pairwise import PairwiseJudge
from helixloom.rewards import Reward


class JudgeReward(Reward):
    """A pairwise judge as a reward: a round-robin tournament among the responses to one prompt.

    Every pair is judged in both orders; a win scores 1 and a tie (or an unreadable verdict) 0.5 for
    each side, so a response's score is its number of wins among K − 1 games. With ``soft=True`` each
    game adds the soft preference instead (P(i better) to i, the rest to j).

    ``score(prompts, responses)`` has no meaning for one response alone: a pairwise judge needs
    something to compare with. It groups the pairs by identical prompt and runs a tournament in each
    group, so its scores are comparable within a prompt only; a prompt with a single response is an
    error rather than an invented number (use a pointwise reward, or ``score_group``).
    """

    def __init__(self, judge: PairwiseJudge, *, soft: bool = False) -> None:
        self.judge = judge
        self.soft = soft
        self.name = "judge"

    def score_group(self, prompt: str, responses: Sequence[str]) -> list[float]:
        return self._tournaments([(prompt, list(responses))])[0]

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise HelixloomError(f"{len(prompts)} prompts but {len(responses)} responses")
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)
        lonely = [p for p, idx in groups.items() if len(idx) < 2]
        if lonely:
            raise HelixloomError(
                f"a pairwise judge compares responses to the same prompt, but {len(lonely)} prompt(s) "
                f"have a single response (e.g. {lonely[0][:60]!r})",
                "score groups of responses (score_group), or use a pointwise reward such as evaluator",
            )
        scores = self._tournaments([(p, [responses[i] for i in idx]) for p, idx in groups.items()])
        out = [0.0] * len(prompts)
        for idx, group_scores in zip(groups.values(), scores, strict=True):
            for i, s in zip(idx, group_scores, strict=True):
                out[i] = s
        return out

    def _tournaments(self, groups: Sequence[tuple[str, list[str]]]) -> list[list[float]]:
        """Every pair of every group in one ``compare`` call (two engine calls in all)."""
        games: list[tuple[int, int, int]] = []
        prompts: list[str] = []
        a: list[str] = []
        b: list[str] = []
        for g, (prompt, responses) in enumerate(groups):
            for i in range(len(responses)):
                for j in range(i + 1, len(responses)):
                    games.append((g, i, j))
                    prompts.append(prompt)
                    a.append(responses[i])
                    b.append(responses[j])
        scores = [[0.0] * len(responses) for _, responses in groups]
        for (g, i, j), verdict in zip(games, self.judge.compare(prompts, a, b), strict=True):
            if self.soft:
                p = 0.5 if verdict.preference is None else verdict.preference
            else:
                p = 0.5 if verdict.score is None else verdict.score
            scores[g][i] += p
            scores[g][j] += 1.0 - p
        return scores
