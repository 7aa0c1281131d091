"""Constants shared across layers, defined once at the bottom so that data, model and tasks agree on them."""

# Label value for positions that carry no loss: PyTorch's cross_entropy skips it by default (ignore_index=-100).
IGNORE_INDEX = -100
