"""The sampling tests run the same tiny models as tests/models: one CPU thread each."""

from tests.models.conftest import one_thread  # noqa: F401  (autouse fixture)
