"""Test-suite wiring: each fixture module starts one real component."""

pytest_plugins: list[str] = [
    "tests.fixtures.oidc",
    "tests.fixtures.daemon",
    "tests.fixtures.keyring",
    "tests.fixtures.http",
    "tests.fixtures.redis",
]
