"""In CI a skipped test counts as a failed one: an equivalence test that did
not run proves nothing.

The tests start many `python -m train.main` processes that compile the same
steps; one persistent JAX compilation cache for the session (passed to them
through the environment) compiles each once. A cached executable is the one
a fresh compile makes, so results are unchanged."""
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="flax_video_tests_jax_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    # Also the many small compiles of eager initialization.
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
else:
    _CACHE = None

import flax_video  # noqa: E402,F401  (first, so its XLA:CPU flag is set before JAX starts, as for users)


def pytest_sessionfinish(session, exitstatus):
    if _CACHE:
        shutil.rmtree(_CACHE, ignore_errors=True)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped and session.exitstatus == 0:
        reporter.write_line(f"CI: {skipped} test(s) skipped; failing the run.", red=True)
        session.exitstatus = 1
