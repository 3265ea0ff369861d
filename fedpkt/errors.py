"""The one exception type users see.

Every bad input (config value, file, tensor shape, key) is reported as a single line that names
the thing and what was expected; the CLI turns it into exit code 2 without a traceback.
"""


class FedpktError(Exception):
    """A user-facing error whose message is one line: what was wrong and what was expected."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
