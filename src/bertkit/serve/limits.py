"""The serving defaults that `bertkit serve`'s flags and the library share (a light module: the CLI's parser reads
it without importing the server)."""

from __future__ import annotations

from dataclasses import dataclass

from bertkit.constants import HOST, PORT
from bertkit.options import NON_NEGATIVE_NUMBER, PORT_NUMBER, POSITIVE, check_values, option, web_origin

MAX_INPUTS = 256  # per request: larger batches belong to `bertkit predict` / `bertkit embed` on files
MAX_WINDOWS = 16  # per input of a NER or QA model: windows of max_seq_length tokens over a long text
MAX_BATCH_TOKENS = 8192  # tokens of all the inputs in one model batch
MAX_WAIT_MS = 2.0  # how long the oldest waiting request waits for others to share its batch
MAX_BODY_BYTES = 4 * 1024 * 1024  # a request body
MAX_TOP_K = 100  # fill-mask candidates per [MASK]
BACKENDS = ("torch", "onnx")  # `--backend`: what runs the model (see `bertkit.serve.server.open_service`)
PRECISIONS = ("fp32", "bf16")  # `--precision`: what the PyTorch backend computes large batches in


@dataclass
class ServeConfig:
    """How `bertkit serve` serves a model directory; its flags are generated from these fields (`add_options`)."""

    host: str = option(HOST, help="address to listen on (default %(default)s: this machine only)")
    port: int = option(PORT, type=PORT_NUMBER, help="0 to 65535 (default %(default)s; 0 picks a free port)")
    backend: str = option(
        "torch",
        choices=BACKENDS,
        help="what runs the model: torch (default), or onnx: onnxruntime over --onnx FILE on the CPU",
    )
    onnx: str | None = option(
        None,
        metavar="FILE",
        help="--backend onnx: the model's `bertkit export` file (fp32, or int8 from --quantize int8)",
    )
    batching: str = option(
        "on", choices=("on", "off"),
        help="batch concurrent requests into one model call (default %(default)s; off: one at a time)",
    )  # fmt: skip
    max_batch_tokens: int = option(
        MAX_BATCH_TOKENS, type=POSITIVE, help="tokens of all inputs in one model batch (default %(default)s)"
    )
    max_wait_ms: float = option(
        MAX_WAIT_MS, type=NON_NEGATIVE_NUMBER,
        help="how long a request waits for others to share its batch (default %(default)s)",
    )  # fmt: skip
    max_windows: int = option(
        MAX_WINDOWS, type=POSITIVE,
        help="NER/QA: windows per input over a long text; more answers 413 (default %(default)s)",
    )  # fmt: skip
    precision: str = option(
        "fp32", choices=PRECISIONS,
        help="torch backend: bf16 runs large batches in bfloat16 on a CPU with AVX512-BF16 or AMX (or a GPU with "
             "bf16), faster under load; their answers then differ from fp32 by bf16 rounding; /api/info says from "
             "which batch size (default %(default)s)",
    )  # fmt: skip
    workers: int = option(1, type=POSITIVE, help="server processes, each with the model (default %(default)s)")
    threads: int | None = option(
        None, type=POSITIVE,
        help="most intra-op threads per process (default: torch's, one per core); the PyTorch backend runs on fewer "
             "while other work takes cores (other processes, or the HTTP side reading large requests): /metrics' "
             "bertkit_model_threads says how many",
    )  # fmt: skip
    cors: str | None = option(
        None, type=web_origin, metavar="ORIGIN",
        help="allow cross-origin requests from this one origin, e.g. https://example.org (default: none)",
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_values(self)
