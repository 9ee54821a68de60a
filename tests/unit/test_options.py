"""The options the command and the suites share are declared once (``cli.options``): each has the
same flag, destination, default, choices and help in ``parakeet-coreml`` and in ``pytest``."""

from __future__ import annotations

import pytest

from cli.main import build_parser
from cli.options import COMMAND_OPTIONS, SUITE_OPTIONS, Option
from conftest import pytest_addoption


def _declared(option: Option) -> dict:
    """What ``option`` declares, recorded through a stand-in ``add_option``."""
    seen = {}
    option.add(lambda flag, **kwargs: seen.update(flag=flag, **kwargs))
    return seen


def _argparse_action(command: str, flag: str):
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    return next(a for a in parser._actions if flag in a.option_strings)


class _Recorder:
    """pytest's parser as far as ``pytest_addoption`` uses it: every option declared, recorded."""

    def __init__(self):
        self.options = {}

    def getgroup(self, *args, **kwargs):
        return self

    def addoption(self, flag, **kwargs):
        self.options[flag] = {"flag": flag, **kwargs}


def _suite_options() -> dict:
    recorder = _Recorder()
    pytest_addoption(recorder)
    return recorder.options


@pytest.mark.parametrize("option", SUITE_OPTIONS, ids=[o.flag for o in SUITE_OPTIONS])
def test_the_suite_declares_each_shared_option_as_declared(option):
    assert _suite_options()[option.flag] == _declared(option)


@pytest.mark.parametrize(("command", "option"), [(c, o) for c, options in COMMAND_OPTIONS.items() for o in options],
                         ids=[f"{c}{o.flag}" for c, options in COMMAND_OPTIONS.items() for o in options])
def test_each_command_declares_its_shared_options_as_the_suite_does(command, option):
    action, suite = _argparse_action(command, option.flag), _suite_options()[option.flag]
    assert (action.dest, action.default, action.help) == (suite["dest"], suite["default"], suite["help"])
    assert list(action.choices or []) == list(suite.get("choices") or [])
    assert action.type is suite.get("type")


def test_every_option_of_a_command_that_the_suite_also_has_is_shared():
    """An option both front ends declare on their own would drift (three texts for --backend)."""
    suite = set(_suite_options())
    own_meaning = {  # a command's option that means something else there, and why
        ("compare", "--compute-units"): "defaults to the units recorded at convert",
        ("evaluate", "--compute-units"): "defaults to the units recorded at convert",
        ("quantize", "--compute-units"): "defaults to the units recorded at convert",
        ("evaluate", "--audio"): "recordings to evaluate without texts, not a parity clip",
        ("quantize", "--manifest"): "the set the --held-out variants are evaluated on; defaults to the held-out set",
        ("evaluate", "--strategy"): "repeatable, to compare strategies side by side",
    }
    sources = {"--nemo-path", "--model-id", "--preset"}  # add_source_options declares them for both
    for command, options in COMMAND_OPTIONS.items():
        declared = {f for a in build_parser()._subparsers._group_actions[0].choices[command]._actions
                    for f in a.option_strings if f.startswith("--")}
        own = {flag for c, flag in own_meaning if c == command}
        unshared = (declared & suite) - {o.flag for o in options} - own - sources
        assert not unshared, f"{command}: {sorted(unshared)} declared apart from cli.options"
