class KitError(Exception):
    """An error the user can fix (bad spec, missing column, label outside the set, ...).

    The CLI prints its one-line message and exits with code 2, without a traceback."""
