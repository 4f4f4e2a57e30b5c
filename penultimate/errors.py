"""The one exception family for bad user input (configs, data files, model folders).

The CLI turns these into a one-line error naming the file, field or row, and exit code 2.
"""


class InputError(ValueError):
    """Input that cannot be used as given; the message says where and why."""
