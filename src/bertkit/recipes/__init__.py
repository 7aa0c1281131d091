"""End-to-end recipes: short scripts over the library blocks (pre-training, fine-tuning, the quickstart)."""
