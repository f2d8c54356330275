"""Sessions: `nox -s tests` (the README's test command), lint, conformance, demo, benchmarks."""

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "venv"

# The CPU build of torch; GPU users install their vendor's torch before `pip install .`.
CPU_TORCH = "torch==2.13.0"


def install(session):
    """A regular (not editable) install, so the tests see what a wheel ships."""
    session.install(CPU_TORCH)
    session.install(".[dev]")


@nox.session
def tests(session):
    """Unit, integration and quick conformance tests (about 10 minutes on 2 cores)."""
    install(session)
    session.run("pytest", "-q", "--durations=15", *session.posargs, env={"PORTABLE_MOE_CACHE_DIR": str(
        session.create_tmp() + "/cache")})


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
