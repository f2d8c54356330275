"""pytest plug-in (entry point pytest11): `pytest --conformance=B [--conformance-dtype D ...]
[--conformance-op GLOB] [--conformance-tier quick|full] [--conformance-device D]` adds one test per
conformance sample (the same cases and checks as `portable-moe conformance`); known failures from
known_failures/<backend>.json become xfail with their reason, declined ops become skips."""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("portable_moe conformance")
    group.addoption("--conformance", action="append", default=[], metavar="BACKEND",
                    help="run the conformance suite of this backend ('all' for every one) as tests")
    group.addoption("--conformance-dtype", action="append", default=[], help="dtypes (default: fp32, fp16, bf16)")
    group.addoption("--conformance-op", action="append", default=[], help="case globs (default: every case)")
    group.addoption("--conformance-tier", default="quick", choices=("quick", "full"))
    group.addoption("--conformance-device", default=None, help="device id (default: every usable device)")


class ConformanceFailure(AssertionError):
    pass


class ConformanceItem(pytest.Item):
    def __init__(self, *, runner, backend, device, sample, scale, known, **kwargs):
        super().__init__(**kwargs)
        self.runner, self.backend, self.device, self.sample, self.known = runner, backend, device, sample, known
        self.scale = scale

    def runtest(self):
        from .execute import run_case
        from .runner import apply_known
        reason = self.backend.support(self.device).reason(self.sample.op, self.sample.dtype) \
            if self.sample.kind == "op" else None
        r = run_case(self.backend, self.device, self.sample, reason, None,
                     lambda n: self.runner.redraw(self.sample, self.scale, n))
        apply_known([r], self.known)
        if r.status == "declined":
            pytest.skip(f"declined: {r.reason}")
        if r.status == "xfail":
            pytest.xfail(f"known failure: {r.reason}")
        if r.status == "failed":
            raise ConformanceFailure("\n".join(f"[{c}] {m}" for c, m in r.failures) + f"\nseed={r.seed}")
        if r.status == "inconclusive":
            raise ConformanceFailure(f"inconclusive: {r.reason}")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ConformanceFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, self.name


def pytest_collection_modifyitems(session, config, items):
    names = config.getoption("conformance")
    if not names:
        return
    from .known import load_known
    from .runner import Runner
    runner = Runner(config.getoption("conformance_tier"), config.getoption("conformance_dtype") or None,
                    config.getoption("conformance_op") or None, progress=False, record=False)
    _, runnable = runner.targets(names, config.getoption("conformance_device"))
    for target, backend, device in runnable:
        known = load_known(backend.name)
        for dtype in runner.dtypes:
            for sample in runner.samples(target.scale, dtype):
                name = f"conformance[{backend.name}-{device.id}-{dtype.value}-{sample.op}/{sample.name}]"
                items.append(ConformanceItem.from_parent(session, name=name, runner=runner, backend=backend,
                                                         device=device, sample=sample, scale=target.scale,
                                                         known=known))
