"""Evaluations: how well a model or adapter answers.

``keyfacts`` (key-fact QA before and after a fine-tune); LLM judges: ``templates`` (judge prompts),
``pairwise`` (verdicts in both orders), ``winrate`` (win rate, length-controlled), ``grade`` (1–10
grading), ``judge_reward`` (a judge as a Reward), ``replay`` (rated sessions asked again); ``prompts``
(prompt files, answering in batches) serves them all.
"""
