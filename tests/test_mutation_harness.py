"""The mutation-testing harness (``tcloud.verif.mutation``) stays usable: its catalogue matches the
sources at HEAD, its test selections still collect tests, a mutation applied in a scratch worktree
reverts byte for byte, and ``--list`` works. The catalogue itself is run by hand (``python -m tcloud.verif.mutation``), not here."""

import subprocess
import sys

import pytest

from tcloud.verif import mutation

pytestmark = pytest.mark.slow  # applies mutations in git worktrees


def test_every_snippet_occurs_exactly_once_at_head():
    mutation.check_catalogue()  # raises CatalogueError naming every stale entry
    for mut in mutation.CATALOGUE:
        assert mut.old != mut.new and mut.tests and mut.description, mut.name


def test_a_stale_snippet_fails_loudly():
    stale = mutation.Mutation("stale", "isa/golden.py", "this text is not in the golden model", "x", "d", ("t",))
    with pytest.raises(mutation.CatalogueError, match="stale"):
        mutation.check_catalogue([stale])


def test_apply_then_revert_restores_every_file_byte_for_byte():
    with mutation.Workspace() as ws:
        for mut in mutation.CATALOGUE:
            path = ws.tree / mut.file
            before = path.read_bytes()
            ws.apply(mut)
            mutated = path.read_bytes()
            assert mutated != before and mut.new.encode() in mutated, mut.name
            ws.revert(mut)
            assert path.read_bytes() == before, mut.name
        ws.check_imports()  # tcloud.* resolves into the copy
        mutation.check_selections(ws, mutation.CATALOGUE)  # every test selection still collects tests
        root = ws.root
    assert not root.exists()


def test_list_prints_the_catalogue():
    out = subprocess.run([sys.executable, "-m", "tcloud.verif.mutation", "--list"], capture_output=True, text=True,
                         check=True).stdout
    for mut in mutation.CATALOGUE:
        assert mut.name in out
    assert f"{len(mutation.CATALOGUE)} mutations" in out
