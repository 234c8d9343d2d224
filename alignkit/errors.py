"""The one exception type users see instead of a traceback."""


class AlignkitError(ValueError):
    """A problem with the user's input (config, data, model path) that the user can fix.

    Recipes catch it at the top level and print its message alone, so every message must name where the problem is
    (file, row, field or key) and what to do about it.
    """
