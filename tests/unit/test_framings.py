"""Framings are parts (issue 22 item 4): registered by a hook, chosen by name in config files and flags, listed
by ``sockwork plugins``, checked at assembly; the kit's framing tests, and each one proven against a broken framing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import attrs
import pytest
from netstring_plugin import SOURCE as NETSTRING

from sockwork import FramingEntry, Registry, conformance, hookimpl, make_plugin_manager
from sockwork.assembly import build_component
from sockwork.messages import Lines

pytestmark = pytest.mark.timeout(60)


def installed_netstring(tmp_path: Path) -> dict[str, str]:
    """The netstring plugin as a separate distribution (sockwork-netstring 0.3.0) on PYTHONPATH; the environment."""
    site = tmp_path / "site"
    (site / "sockwork_netstring").mkdir(parents=True)
    (site / "sockwork_netstring" / "__init__.py").write_text(NETSTRING)
    dist_info = site / "sockwork_netstring-0.3.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: sockwork-netstring\nVersion: 0.3.0\n")
    (dist_info / "entry_points.txt").write_text("[sockwork]\nnetstring = sockwork_netstring\n")
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}, "PYTHONPATH": str(site)}


def sockwork(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sockwork", *args], capture_output=True, text=True, timeout=30,
                          env=env, cwd=cwd)


def test_a_framing_from_a_separate_distribution_is_listed_chosen_by_name_and_passes_the_kit(tmp_path: Path) -> None:
    """sockwork plugins lists it with its distribution; a config file names it; its project's kit run passes."""
    env = installed_netstring(tmp_path)
    listing = sockwork("plugins", env=env, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "framings:\n" in listing.stdout
    assert "  netstring    LENGTH:BYTES, (netstrings)  [netstring, sockwork-netstring 0.3.0]" in listing.stdout
    (tmp_path / "server.toml").write_text('transport = "tcp://127.0.0.1:0"\nhandler = "lines"\n'
                                          '[framing]\nname = "netstring"\noptions = { max_message = 100 }\n')
    checked = sockwork("check", "server.toml", env=env, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert '"framing": {\n    "name": "netstring",\n    "options": {\n      "max_message": 100' in checked.stdout
    wrong = sockwork("check", "server.toml", "--option", "framing.max_mesage=3", env=env, cwd=tmp_path)
    assert wrong.returncode == 1
    assert "framing.options.max_mesage: unknown option; allowed: max_message" in wrong.stderr
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "pyproject.toml").write_text(textwrap.dedent("""
        [project]
        name = "sockwork-netstring"
        version = "0.3.0"
        [project.entry-points.sockwork]
        netstring = "sockwork_netstring"
    """))
    (project / "tests" / "test_kit.py").write_text("from sockwork.conformance import *  # noqa: F403\n")
    kit = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "-k", "framing"],
                         cwd=project, env=env, capture_output=True, text=True, timeout=50)
    assert kit.returncode == 0, kit.stdout + kit.stderr
    assert "5 passed" in kit.stdout, kit.stdout


def test_a_framing_for_a_handler_that_is_not_a_message_handler_is_refused() -> None:
    """framing applies to message handlers only: anything else is a one-line error under 'framing'."""
    from sockwork import ConfigError, load_config

    config = load_config({"transport": "tcp://127.0.0.1:0", "handler": "echo", "framing": "length"})
    from sockwork.assembly import assemble_config

    with pytest.raises(ConfigError, match=r"framing: only a message handler .* handler 'echo' is not one"):
        assemble_config(config)


# ---- Each kit framing test against a deliberately broken framing -------------------------------------------

class KeepsConsumedBytes:
    """Broken: split() returns the lines but leaves them in the buffer."""

    def __init__(self, max_message: int) -> None:
        self.lines = Lines(max_message)
        self.max_message = max_message

    def split(self, buffer: bytearray) -> list[bytes]:
        return self.lines.split(bytearray(buffer))  # a copy: the caller's buffer keeps every byte

    def finish(self, buffer: bytearray) -> list[bytes]:
        return self.lines.finish(buffer)

    def frame(self, reply: bytes) -> bytes:
        return self.lines.frame(reply)


class TooEager(KeepsConsumedBytes):
    """Broken: a message as soon as 5 bytes are buffered, complete or not."""

    def split(self, buffer: bytearray) -> list[bytes]:
        messages = self.lines.split(buffer)
        if not messages and len(buffer) >= 5:
            messages, buffer[:] = [bytes(buffer)], b""
        return messages


class Unbounded(KeepsConsumedBytes):
    """Broken: no limit at all."""

    def split(self, buffer: bytearray) -> list[bytes]:
        return Lines(1 << 30).split(buffer)


class LeavesTheRest(KeepsConsumedBytes):
    """Broken: finish() returns the last line but does not empty the buffer."""

    def split(self, buffer: bytearray) -> list[bytes]:
        return self.lines.split(buffer)

    def finish(self, buffer: bytearray) -> list[bytes]:
        return [bytes(buffer)] if buffer else []


@attrs.frozen(kw_only=True)
class BrokenOptions:
    max_message: int = 65536


def kit_fixtures(framing_class: type) -> dict[str, Any]:
    class Plugin:
        @hookimpl
        def sockwork_add_framings(self) -> list[FramingEntry]:
            return [FramingEntry("broken", lambda options: framing_class(options.max_message), BrokenOptions)]

    pm = make_plugin_manager(entry_points=False)
    pm.register(Plugin())
    registry = Registry(pm)

    def make(**options: Any) -> Any:
        return build_component(registry, "framing", registry.get("framing", "broken"), options)

    return {"sockwork_make_framing": make, "sockwork_framing_name": "broken", "sockwork_registry": registry}


def run(test: Any, framing_class: type) -> None:
    fixtures = kit_fixtures(framing_class)
    wanted = test.__code__.co_varnames[:test.__code__.co_argcount]
    test(**{name: fixtures[name] for name in wanted})


@pytest.mark.parametrize(("test", "broken", "caught"), [
    (conformance.test_framing_round_trips_messages, KeepsConsumedBytes, "left their bytes in the buffer"),
    (conformance.test_framing_waits_for_a_message_to_be_complete, TooEager, "after \\d+ bytes split\\(\\) gave"),
    (conformance.test_framing_refuses_a_message_over_max_message_complete_or_not, Unbounded, "DID NOT RAISE"),
    (conformance.test_framing_finish_takes_the_rest_and_empties_the_buffer, LeavesTheRest, "finish\\(\\) left"),
], ids=["round-trip", "partial", "oversized", "finish"])
def test_each_framing_kit_test_catches_its_broken_framing(test: Any, broken: type, caught: str) -> None:
    """The kit test fails, saying why, for a framing broken in exactly the way it checks."""
    with pytest.raises((AssertionError, pytest.fail.Exception), match=caught):
        run(test, broken)


def test_the_kit_framing_tests_pass_a_correct_framing() -> None:
    """The same tests pass the built-in lines framing, run the same way (so the failures above are the framings')."""
    class Correct(LeavesTheRest):
        def finish(self, buffer: bytearray) -> list[bytes]:
            return self.lines.finish(buffer)

    for test in (conformance.test_framing_round_trips_messages,
                 conformance.test_framing_waits_for_a_message_to_be_complete,
                 conformance.test_framing_refuses_a_message_over_max_message_complete_or_not,
                 conformance.test_framing_finish_takes_the_rest_and_empties_the_buffer):
        run(test, Correct)
