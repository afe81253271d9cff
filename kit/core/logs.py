"""The kit's messages go through `logging` (logger "kit"), to stderr, one line each."""
import logging
import sys

logger = logging.getLogger("kit")


def log(message):
    logger.info(message)


def setup(level=logging.INFO):
    """Called by the CLI (and tests that want the messages): plain lines on stderr."""
    if not any(getattr(h, "_kit", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._kit = True
        logger.addHandler(handler)
    logger.setLevel(level)

# bitsandbytes warns at import, on every run, that an optional CPU kernel package is missing
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
