"""Training recipes: sft, dpo, reward, iterate, selfinstruct, extract (only ``extract`` so far)."""
