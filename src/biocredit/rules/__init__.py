"""Learning rules, one file each. A module here that defines a LearningRule subclass registers it.

Adding a rule = one new file in this folder + a method entry in config.yaml.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from biocredit.rules.base import LearningRule, StepResult

RULES: dict[str, type[LearningRule]] = {}

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name == "base":
        continue
    _module = importlib.import_module(f"{__name__}.{_mod.name}")
    for _obj in vars(_module).values():
        if inspect.isclass(_obj) and issubclass(_obj, LearningRule) and _obj is not LearningRule and "name" in vars(_obj):
            RULES[_obj.name] = _obj

__all__ = ["RULES", "LearningRule", "StepResult"]
