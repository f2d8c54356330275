"""Sessions: `nox -s tests` (the README's test command: everything but the tests marked slow), `nox -s slow`
(the slow rest: long conformance and integration runs), lint, conformance, demo, benchmarks, the Triton
tests under each supported Triton, and `nox -s gpu` (the GPU check, on a machine whose Python has a CUDA
torch)."""

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "venv"

# The CPU build of torch; GPU users install their vendor's torch before `pip install .`.
CPU_TORCH = "torch==2.13.0"


def install(session):
    """A regular (not editable) install, so the tests see what a wheel ships."""
    session.install(CPU_TORCH)
    session.install(".[dev]")


def pytest(session, marker: str):
    install(session)
    session.run("pytest", "-q", "-rs", "-m", marker, "--durations=15", *session.posargs,
                env={"PORTABLE_MOE_CACHE_DIR": str(session.create_tmp() + "/cache")})


@nox.session
def tests(session):
    """Unit, integration and quick conformance tests, all but those marked slow (under 10 minutes on 2 cores)."""
    pytest(session, "not slow")


@nox.session
def slow(session):
    """The tests marked slow: long conformance and integration runs (CI runs them after `tests`)."""
    pytest(session, "slow")


@nox.session
def lint(session):
    """ruff over the whole tree."""
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def conformance(session):
    """The conformance suite for every backend that executes here (--full for the full tier)."""
    install(session)
    tier = "--full" if "--full" in session.posargs else "--quick"
    session.run("portable-moe", "conformance", "--backend", "all", tier, "--json", "conformance.json",
                "--html", "conformance.html", "--junit", "conformance.xml")


@nox.session
def demo(session):
    """The main job: `portable-moe demo` on the embedded default model."""
    install(session)
    session.run("portable-moe", "demo")


@nox.session
def benchmarks(session):
    """CPU benchmarks side by side (TVM, ONNX Runtime, torch eager), the balancer and training."""
    install(session)
    for script in ("bench_tvm_cpu", "bench_onnx", "bench_balance", "bench_train_hetero"):
        session.run("python", f"benchmarks/{script}.py")


# The Triton range pyproject states: the one a CUDA build of torch ships today (torch 2.11 -> 3.6.0) and the
# newest. `nox -s tests` runs the newest; CI adds the oldest.
TRITON_VERSIONS = ("3.6.0", "newest")


@nox.session
@nox.parametrize("triton", TRITON_VERSIONS)
def triton(session, triton):
    """The Triton backend's tests (interpreter and cross-compilation) under one supported Triton."""
    install(session)
    session.install("triton" if triton == "newest" else f"triton=={triton}")
    session.run("pytest", "-q", "tests/backends/triton", *session.posargs, env={"PORTABLE_MOE_CACHE_DIR": str(
        session.create_tmp() + "/cache")})


@nox.session(python=False)
def gpu(session):
    """The GPU check in the current Python (it must already have a CUDA torch; nothing is installed): gpu
    tests, conformance on cuda:0, the GPU benchmark, cuda:0+cpu training with resume; a summary at the end."""
    session.run("python", "-m", "portable_moe.gpucheck", *session.posargs)
