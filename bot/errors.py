"""The one exception type for bad input.

train.py turns a UserError into one line on stderr and exit status 2. Everything that
a user can get wrong (a recipe key, a data folder, a corrupt image, a checkpoint)
raises it before any file in the run folder is touched.
"""


class UserError(Exception):
    """Bad input: the message is one line that names the problem."""


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error, also when it was re-raised from a worker.

    A DataLoader worker re-raises its exception with the worker's traceback folded into
    the message; the original message is then the last line, after the type name.
    """
    text = str(exc).strip()
    if "Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else type(exc).__name__
