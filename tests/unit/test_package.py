"""The package imports on CPython (no Pyodide needed) and its version matches the wheel's."""

import tomllib
from pathlib import Path

import ping_web


def test_version_matches_pyproject() -> None:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert ping_web.__version__ == pyproject["project"]["version"]


def test_public_names_resolve() -> None:
    for name in ping_web.__all__:
        assert getattr(ping_web, name) is not None


def test_every_public_error_is_exported() -> None:
    import inspect

    from ping_web import errors

    classes = {name for name, value in vars(errors).items()
               if inspect.isclass(value) and issubclass(value, errors.PingError)}  # fmt: skip
    assert classes <= set(ping_web.__all__), sorted(classes - set(ping_web.__all__))
