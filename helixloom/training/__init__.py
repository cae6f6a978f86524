"""Training recipes: sft, dpo, reward, iterate, selfinstruct, extract."""
