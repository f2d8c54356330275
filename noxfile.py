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


# Each results file and the command that regenerates it (BENCHMARKS.md names the same command per section).
RESULTS = "benchmarks/results"
BENCHMARKS = (
    ("portable-moe", "bench", "--repeat", "5", "--markdown", f"{RESULTS}/cpu_moe_layer.md", "--plot",
     f"{RESULTS}/cpu_moe_layer.png"),
    ("python", "benchmarks/bench_onnx.py", "--repeat", "5", "--markdown", f"{RESULTS}/onnx.md"),
    ("portable-moe", "bench", "balance", "--markdown", f"{RESULTS}/balance.md"),
    ("portable-moe", "bench", "train", "--markdown", f"{RESULTS}/train.md"),
    ("portable-moe", "bench", "train", "--islands", "--steps", "12", "--per-rank-batch", "16", "--seq", "64",
     "--hidden", "128", "--expert-ffn", "128", "--bridge-gbps", "3,0.03", "--markdown", f"{RESULTS}/train_islands.md"),
    ("portable-moe", "bench", "train", "--project", "--markdown", f"{RESULTS}/train_projections.md"),
)


@nox.session
def benchmarks(session):
    """Regenerates benchmarks/results/*.md on this machine's CPU (the layer on every backend beside the torch
    baselines, ONNX Runtime on torch.onnx.export's model, the balancer, training); `nox -s benchmarks -- train`
    runs only the commands that name `train`. GPU: `portable-moe bench MODEL --device cuda:0 --dtype bfloat16`."""
    install(session)
    for command in BENCHMARKS:
        if all(word in command for word in session.posargs):
            session.run(*command)


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
