"""An ONNX file from `bertkit export`, run by onnxruntime where bertkit runs a PyTorch model.

`OnnxModel(path)` is called like bertkit's models, `model(input_ids, token_type_ids, attention_mask)`, and answers
with torch tensors under the PyTorch models' names (`logits`, `last_hidden_state`, `pooler_output`, `mlm_logits`,
`nsp_logits`) as well as the export's own (`start_logits`, `prediction_logits`, ...). It has what
`bertkit.tasks.base.run_model`, `bertkit.infer.embed` and `bertkit.infer.fill_mask` ask of a model (`parameters()`
for the device, `eval()`, `train(False)`, `training`, `config`), so the tasks' `predict` and `evaluate`, `embed`
and `fill_mask` run on it unchanged. `open_onnx_model_dir` opens a model directory with its export as the model.

Values at padding positions are don't-cares: the PyTorch model leaves them zero, the graph computes them; every
bertkit consumer reads real tokens only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import torch

from bertkit.checkpoint import model_fingerprint
from bertkit.config import BertConfig
from bertkit.errors import BertkitError
from bertkit.files import no_such_path
from bertkit.tasks.model_dir import ModelDir, fine_tuned_task, open_model_dir
from bertkit.tasks.registry import TASKS

if TYPE_CHECKING:  # onnxruntime is imported where a graph is run: `serve --backend onnx` and `export` need it
    import onnxruntime as ort

INPUTS = ("input_ids", "token_type_ids", "attention_mask")
# The export's metadata key for `bertkit.checkpoint.model_fingerprint` of the directory it was exported from.
FINGERPRINT_KEY = "bertkit_model_sha256"
PRECISION_KEY = "bertkit_precision"  # fp32, or int8 (`bertkit export --quantize int8`)
# The export's output names -> the PyTorch models' attribute names, where they differ.
TORCH_NAMES = {"prediction_logits": "mlm_logits", "seq_relationship_logits": "nsp_logits"}


@dataclasses.dataclass
class OnnxOutput:
    """What an exported graph computed, as float32 torch tensors on the CPU (None: the graph has no such output).

    `logits` is a task model's output as the PyTorch task model gives it: (B, C), (B, T, C), or QA's start and end
    stacked in the last dimension, (B, T, 2)."""

    logits: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None
    nsp_logits: torch.Tensor | None = None

    @property
    def prediction_logits(self) -> torch.Tensor | None:
        """The export's name for `mlm_logits`."""
        return self.mlm_logits

    @property
    def seq_relationship_logits(self) -> torch.Tensor | None:
        """The export's name for `nsp_logits`."""
        return self.nsp_logits


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """onnxruntime session options: `threads` intra-op threads (None: onnxruntime's choice, one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise BertkitError(f"threads is {threads}: expected a positive number of intra-op threads")
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def open_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session of the ONNX file `path`; a missing or unreadable file is a BertkitError."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BertkitError("running an ONNX model needs onnxruntime: pip install 'bertkit[export]'") from None
    path = Path(path)
    if not path.is_file():
        raise BertkitError(no_such_path(path))
    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a file that is not a model
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BertkitError(f"{path}: onnxruntime cannot load it as a model ({first}); export it again") from None


class OnnxModel:
    """An exported bertkit model run by onnxruntime on the CPU, called like the PyTorch model it was exported from.

    `config` (the model directory's BertConfig) is what `embed` reads the hidden size from; without it, a config
    holding only `hidden_size` is made from the graph's output shape when the graph says it."""

    training = False  # inference only: train(True) is refused
    # A NER model's CRF (PyTorch, on the CPU) when the directory has one: the graph gives the emission scores, and
    # the task decodes them with the CRF as it does the PyTorch model's.
    crf: torch.nn.Module | None = None

    def __init__(self, path: str | Path, threads: int | None = None, config: BertConfig | None = None):
        self.path = Path(path)
        self.threads = threads
        self.session = open_session(self.path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.task_name: str = meta.get("bertkit_task", "")
        self.fingerprint: str | None = meta.get(FINGERPRINT_KEY)  # None: exported by a bertkit that did not record it
        self.precision: str = meta.get(PRECISION_KEY, "not recorded in the file")
        self.id2label: dict[int, str] = {int(k): v for k, v in json.loads(meta.get("id2label", "{}")).items()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(INPUTS):
            raise BertkitError(
                f"{self.path}: the graph takes {', '.join(names)}, not {', '.join(INPUTS)}: it was not written by "
                "bertkit export; export the model directory with it"
            )
        self.config: BertConfig | SimpleNamespace | None = config or self._config_from_graph()
        self._device_marker = torch.empty(0)  # what `next(model.parameters()).device` reads: the CPU

    def _config_from_graph(self) -> SimpleNamespace | None:
        size = self.output_size("last_hidden_state")
        return SimpleNamespace(hidden_size=size) if size else None

    def output_size(self, name: str) -> int | None:
        """The last dimension of output `name` as the graph states it (None when symbolic or absent)."""
        for o in self.session.get_outputs():
            if o.name == name:
                return o.shape[-1] if isinstance(o.shape[-1], int) else None
        return None

    def parameters(self) -> Iterator[torch.Tensor]:
        """One empty CPU tensor: callers read the model's device from its first parameter."""
        return iter([self._device_marker])

    def eval(self) -> OnnxModel:
        """Inference is all an ONNX graph does: nothing to switch."""
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        """Refuse training mode (an exported graph has no dropout and no gradients); `train(False)` is `eval()`."""
        if mode:
            raise BertkitError(f"{self.path} is an exported model: it predicts, it cannot be trained")
        return self

    def to(self, device: str | torch.device) -> OnnxModel:
        """The CPU is the only device: anything else is an error."""
        if torch.device(device).type != "cpu":
            raise BertkitError(f"the ONNX backend runs on the CPU, not {device}")
        return self

    def __call__(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **unused,
    ) -> OnnxOutput:
        """Run the graph on a padded batch (B, T) of int64 ids; missing segments are 0 and a missing mask all 1."""
        ids = _int64(input_ids)
        feeds = {
            "input_ids": ids,
            "token_type_ids": np.zeros_like(ids) if token_type_ids is None else _int64(token_type_ids),
            "attention_mask": np.ones_like(ids) if attention_mask is None else _int64(attention_mask),
        }
        got = dict(zip(self.output_names, self.session.run(None, feeds), strict=True))
        tensors = {TORCH_NAMES.get(k, k): torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in got.items()}
        task = TASKS.get(self.task_name)
        if task is not None and len(task.onnx_outputs) > 1:  # one head's outputs (QA's start and end) exported apart:
            tensors["logits"] = torch.stack([tensors[n] for n in task.onnx_outputs], dim=-1)  # as the model stacks them
        return OnnxOutput(**tensors)


def _fresh_name(model_dir: str | Path, beside: str | Path) -> Path:
    """A file name for a new export of `model_dir`, beside `beside` (another model's export, kept)."""
    return Path(beside).with_name(f"{Path(model_dir).resolve().name}.onnx")


def _int64(t: torch.Tensor | np.ndarray) -> np.ndarray:
    array = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return np.ascontiguousarray(array, dtype=np.int64)


def check_onnx_device(device: str | None) -> None:
    """Refuse a `--device` other than the CPU for an ONNX file (onnxruntime runs it on the CPU here), before anything
    is loaded."""
    if device not in (None, "cpu"):
        raise BertkitError(f"an ONNX model runs on the CPU; --device {device} is for the PyTorch model")


def open_onnx_model_dir(
    model_dir: str | Path,
    onnx_file: str | Path,
    threads: int | None = None,
    device: str | None = None,
    *,
    task: str | None = None,
) -> ModelDir:
    """`model_dir` opened as `bertkit.tasks.model_dir.open_model_dir` opens it (tokenizer, task, labels, config),
    with `onnx_file` (its `bertkit export`, fp32 or int8) as the model: `task_model.model` for a fine-tuned
    directory, `mlm` for a pre-trained one, `encoder` for an encoder. The encoder of a task or pre-trained
    directory stays the PyTorch one (its export has no hidden-state output), on the CPU.

    A file exported from another kind of model, or with other labels or output sizes, is a BertkitError naming
    both paths: its answers would be silently wrong. `device` other than the CPU is refused (`check_onnx_device`)."""
    check_onnx_device(device)
    opened = open_model_dir(model_dir, "cpu", task=task)
    onnx = OnnxModel(onnx_file, threads, opened.config)
    expected = (
        fine_tuned_task(model_dir) or ""  # the task it was exported as, whatever `task` reads it as now
        if opened.task_model
        else {"pretrained": "pretraining|mlm"}.get(opened.kind, opened.kind)
    )
    if onnx.task_name not in expected.split("|"):
        raise BertkitError(
            f"{onnx.path} was exported from a {onnx.task_name or 'non-bertkit'} model, but {model_dir} is a "
            f"{expected.replace('|', ' or ')} model: export this one to a file of its own (bertkit export --model "
            f"{model_dir} --out {_fresh_name(model_dir, onnx.path)})"
        )
    want_sizes = {
        "logits": len(opened.task_model.id2label) if opened.task_model and opened.task_model.id2label else None,
        "prediction_logits": opened.config.vocab_size,
        "last_hidden_state": opened.config.hidden_size,
    }
    for name, want in want_sizes.items():
        got = onnx.output_size(name)
        if want is not None and got is not None and got != want:
            raise BertkitError(
                f"{onnx.path}: output {name} has size {got}, but the model in {model_dir} has {want}: it was "
                f"exported from another model; export {model_dir} again"
            )
    if onnx.fingerprint is not None and onnx.fingerprint != model_fingerprint(opened.path):
        raise BertkitError(
            f"{onnx.path} was exported from other weights than {model_dir} holds now (another model, or this one "
            f"trained again since): its answers would not be this model's; export it again (bertkit export --model "
            f"{model_dir} --out {_fresh_name(model_dir, onnx.path)})"
        )
    if opened.task_model is not None:
        if onnx.id2label != opened.task_model.id2label:
            raise BertkitError(
                f"{onnx.path}: its labels {onnx.id2label} differ from {model_dir}'s {opened.task_model.id2label}: "
                f"it was exported from another model; export {model_dir} again"
            )
        onnx.crf = getattr(opened.task_model.model, "crf", None)
        return dataclasses.replace(opened, task_model=dataclasses.replace(opened.task_model, model=onnx))
    if opened.mlm is not None:
        return dataclasses.replace(opened, mlm=onnx)
    return dataclasses.replace(opened, encoder=onnx)
