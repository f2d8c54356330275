"""The one error type users see, and the IR's subclass of it."""


class PortableMoeError(Exception):
    """Base of every error portable_moe raises for bad input; the CLI prints it as one line."""


class IRError(PortableMoeError):
    """A graph, IR file or attribute is malformed. The message names the node, the op and the problem."""

    def __init__(self, problem: str, node: str | None = None, op: str | None = None):
        self.problem, self.node, self.op = problem, node, op
        where = f"node '{node}'" if node else ""
        if op:
            where += f" (op {op})" if where else f"op {op}"
        super().__init__(f"{where}: {problem}" if where else problem)
