"""Where a converted dataset lives, and opening its files there: a local directory, an
http(s):// URL, or a `pipe:` shell command.

`data.shard_dir` is a LOCATION; each file of the dataset (manifest.json and the shard tars it
lists) is LOCATION + the file's name:

  /data/voc                              /data/voc/train-000000.tar
  https://host/voc                       https://host/voc/train-000000.tar
                                         ({name} in the URL, if present, is replaced instead)
  pipe:aws s3 cp s3://b/voc/{name} -     the command with {name} replaced, run by the shell;
                                         what it writes to stdout is the file

HTTP is read with urllib (streamed, with a timeout on connecting and on every read, a few
retries of transient failures, and resumption of a broken download with a Range request)
rather than WebDataset's `curl -f` pipe: curl's exit status is looked at only when a read
happens to find curl already gone (a 404 is a tar "empty file" error or, depending on timing,
"(['curl', ...]): exit 22"), curl has no read timeout there (a stalled server hangs a worker),
and `--retry 30 --retry-delay 2` keeps a failing download going for minutes.
A pipe's exit status and stderr are checked as soon as its output ends, and a command that
writes nothing for `TIMEOUT` seconds is stopped.
"""

from __future__ import annotations

import http.client
import os
import re
import select
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from segframe.core.errors import ConfigError, LocationError, RemoteError

PLACEHOLDER = "{name}"
# seconds without any data (connecting, or between two reads) before a download is given up
def _env_number(name: str, default: str, kind: type) -> Any:
    try:
        return kind(os.environ.get(name, default))
    except ValueError:
        raise ConfigError(f"environment variable {name}={os.environ[name]!r} is not a number; "
                          f"set it to e.g. {default} or unset it") from None


TIMEOUT = _env_number("SEGFRAME_REMOTE_TIMEOUT", "60", float)
# reconnections per file after a transient HTTP failure (timeout, reset, 5xx), resuming where it broke
RETRIES = _env_number("SEGFRAME_REMOTE_RETRIES", "3", int)

_sleep = time.sleep  # the back-off between retries (tests replace it, not time.sleep itself)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # no leading '-': it would read as an option
_TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}


def kind(location: str | os.PathLike) -> str:
    """"local", "http" or "pipe"."""
    text = str(location)
    if text.startswith("pipe:"):
        return "pipe"
    scheme = _SCHEME.match(text)
    if scheme is None:
        return "local"
    if scheme.group(1).lower() in ("http", "https"):
        return "http"
    raise LocationError(
        f"data.shard_dir={text}: {scheme.group(1)}:// locations are not read directly. Use a local directory, an "
        f"http(s):// URL, or a pipe: command with a {PLACEHOLDER} placeholder for the file name, e.g. "
        f"data.shard_dir=\"pipe:aws s3 cp s3://bucket/voc/{PLACEHOLDER} -\""
    )


def is_remote(location: str | os.PathLike) -> bool:
    return kind(location) != "local"


def check_name(name: str) -> None:
    """File names from a manifest become part of URLs and shell commands: plain names only."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise LocationError(f"{name!r}, which is not a plain file name (letters, digits, '_', '-', '.'; "
                            "no '/', no leading '.')")


def locate(location: str | os.PathLike, name: str) -> str:
    """Where the file `name` of the dataset at `location` is: a path, a URL or a `pipe:` command."""
    check_name(name)
    text = str(location)
    where = kind(location)
    if where == "local":
        return str(Path(location) / name)
    if where == "pipe":
        if PLACEHOLDER not in text:
            raise LocationError(
                f"data.shard_dir={text}: a pipe: location needs the placeholder {PLACEHOLDER} where the file name goes "
                f"(it is replaced by {name} and by each shard's name), e.g. "
                f"data.shard_dir=\"pipe:aws s3 cp s3://bucket/voc/{PLACEHOLDER} -\""
            )
        return text.replace(PLACEHOLDER, name)
    if PLACEHOLDER in text:
        return text.replace(PLACEHOLDER, name)
    return text.rstrip("/") + "/" + name


def refuse_write(location: str | os.PathLike) -> None:
    """Converting writes local files only."""
    if is_remote(location):
        raise LocationError(
            f"cannot convert into data.shard_dir={location}: remote locations (http(s):// URLs, pipe: commands) are "
            "read-only. Convert into a local directory (data.shard_dir=/some/dir), upload that directory's "
            "manifest.json and .tar files, then train or evaluate with data.shard_dir set to where they are served"
        )


def open_stream(url: str, timeout: float | None = None) -> Any:
    """A binary stream (read(n), close()) of the file at `url` (a path, an http(s) URL or a pipe:
    command). Transport failures raise RemoteError; a missing local file FileNotFoundError."""
    timeout = TIMEOUT if timeout is None else timeout
    where = kind(url)
    if where == "http":
        return _HttpStream(url, timeout, RETRIES)
    if where == "pipe":
        return _PipeStream(url[len("pipe:"):], timeout)
    return open(url, "rb")  # noqa: SIM115 (the caller closes it)


def read_bytes(url: str, timeout: float | None = None) -> bytes:
    stream = open_stream(url, timeout)
    try:
        chunks = []
        while chunk := stream.read(1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        stream.close()


class _HttpStream:
    """An HTTP(S) download read as a stream; a connection that breaks (timeout, reset, closed
    before Content-Length bytes) is resumed with a Range request up to `retries` times."""

    def __init__(self, url: str, timeout: float, retries: int):
        self.url, self.timeout, self.retries = url, timeout, retries
        self.pos, self.total, self.failures = 0, None, 0
        self.validator: str | None = None  # ETag / Last-Modified: a resume must continue the same file
        self.resp: Any = self._connect()

    def _connect(self) -> Any:
        headers = {"User-Agent": "segframe"}
        if self.pos:
            headers["Range"] = f"bytes={self.pos}-"
            if self.validator:
                headers["If-Range"] = self.validator
        while True:
            try:
                resp = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=self.timeout)
                break
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code in _TRANSIENT_HTTP and self._again():
                    continue
                hint = " (no such file on the server)" if exc.code == 404 else ""
                raise RemoteError(f"HTTP {exc.code} {exc.reason}{hint}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                if _transient(reason) and self._again():
                    continue
                raise RemoteError(f"cannot connect: {_describe(reason, self.timeout)}") from None
        if self.pos == 0:
            length = resp.headers.get("Content-Length")
            identity = resp.headers.get("Content-Encoding") in (None, "", "identity")
            self.total = int(length) if length and length.isdigit() and identity else None
            self.validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
        elif resp.status != 206 or not (resp.headers.get("Content-Range") or "").startswith(f"bytes {self.pos}-"):
            resp.close()
            total = f" of {self.total}" if self.total is not None else ""
            raise RemoteError(f"the download broke after {self.pos}{total} bytes and the server cannot resume it "
                              "(no byte-range support, or the file changed meanwhile)")
        return resp

    def _again(self) -> bool:
        if self.failures >= self.retries:
            return False
        self.failures += 1
        _sleep(min(2 ** (self.failures - 1), 8))
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        while True:
            try:
                data = self.resp.read(n)
            except (OSError, http.client.HTTPException) as exc:
                problem = _describe(exc, self.timeout)
            else:
                if data or n == 0:
                    self.pos += len(data)
                    return data
                if self.total is None or self.pos >= self.total:
                    return b""
                problem = "the server closed the connection"
            self.resp.close()
            if not self._again():
                total = f" of {self.total}" if self.total is not None else ""
                tries = f" ({self.failures} resumption(s) tried)" if self.failures else ""
                raise RemoteError(f"download broke after {self.pos}{total} bytes: {problem}{tries}")
            self.resp = self._connect()

    def close(self) -> None:
        self.resp.close()


def _transient(reason: Any) -> bool:
    """Worth another try: timeouts and dropped connections (not a refused connection or an unknown host)."""
    return isinstance(reason, (TimeoutError, ConnectionResetError, ConnectionAbortedError,
                               http.client.RemoteDisconnected, http.client.IncompleteRead))


def _describe(reason: Any, timeout: float) -> str:
    if isinstance(reason, TimeoutError):
        return f"no data for {timeout:g} s (timed out; SEGFRAME_REMOTE_TIMEOUT sets the limit)"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


class _PipeStream:
    """The stdout of a shell command. Its exit status is checked as soon as the output ends;
    no output for `timeout` seconds stops it."""

    def __init__(self, command: str, timeout: float):
        self.command, self.timeout = command, timeout
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty command cannot block on it
        # its own process group, so that stopping it also stops what the shell started
        self.proc = subprocess.Popen(command, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._stderr, bufsize=0, start_new_session=os.name == "posix")
        self._poll = hasattr(select, "poll")  # not on Windows: reads there just block

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        if self.proc.stdout is None or self.proc.stdout.closed:
            return b""
        if self._poll:
            poller = select.poll()
            poller.register(self.proc.stdout, select.POLLIN | select.POLLHUP | select.POLLERR)
            if not poller.poll(self.timeout * 1000):
                tail = self._stderr_tail()
                self.close()
                raise RemoteError(f"the command wrote nothing for {self.timeout:g} s and was stopped "
                                  f"(SEGFRAME_REMOTE_TIMEOUT sets the limit){tail}")
        data = self.proc.stdout.read(n)
        if not data and n:
            self._finish()
        return data

    def _finish(self) -> None:
        try:
            status = self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise RemoteError(f"the command closed its output but did not exit within {self.timeout:g} s") from None
        if status != 0:
            raise RemoteError(f"the command exited with status {status}{self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            text = self._stderr.read()[-2000:].decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""
        return f"; its stderr: {text}" if text else "; it wrote nothing to stderr"

    def close(self) -> None:
        if self.proc.poll() is None:  # read no further: an unfinished download is abandoned
            if os.name == "posix":
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    self.proc.kill()
            else:
                self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
