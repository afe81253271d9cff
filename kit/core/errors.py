class KitError(Exception):
    """An error the user can fix (bad spec, missing column, label outside the set, ...).

    The CLI prints its one-line message and exits with code 2, without a traceback."""


def remote_code_guard(name, load, *args, **kwargs):
    """transformers refuses a model that ships its own code with a long ValueError; say it in
    one line, with the flag that allows it."""
    try:
        return load(*args, **kwargs)
    except ValueError as error:
        if "trust_remote_code" not in str(error):
            raise
        raise KitError(f"{name}: this model runs its own Python code (e.g. ChatGLM2/3); rerun with "
                       "--trust-remote-code if you trust its source") from None


class WriteError(KitError, OSError):
    """A file or folder the kit could not write (full disk, permission, read-only file system, a
    folder where a file goes): one line naming the path. Still an OSError, so code that may go
    on without the file (a cache, progress) catches it as one."""

    def __init__(self, path, error):
        OSError.__init__(self, error.errno, error.strerror, str(path))
        self.message = f"{path}: cannot write it: {error.strerror or error}"

    def __str__(self):
        return self.message
