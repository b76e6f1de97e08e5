"""The one exception type users meet: its message is a single actionable line."""


class RecoverlibError(Exception):
    """A problem the user can fix (bad input, missing file, unsupported combination).

    The CLI prints ``str(err)`` as one line and exits with status 2, without a traceback.
    """
