"""lwp-admin's first-token command: prints the package's first admin token once and deletes
its file (unless --keep); every other command reminds the admin while that file exists."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import PYTHON, ROOT, World

NAME = "initial-admin-token"


def admin(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "helperd.admin", "--config", world.config, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture
def first_token(world: World) -> Iterator[str]:
    """The file postinst writes (0600 root), holding a real admin token of the world."""
    made = admin(world, "token", "add", "--scope", "admin", "--description", "first")
    assert made.returncode == 0, made.stderr
    path = os.path.join(world.state_dir, NAME)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(made.stdout)
    yield made.stdout.strip()
    if os.path.lexists(path):
        os.unlink(path)


def test_initial_token_prints_the_token_and_deletes_its_file(world: World,
                                                              first_token: str) -> None:
    done = admin(world, "initial-token")
    assert done.returncode == 0, done.stderr
    assert done.stdout == first_token + "\n"  # the token alone, on stdout only
    assert first_token not in done.stderr and "deleted" in done.stderr
    assert not os.path.lexists(os.path.join(world.state_dir, NAME))
    again = admin(world, "initial-token")
    assert again.returncode == 1 and "read and deleted already" in again.stderr


def test_initial_token_keep_leaves_the_file(world: World, first_token: str) -> None:
    done = admin(world, "initial-token", "--keep")
    assert done.returncode == 0 and done.stdout.strip() == first_token
    assert os.path.exists(os.path.join(world.state_dir, NAME))


def test_other_commands_remind_while_the_file_exists(world: World, first_token: str) -> None:
    listed = admin(world, "--json", "token", "list")
    assert listed.returncode == 0
    assert "still holds the first admin token: `lwp-admin initial-token`" in listed.stderr
    assert first_token not in listed.stderr + listed.stdout
    os.unlink(os.path.join(world.state_dir, NAME))
    assert "initial-token" not in admin(world, "token", "list").stderr


@pytest.mark.security
def test_initial_token_refuses_a_file_others_can_read_or_a_link(world: World,
                                                                first_token: str) -> None:
    path = os.path.join(world.state_dir, NAME)
    os.chmod(path, 0o644)
    done = admin(world, "initial-token")
    assert done.returncode == 1 and "not a root-only regular file" in done.stderr
    assert first_token not in done.stdout and os.path.exists(path)
    os.unlink(path)
    os.symlink("/etc/shadow", path)
    done = admin(world, "initial-token")
    assert done.returncode == 1 and "symbolic link is refused" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("days", ["inf", "nan", "-1", "1e10", "x"])
def test_token_add_refuses_an_expiry_that_is_not_a_finite_number_of_days(
        world: World, days: str) -> None:
    done = admin(world, "token", "add", "--expires-days", days)
    assert done.returncode == 2 and "--expires-days" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
