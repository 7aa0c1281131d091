"""The padding routines, under the name the task batches import them by; they live in `bertkit.tokenizer`, beside
`Tokenizer.pad`, so that the tokenizer imports nothing from `bertkit.data`."""

from bertkit.tokenizer import encoder_inputs, pad_rows

__all__ = ["encoder_inputs", "pad_rows"]
