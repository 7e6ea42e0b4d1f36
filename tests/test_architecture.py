"""The shape the code keeps: one error base, and the stages' layers (lint-imports checks the
imports themselves in CI; this checks that its contract still names every stage)."""
import configparser
import importlib
import inspect
import pkgutil

import models
import utils
from utils.core.errors import IcyfaceError
from utils.core.run_io import PROJECT_ROOT


def _modules():
    for package in (utils, models):
        yield package
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            yield importlib.import_module(info.name)


def test_every_exception_class_derives_from_the_one_base():
    offenders = [f"{module.__name__}.{name}" for module in _modules()
                 for name, cls in vars(module).items()
                 if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == module.__name__
                 and not issubclass(cls, IcyfaceError)]
    assert offenders == [], f"derive these from utils.core.errors.IcyfaceError: {offenders}"


def test_the_layers_contract_names_every_stage_lowest_last():
    config = configparser.ConfigParser()
    config.read(PROJECT_ROOT / ".importlinter")
    layers = config["importlinter:contract:stages"]["layers"].split()
    assert layers == ["utils.training", "utils.verify", "models", "utils.preprocess", "utils.core"]
    stages = {info.name for info in pkgutil.iter_modules(utils.__path__) if info.ispkg}
    assert {f"utils.{s}" for s in stages} <= set(layers), "a new stage package needs its place in .importlinter"
