"""test.py as a module, for tests that call its main() in-process: `import test` would find the
standard library's test package. Loaded once; every test file gets the same module."""
import functools
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def load_test_py():
    """The module of the project's test.py script."""
    spec = importlib.util.spec_from_file_location("stacnas_test_script", ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
