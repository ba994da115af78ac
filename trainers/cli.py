"""What the command lines (`python -m trainers.train`, `python -m tune_looped.run`) share, in a module of its
own: an entry module is run as `__main__`, and importing it by name would execute it a second time."""
import argparse
import contextlib
import sys
import warnings


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line gives the one `error: ...` line (exit status 2) that every other bad
    input gives, instead of the usage text followed by the error; `--help` shows the usage."""

    def __init__(self, **kwargs):
        # no abbreviated flags: `--res` must not silently mean `--resume`
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


@contextlib.contextmanager
def one_line_warnings():
    """Python's warnings, within the block, as the one `warning: ...` line every other warning is: a warning names
    the file and key (or the trial) itself, and the source line of the call helps nobody on a command line."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
        yield
