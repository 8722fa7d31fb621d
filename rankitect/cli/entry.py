"""What every console script does around its body: a user's mistake (a bad config value, an
unknown key, a bad data row, a missing file) ends the command with one line on stderr and exit
status 2; a bug in Rankitect keeps its traceback (so does everything with HYDRA_FULL_ERROR=1);
third-party messages that are not the user's business are silenced."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

USER_ERROR_EXIT = 2

# Raised by Rankitect for a user's input (the project's convention: a clear ValueError naming
# the key, file or field) or by the OS for a path the user gave.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
# A config whose keys do not fit the constructor of its _target_.
_SIGNATURE = re.compile(r"unexpected keyword argument|missing \d+ required|takes \d+ positional")
# torch re-raises a DataLoader worker's DataFormatError as a RuntimeError carrying its traceback.
_WORKER_DATA_ERROR = re.compile(r"^Caught \w*(?:DataFormatError|DataFileNotFoundError) in ")
_FULL_KEY = re.compile(r"^full_key: (\S+)$", re.MULTILINE)

F = TypeVar("F", bound=Callable[..., Any])


def _keyed(key: str | None, text: str) -> str:
    """``text`` on one line, after the config key it is about (when known)."""
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return f"config {key}: {text}" if key else text


def user_error_message(err: BaseException) -> str | None:
    """The one-line message of ``err`` when it is a user's mistake, None when it is a bug.

    Hydra wraps an error raised while instantiating a config in an `InstantiationException`;
    its cause decides, and the message names the config key.
    """
    key = None
    while isinstance(err, InstantiationException):
        match = _FULL_KEY.search(str(err))
        key = match.group(1) if match else key
        first, cause = str(err).splitlines()[0], err.__cause__
        if first.startswith("Error locating target"):  # a misspelt _target_
            return _keyed(key, first.split(", set env var HYDRA_FULL_ERROR")[0])
        if isinstance(cause, TypeError) and _SIGNATURE.search(str(cause)):
            return _keyed(key, str(cause))
        if cause is None:
            return None
        err = cause
    if isinstance(err, MissingMandatoryValue | InterpolationResolutionError):
        # OmegaConf's first line names the key; the rest repeats it with object types.
        return str(err).splitlines()[0]
    if isinstance(err, RuntimeError) and _WORKER_DATA_ERROR.match(str(err)):
        last = str(err).strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    if isinstance(err, USER_ERRORS):
        return _keyed(key, str(err))
    return None


class _DropTips(logging.Filter):
    """Lightning's advertisements ("Tip: ... try installing litlogger")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


_TIPS = _DropTips()


def quiet_third_party() -> None:
    """Silence what every run would print but no user can act on: Lightning 2.6's own use of a
    torch class deprecated in torch 2.13, torchdata 0.11's call of the deprecated
    ``torch.set_vital`` in every `StatefulDataLoader`, and Lightning's product tips."""
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
    # lightning_utilities logs rank-zero messages through whichever of these it was given last.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _TIPS not in logger.filters:
            logger.addFilter(_TIPS)


def check_no_missing(cfg: DictConfig) -> None:
    """Name a mandatory value (``???``) left unset before anything runs: a ``_partial_`` target
    would otherwise fail later with a TypeError about a missing argument."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(
            f"missing value for {', '.join(missing)}: set it on the command line, "
            f"e.g. {missing[0]}=..."
        )


def console_script(prog: str) -> Callable[[F], F]:
    """Decorate the body of console script ``prog``: inside ``@hydra.main``, so that Hydra's
    traceback printer never sees a user's mistake; a Hydra body's config is checked by
    `check_no_missing` first."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            quiet_third_party()
            try:
                if args and isinstance(args[0], DictConfig):
                    check_no_missing(args[0])
                return fn(*args, **kwargs)
            except Exception as err:
                message = user_error_message(err)
                if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                sys.stderr.write(f"{prog}: error: {message}\n")
                sys.exit(USER_ERROR_EXIT)

        return run  # type: ignore[return-value]

    return decorate
