"""The README's deploy instructions say what the checkout really does."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_shows_the_procfile_lines_as_written():
    """An operator copies the process lines from the README's deploy section: they must be
    the Procfile's own, or a setting the README documents (WORKER_CONCURRENCY) would do
    nothing in their deploy."""
    section = (ROOT / "README.md").read_text().split("## Running it for real", 1)[1]
    shown = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert shown == (ROOT / "Procfile").read_text()
