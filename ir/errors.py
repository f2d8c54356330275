"""The one error type users see, and the IR's subclass of it."""


class PortableMoeError(Exception):
    """Base of every error portable_moe raises for bad input; the CLI prints it as one line."""


class IRError(PortableMoeError):
    """A graph, IR file or attribute is malformed. The message names the node, the op and the problem."""

    def __init__(self, problem: str, node: str | None = None, op: str | None = None):
        self.problem, self.node, self.op = problem, node, op
        where = f"node '{clip(node, 80)}'" if node else ""
        if op:
            where += f" (op {clip(op, 40)})" if where else f"op {clip(op, 40)}"
        super().__init__(clip(f"{where}: {problem}" if where else problem, 1000))


def clip(text: str, limit: int) -> str:
    """One line of at most about limit characters, whatever names a file held."""
    text = str(text).replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
