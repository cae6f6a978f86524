"""Evaluations: how well a model or adapter answers (key-fact QA so far; judges and win rates next)."""
