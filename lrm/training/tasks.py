"""The kinds of training run, by the name a config's top-level ``task:`` gives (default ``lrm``).

A value of ``TASKS`` is a :class:`~lrm.training.task.Task` subclass or an import path ``"module:Class"``
resolved on first use, so a task whose module is optional (or not written yet) costs nothing until a config
names it. ``register_task`` adds one at run time (tests, plug-ins).
"""
from __future__ import annotations

import importlib
from typing import Dict, Type, Union

from omegaconf import DictConfig

from ..config import ConfigError
from .lrm_task import LRMTask
from .task import Task

DEFAULT_TASK = "lrm"

TASKS: Dict[str, Union[Type[Task], str]] = {
    "lrm": LRMTask,
    "zero123": "lrm.diffusion.task:DiffusionTask",  # novel-view diffusion prior (lrm/diffusion/)
}


def register_task(name: str, cls: Union[Type[Task], str]) -> None:
    """Make ``task: <name>`` select ``cls`` (a Task subclass, or ``"module:Class"`` imported on use)."""
    if not isinstance(cls, str) and not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"register_task({name!r}, ...): expected a Task subclass or 'module:Class', got {cls!r}")
    TASKS[str(name)] = cls


def task_name(cfg: DictConfig) -> str:
    name = cfg.get("task", None) if cfg is not None else None
    return DEFAULT_TASK if name is None else str(name)


def task_class(name: str) -> Type[Task]:
    """The Task subclass registered as ``name`` (imported now if registered by path)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(sorted(TASKS))})")
    cls = TASKS[name]
    if isinstance(cls, str):
        module, _, attr = cls.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"task {name!r}: cannot load {TASKS[name]} ({type(e).__name__}: {e})") from None
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise ConfigError(f"task {name!r}: {TASKS[name]} is not a Task subclass")
        TASKS[name] = cls
    return cls


def make_task(cfg: DictConfig) -> Task:
    """The task the config's ``task:`` names, built on ``cfg``."""
    return task_class(task_name(cfg))(cfg)
