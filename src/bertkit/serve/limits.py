"""The serving defaults that `bertkit serve`'s flags and the library share (a light module: the CLI's parser reads
it without importing the server)."""

MAX_INPUTS = 256  # per request: larger batches belong to `bertkit predict` / `bertkit embed` on files
MAX_WINDOWS = 16  # per input of a NER or QA model: windows of max_seq_length tokens over a long text
MAX_BATCH_TOKENS = 8192  # tokens of all the inputs in one model batch
MAX_WAIT_MS = 2.0  # how long the oldest waiting request waits for others to share its batch
MAX_BODY_BYTES = 4 * 1024 * 1024  # a request body
BACKENDS = ("torch", "onnx")  # `--backend`: what runs the model (see `bertkit.serve.server.open_service`)
PRECISIONS = ("fp32", "bf16")  # `--precision`: what the PyTorch backend computes large batches in
