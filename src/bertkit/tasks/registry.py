"""The task families by the name the CLI and `bertkit_task.json` use."""

from __future__ import annotations

from bertkit.errors import BertkitError
from bertkit.tasks.base import Task
from bertkit.tasks.classify import ClassificationTask, PairClassificationTask, RegressionTask
from bertkit.tasks.multilabel import MultiLabelTask
from bertkit.tasks.ner import NerTask
from bertkit.tasks.qa import QaTask
from bertkit.tasks.settings import TASK_NAMES

TASKS: dict[str, type[Task]] = {
    t.name: t for t in (ClassificationTask, PairClassificationTask, RegressionTask, MultiLabelTask, NerTask, QaTask)
}
if tuple(TASKS) != TASK_NAMES:  # the CLI offers TASK_NAMES without importing the families (and torch)
    raise ImportError(f"bertkit.tasks.settings.TASK_NAMES {TASK_NAMES} does not list the families {tuple(TASKS)}")


def task_class(name: str) -> type[Task]:
    """The task family called `name`; a BertkitError listing the families for any other name."""
    if name not in TASKS:
        raise BertkitError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def task_for_architecture(architecture: str, num_labels: int | None, problem_type: str | None) -> str | None:
    """The task a Hugging Face task model was trained for, from its config (None for any other architecture): the
    first family with that architecture, except that one output (or problem_type "regression") is a regression and
    problem_type "multi_label_classification" a multi-label classifier, as in transformers. Without id2label,
    transformers' default is two labels: a classifier."""
    name = next((t.name for t in TASKS.values() if t.model_class.hf_architecture == architecture), None)
    if name == ClassificationTask.name and (problem_type == "regression" or num_labels == 1):
        return RegressionTask.name
    if name == ClassificationTask.name and problem_type == MultiLabelTask.problem_type:
        return MultiLabelTask.name
    return name
