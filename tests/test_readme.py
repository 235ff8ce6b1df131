"""The operator's documentation says what the checkout really does."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_shows_the_procfile_lines_as_written():
    """An operator copies the process lines from the README's deploy section: they must be
    the Procfile's own, or a setting the README documents (WORKER_CONCURRENCY) would do
    nothing in their deploy."""
    section = (ROOT / "README.md").read_text().split("## Running it for real", 1)[1]
    shown = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert shown == (ROOT / "Procfile").read_text()


def settings_read_from_the_environment() -> set[str]:
    """Every name `reqrun/settings.py` reads with one of its readers (`text(…)`,
    `count(…)`, `flag(…)`…: the functions it defines, each taking the variable's name first)."""
    tree = ast.parse((ROOT / "reqrun" / "settings.py").read_text())
    readers = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)} - {"refuse"}
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        first = node.args[0]
        if (
            isinstance(node.func, ast.Name)
            and node.func.id in readers
            and isinstance(first, ast.Constant)
            and isinstance(first.value, str)
        ):
            names.add(first.value)
    return names


def test_every_setting_read_from_the_environment_is_documented():
    names = settings_read_from_the_environment()
    assert {"DATABASE_URL", "DB_POOL_MAX_SIZE", "SECRET_KEY"} <= names  # the parse works
    documentation = "\n".join(
        path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    )
    undocumented = sorted(name for name in names if f"`{name}`" not in documentation)
    assert not undocumented, f"read in settings.py but not documented: {undocumented}"


def test_every_name_readyz_can_report_down_is_explained():
    """An operator reads what a `/readyz` 503 means in the README's list of `down` names: each
    name `core/health.py` can answer (and each heartbeat it reads) has its entry there."""
    source = (ROOT / "core" / "health.py").read_text()
    names = set(re.findall(r'down\.append\("([a-z_]+)"\)', source))
    names |= set(re.findall(r'\["([a-z_]+)"\]', source))
    names |= set(
        re.findall(r'^[A-Z]+ = "([a-z_]+)"$', (ROOT / "core" / "heartbeats.py").read_text(), re.M)
    )
    assert {"postgres", "schema", "sweeper", "worker"} <= names  # the scan finds them
    readme = (ROOT / "README.md").read_text()
    listed = readme.split("`down` naming what is wrong:", 1)[1].split("\n\n", 2)[1]
    unexplained = sorted(name for name in names if f"`{name}`" not in listed)
    assert not unexplained, (
        f"/readyz can name these, the README does not explain them: {unexplained}"
    )
