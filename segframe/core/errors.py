"""The failures a user can cause and fix, in one hierarchy under `SegframeError`.

Library code raises these with a message that names the file, key or value, what was expected,
and the fix. Only the command-line layer (`segframe.core.cli.run`) turns them into a printed paragraph
and exit 1, without a traceback; any other exception is a bug and keeps its traceback.

Each class also derives from the built-in type that callers caught before it existed
(`ValueError`, `FileNotFoundError`, `OSError`, `RuntimeError`), so `except ValueError` around a
config check still works.
"""

from __future__ import annotations

import pickle


class SegframeError(Exception):
    """A failure the user caused (config, data, files, weights, process layout) and can fix."""


class ConfigError(SegframeError, ValueError):
    """A composed config, or a value in it, that cannot work."""


class MissingFileError(SegframeError, FileNotFoundError):
    """A file or folder the user named (a checkpoint, a weights file, an input) does not exist."""


class DatasetNotFoundError(MissingFileError):
    """A raw dataset root or list file is missing; the message says where to get it."""


class SampleError(SegframeError, ValueError):
    """A sample (raw files or shard entries) that breaks the sample contract, or a damaged shard."""


class ManifestError(SegframeError, RuntimeError):
    """A dataset directory without a usable manifest."""


class ConversionInProgress(SegframeError, RuntimeError):
    """Another live process is converting into the same shard directory."""


class LocationError(SegframeError, ValueError):
    """A shard location (path, URL, pipe: command) or file name that segframe refuses."""


class RemoteError(SegframeError, OSError):
    """A file of a remote dataset could not be fetched: an HTTP status, a command's exit status
    and stderr (the message says which)."""

    def __init__(self, message: str, *_: object):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # OSError's own would show errno fields it does not have
        return self.message


class PretrainedWeightsError(SegframeError, RuntimeError):
    """Pretrained weights that cannot be had here (offline) or do not fit the model."""


class CheckpointError(SegframeError, ValueError):
    """A file that is not a loadable segframe checkpoint, or one for another dataset."""


class ResumeError(SegframeError, ValueError):
    """`resume=` names no usable checkpoint."""


class InputError(SegframeError, ValueError):
    """An image the Python API (`segframe.load_model(...).predict`) cannot take: not a path, a PIL
    image or an HxWx3 uint8 array."""


class LaunchError(SegframeError, ValueError):
    """A process layout that cannot work; refused before any training (and it ends a sweep)."""


class ExportError(SegframeError, ValueError):
    """An export that cannot be made or trusted (a parity check failed, a missing `segframe[export]`
    extra), or an exported graph whose sidecar is missing, damaged or contradicts the graph."""


def load_problem(exc: Exception) -> str:
    """torch.load's failure (a checkpoint, an init_from or pretrained weights file) in a line, without
    its advice to turn weights_only off (that would run whatever code a pickle holds: a segframe
    checkpoint never needs it)."""
    text = str(exc)
    after = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else ""
    detail = next((line.strip().split(". ")[0] for line in after.splitlines() if line.strip()), None)
    if detail is not None or "weights_only" in text:
        return ("it holds pickled Python objects, which segframe never unpickles (checkpoints and weights files "
                f"need tensors and plain data only){f'; {detail}' if detail else ''}")
    if isinstance(exc, (pickle.UnpicklingError, KeyError, EOFError)) or "invalid load key" in text:
        return f"not a torch checkpoint file ({type(exc).__name__}: {text.splitlines()[0] if text else ''})"
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else ""  # torch's own advice goes
    return f"damaged, truncated or not a torch file ({type(exc).__name__}: {first})"
