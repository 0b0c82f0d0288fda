"""The ``fanout`` command: every subcommand declared and reachable, the heavy ones lazy."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from fanout.cli import COMMANDS, Command, load, main, missing_requirements
from tests.conftest import LayoutFactory

FANOUT = (sys.executable, "-m", "fanout")


def test_help_lists_every_subcommand_and_imports_no_subcommand() -> None:
    probe = ("import sys; from fanout.cli import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit as done:\n    assert done.code == 0\n"
             "print(sorted(m for m in sys.modules if m.startswith(('fanout.', 'training', "
             "'torch', 'requests', 'matplotlib'))))")
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True)
    *usage, imported = ran.stdout.splitlines()
    for name in COMMANDS:
        assert f"    {name}" in "\n".join(usage), name
    assert imported == "['fanout.cli', 'fanout.layout']"


def test_check_loads_the_layout_without_torch(write_layout: LayoutFactory) -> None:
    layout = write_layout()
    probe = (f"import sys; from fanout.cli import main; status = main(['check', {str(layout)!r}])"
             "; print(status, 'torch' in sys.modules, 'requests' in sys.modules)")
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True)
    assert ran.stdout.startswith(f"layout {layout}\n")
    assert ran.stdout.splitlines()[-1] == "0 False False"


def test_a_bad_layout_exits_2_naming_the_key(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("pools: {small: {model: ./m, bind: '127.0.0.1:1', slots: [tpu]}}\n")
    ran = subprocess.run([*FANOUT, "fit", str(broken)], capture_output=True, text=True,
                         timeout=60)
    assert ran.returncode == 2
    assert ran.stderr.startswith(f"error: {broken}: pools.small.slots") and not ran.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_subcommand_has_a_module_that_runs_it(name: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(COMMANDS[name].module)
    assert callable(module.run)
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: fanout {name} ")


def test_an_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["nope"])
    assert done.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_a_missing_extra_is_named_before_anything_runs() -> None:
    requirements = ['tqdm>=4.66; extra == "tools"', 'no-such-package-here>=1; extra == "tools"',
                    'another-missing-one; extra == "train"', "falcon<5,>=4"]
    assert missing_requirements("tools", requirements) == ["no-such-package-here"]
    assert missing_requirements("train", requirements) == ["another-missing-one"]
    # scripts/test installs fanout[test,tools,train]
    assert missing_requirements("tools") == missing_requirements("train") == []


def test_a_subcommand_this_install_lacks_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    # The container image carries no fanout/tools/: `python -m fanout capacity` there.
    with pytest.raises(SystemExit) as done:
        load("capacity", Command("fanout.no_such_tools.capacity", "help", extra="tools"))
    assert done.value.code == 2
    assert capsys.readouterr().err == (
        "error: fanout capacity: this install has no fanout.no_such_tools: install fanout "
        "from a checkout (and the 'tools' extra)\n")
