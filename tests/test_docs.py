"""README and docs/ name what exists: the tests they cite as evidence, the fields of the answers they show."""

from __future__ import annotations

import re
from pathlib import Path

from reward_service.settings import ServiceSettings
from shared.schemas import ScoreResponse

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_cited_test_exists() -> None:
    # A reader checks a claim by running the test it cites (docs/reliability.md once cited a file
    # that did not exist).
    missing = []
    for doc in DOCS:
        for path, name in re.findall(r"\b(tests/test_\w+\.py)(?:::(\w+))?", doc.read_text()):
            source = ROOT / path
            if not source.is_file() or (name and not re.search(rf"^def {name}\(", source.read_text(), re.M)):
                missing.append(f"{doc.name}: {path}{'::' + name if name else ''}")
    assert missing == []


def test_readme_names_every_setting() -> None:
    # README points its readers to "every setting": a variable it never names is one they cannot find.
    # REWARD_ENGINE_ADDRESSES is internal (`reward-service --workers N` sets it for its workers).
    prefix = ServiceSettings.model_config["env_prefix"]
    variables = {f"{prefix}{name}".upper() for name in ServiceSettings.model_fields} - {
        "REWARD_ENGINE_ADDRESSES"
    }
    readme = (ROOT / "README.md").read_text()
    assert sorted(v for v in variables if f"`{v}`" not in readme) == []


def test_readme_shows_every_field_of_the_score_answer() -> None:
    # Every field is always in the answer (null when it does not apply), so a reader's parser sees them all.
    shape = re.search(r'`(\{"scorer", "model", [^`]*\})`', (ROOT / "README.md").read_text())
    assert shape is not None
    assert re.findall(r'"(\w+)"', shape.group(1)) == list(ScoreResponse.model_fields)
