"""The task families bertkit fine-tunes (classification, pair classification, regression, NER, extractive QA).

Each family is one `Task` subclass (bertkit.tasks.base) holding all of its facts: model class, metric, input schema,
defaults. `bertkit.tasks.registry` finds a family by name; `bertkit.tasks.model_dir` opens any model directory as
what it is. This package's own import is light (the CLI reads the names and settings before anything needs torch).
"""
