"""Every command of the docs' ``console`` and ``sh`` blocks, run in the sandbox.

Each doc's blocks run in the doc's order against one sandbox
(tests/docs/scenario.py): the real fwdmilter daemon behind a private Postfix
built from docs/postfix.md, private Redis servers, the harness's DNS and SMTP
sink. A command must exit with the status the doc gives (0 unless a
``# exit status N`` comment says otherwise) and print what the doc shows, in
substance (tests/docs/sandbox.py). The last test proves that no runnable
command of any doc was left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs.markdown import DOCS, REPO, RUN_TAGS, all_blocks, blocks, commands
from tests.docs.scenario import CHECKS, EVENTS, World, build, stop
from tests.harness.mail_fixtures import BorderFactory, MailWorld
from tests.harness.postfix import RuntimeDir
from tests.harness.sink import Sink

pytestmark = pytest.mark.e2e

#: The docs whose commands change the sandbox come last, in this order;
#: any other doc runs first.
LAST = ("docs/postfix.md", "docs/configuration.md", "docs/operations.md", "docs/redis.md")


def _rank(path: Path) -> int:
    name = str(path.relative_to(REPO))
    return LAST.index(name) + 1 if name in LAST else 0


ORDER = sorted(DOCS, key=_rank)


@pytest.fixture(scope="module")
def world(
    mail: MailWorld,
    sink: Sink,
    runtime: RuntimeDir,
    border_factory: BorderFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    w = build(mail, sink, runtime, border_factory, tmp_path_factory.mktemp("docs"))
    try:
        yield w
    finally:
        stop(w)


@pytest.mark.parametrize("doc", ORDER, ids=lambda p: str(p.relative_to(REPO)))
def test_commands_of(world: World, doc: Path) -> None:
    for block in blocks(doc):
        event = block.attrs.get("event")
        if event is not None:
            EVENTS[event](world)
        if block.tag in RUN_TAGS:
            for cmd in commands(block):
                world.sandbox.check(cmd)
        check = block.attrs.get("check")
        if check is not None:
            CHECKS[check](world, block)


def test_every_runnable_command_ran(world: World) -> None:
    ran = {(c.block.path, c.line) for c in world.sandbox.ran}
    missed = [
        f"{c.where}: {c.text}"
        for b in all_blocks()
        if b.tag in RUN_TAGS
        for c in commands(b)
        if (c.block.path, c.line) not in ran
    ]
    assert not missed, "commands never run:\n" + "\n".join(missed)
