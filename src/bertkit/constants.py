"""Constants shared across layers, defined once at the bottom so that data, model and tasks agree on them."""

# Label value for positions that carry no loss: PyTorch's cross_entropy skips it by default (ignore_index=-100).
IGNORE_INDEX = -100

# Defaults that a library function and the command line share (each CLI flag takes its default from here).
VOCAB_SIZE = 30522  # the original English uncased vocabulary's size
MIN_PAIR_FREQUENCY = 2  # WordPiece training: the rarest pair that may still be merged
INFERENCE_BATCH_SIZE = 64  # inputs per forward pass when embedding, evaluating or predicting
# Inputs encoded and answered at a time by `bertkit predict` and `bertkit embed`: enough to batch them by length,
# few enough that their encodings and activations take a bounded amount of memory, however large the input.
INFERENCE_CHUNK = 16384
TOP_K = 5  # fill-mask: candidates per [MASK]
POOLINGS = ("mean", "cls")  # how `embed` makes a sentence vector of the last layer: mean of tokens, or [CLS]
HOST, PORT = "127.0.0.1", 8000  # `bertkit serve`: this machine only, unless asked
ONNX_OPSET = 18
MIN_ONNX_OPSET = 17  # the first with LayerNormalization, which the exported encoder uses
QUANTIZATIONS = ("int8",)  # `bertkit export --quantize`: onnxruntime's dynamic quantization
