"""The docs describe the code that exists: every column and feature, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from features.contracts import CONTRACTS, EXPOSURES
from features.point_in_time import CUSTOMER_FEATURES, ITEM_FEATURES

DOC = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()


def documented_rows(heading: str) -> list[str]:
    section = DOC.split(heading, 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)


def test_every_contract_column_is_documented_in_order():
    for name, contract in {**CONTRACTS, EXPOSURES.name: EXPOSURES}.items():
        assert documented_rows(f"## Table `{name}`") == contract.column_names


def test_every_feature_is_documented():
    assert documented_rows("### Customer features") == [f.name for f in CUSTOMER_FEATURES]
    assert documented_rows("### Item features") == [f.name for f in ITEM_FEATURES]


def test_the_readme_names_every_setting_and_no_other():
    from features.settings import Settings

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`NEXTBEST_([A-Z_]+)`", section))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_the_bento_installs_the_project_dependencies_as_pyproject_pins_them():
    """A version pin is written in pyproject.toml; bentofile.yaml must list the same ones (the
    Bento brings bentoml itself)."""
    import tomllib

    import yaml

    root = Path(__file__).resolve().parents[1]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    bento = yaml.safe_load((root / "bentofile.yaml").read_text())["python"]["packages"]
    assert sorted(bento) == sorted(d for d in declared if not d.startswith("bentoml"))


def test_logged_models_require_the_pins_of_pyproject():
    import tomllib

    from training.artifacts import requirements

    root = Path(__file__).resolve().parents[1]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    assert requirements("mlflow", "redis") == [next(d for d in declared if d.startswith(name))
                                              for name in ("mlflow", "redis[")]


def test_each_exposure_column_is_described_as_the_contract_says():
    """nextbest's own table changes with the code: its rows in docs/data.md are the contract's
    words (type, required, description, allowed values)."""
    section = DOC.split("## Table `exposures`", 1)[1].split("\n#", 1)[0]
    for column in EXPOSURES.columns:
        text = column.description.replace("|", "\\|")
        if column.allowed:
            text += " One of: " + ", ".join(f"`{a}`" for a in column.allowed) + "."
        row = (f"| `{column.name}` | {column.type} | {'yes' if column.required else 'no'} | "
               f"{text} |")
        assert row in section, column.name
