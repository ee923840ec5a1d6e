"""Cross-attention control: capture processors installed per job, and heat maps from what they record."""
