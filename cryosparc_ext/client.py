"""Every call cryolens makes to a CryoSPARC instance, behind one small interface (the version seam).

cryosparc-tools must match the server's major.minor: 4.x speaks JSON-RPC on base_port+2/+3/+5 and
has ``cryosparc.job.ExternalJob``; 5.x speaks REST at ``{base_url}/api/cmd`` and has
``ExternalJobController`` (``stop(error: str)``, ``job.dir`` a property, ``.model`` not ``.doc``).
:func:`connect` picks the implementation for the installed cryosparc-tools. Supported now: 5.0
(CryoSPARC v5.0). A 4.x implementation is another ``Session``/``ExternalJob`` pair with the same
methods; nothing else in cryolens imports ``cryosparc.tools`` or ``cryosparc.controllers``.
(``cryosparc.dataset.Dataset`` is used freely elsewhere: the .cs format is the same in 4.x and 5.x.)
"""
from __future__ import annotations

import contextlib
import getpass
import io
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from cryosparc.dataset import Dataset

from cryolens.core.errors import CryolensError

# installed cryosparc-tools major.minor -> the CryoSPARC server versions it talks to
SUPPORTED = {"5.0": "CryoSPARC v5.0.x"}
_VERSION = re.compile(r"^v?(\d+)\.(\d+)")


class JobFailed(CryolensError):
    """The external job was marked failed with this (readable) message."""


def tools_version() -> str:
    from cryosparc import __version__

    return __version__


def _major_minor(version: str) -> str | None:
    m = _VERSION.match(version or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def describe_error(err: BaseException) -> str:
    """One readable line for any failure (server refusals included), without a traceback."""
    from cryosparc.errors import APIError

    if isinstance(err, CryolensError):
        return str(err)
    if isinstance(err, APIError):
        data = err.data if isinstance(err.data, dict) else {}
        detail = data.get("detail") or str(err).split("\n")[0]
        return f"CryoSPARC refused a request (HTTP {err.code}): {detail}"
    if isinstance(err, KeyboardInterrupt):
        return f"interrupted ({err or 'SIGINT'}) before the job finished"
    text = " ".join(str(err).split())  # one line, whatever the library put in it
    return f"internal error: {type(err).__name__}: {text[:400]}"


def connect(url: str | None, email: str | None = None, password: str | None = None, *,
            prompt: bool = False, timeout: int = 300) -> "SessionV5":
    """Log in to CryoSPARC at ``url``: email + password, else a token saved by
    ``python -m cryosparc.tools login --url URL``; ``prompt`` asks for a password on the terminal
    when neither is there. CryolensError if the versions do not match or the login fails."""
    tools = _major_minor(tools_version())
    if tools not in SUPPORTED:
        raise CryolensError(f"cryosparc-tools {tools_version()} is installed; cryolens supports "
                            f"cryosparc-tools {', '.join(SUPPORTED)} ({', '.join(SUPPORTED.values())})")
    if not url:
        raise CryolensError("no CryoSPARC address: pass --url http://HOST:PORT or set CRYOSPARC_BASE_URL "
                            "(the web address of the master)")
    return SessionV5.open(url, email, password, prompt=prompt, timeout=timeout)


class SessionV5:
    """A logged-in cryosparc-tools 5.0 client."""

    def __init__(self, cs: Any, url: str):
        self._cs = cs
        self.url = url
        self.server_version = str(cs.api.config.get_version())
        server = _major_minor(self.server_version)
        tools = _major_minor(tools_version())
        if server != tools:
            raise CryolensError(f"CryoSPARC at {url} is {self.server_version} but cryosparc-tools "
                                f"{tools_version()} is installed: they must share major.minor "
                                f"(pip install 'cryosparc-tools~={server}.0' if cryolens supports it; "
                                f"supported: {', '.join(SUPPORTED.values())})")

    @classmethod
    def open(cls, url: str, email: str | None, password: str | None, *, prompt: bool, timeout: int) -> "SessionV5":
        from cryosparc.tools import CryoSPARC

        def attempt(pw: str | None):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the version check below says it better
                # host/base_port explicitly None: their defaults come from the environment
                return CryoSPARC(url, host=None, base_port=None, email=email, password=pw, timeout=timeout)

        try:
            try:
                cs = attempt(password)
            except ValueError:  # no credentials and no saved login for this URL
                if not (prompt and email):
                    raise
                cs = attempt(getpass.getpass(f"CryoSPARC password for {email} at {url}: "))
        except ValueError:
            raise CryolensError(f"no CryoSPARC login for {url}: set CRYOSPARC_EMAIL and CRYOSPARC_PASSWORD, "
                                f"or save a login once with `python -m cryosparc.tools login --url {url}`") from None
        except RuntimeError as err:
            cause = err.__cause__ or err
            raise CryolensError(f"cannot connect to CryoSPARC at {url}: {describe_error(cause)}") from None
        return cls(cs, url)

    def output_type(self, project: str, job_uid: str, output: str) -> str:
        """The datatype of a job's output ('particle', 'template', 'volume' ...)."""
        try:
            job = self._cs.find_job(project, job_uid)
        except Exception as err:
            raise CryolensError(f"no job {project}-{job_uid}: {describe_error(err)}") from None
        outputs = job.model.spec.outputs.root
        if output not in outputs:
            raise CryolensError(f"job {project}-{job_uid} has no output {output!r} "
                                f"(it has: {', '.join(sorted(outputs)) or 'none'})")
        return outputs[output].type

    def project_dir(self, project: str) -> str:
        return str(self._cs.find_project(project).dir)

    def download(self, project: str, path: str, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        self._cs.download_file(project, path, str(target))
        return target

    def create_job(self, project: str, workspace: str, title: str, desc: str) -> "ExternalJobV5":
        return ExternalJobV5(self._cs.create_external_job(project, workspace, title=title, desc=desc))


class ExternalJobV5:
    """An external ("snowflake") job: declare, connect, run, save, stop."""

    def __init__(self, job: Any):
        self._job = job
        self.uid: str = job.uid
        self.project: str = job.project_uid
        self._failure: str | None = None

    def connect_input(self, name: str, type: str, slots: Sequence[Any], source_job: str, source_output: str,
                      title: str | None = None) -> None:
        self._job.add_input(type, name, min=1, max=1, slots=list(slots), title=title)
        self._job.connect(name, source_job, source_output)

    def load_input(self, name: str, path: Path, slots: str | list[str] = "all") -> Path:
        """Every slot of the connected input (``all``: declared + passthrough) saved as a .cs file."""
        self._job.load_input(name, slots=slots).save(path)
        return path

    def add_output(self, name: str, type: str, slots: Sequence[Any], passthrough: str | None = None,
                   title: str | None = None) -> None:
        self._job.add_output(type, name, slots=list(slots), passthrough=passthrough, title=title)

    def output_fields(self, name: str) -> list[tuple]:
        """The fields the server expects for a declared output (its declared slots)."""
        return [tuple(f) for f in self._job.alloc_output(name, 0).descr(exclude_uid=True)]

    def save_output(self, name: str, dataset: Dataset) -> None:
        self._job.save_output(name, dataset)

    def log(self, text: str, level: str = "text", name: str | None = None) -> None:
        self._job.log(text, level=level, name=name)

    def plot(self, figure: Any, text: str, raw_csv: str | None = None) -> None:
        self._job.log_plot(figure, text, raw_data=raw_csv, raw_data_format="csv" if raw_csv else None)

    def upload(self, path: str, data: bytes) -> None:
        """A file in the job directory (side-car tables)."""
        self._job.upload(path, io.BytesIO(data), overwrite=True)

    def status(self) -> str:
        return str(self._job.refresh().status)

    def fail(self, message: str) -> None:
        """Mark failed a job that never started (e.g. a connection was refused)."""
        with contextlib.suppress(Exception):
            self._job.log(message, level="error")
        self._job.stop(error=message)

    @contextlib.contextmanager
    def running(self) -> Iterator["ExternalJobV5"]:
        """``with job.run()``: running inside, completed after; on any failure an error event with
        one readable line, then failed with that line (not a bare traceback) and JobFailed raised."""
        try:
            with self._job.run():
                try:
                    yield self
                except BaseException as err:  # Ctrl-C too: never "completed" with half the outputs
                    self._failure = describe_error(err)
                    with contextlib.suppress(Exception):
                        self._job.log(self._failure, level="error")
                    raise JobFailed(self._failure) from None  # run() records its short traceback
        except JobFailed:
            raise
        except Exception as err:
            if self._failure is not None:  # marking it failed was refused (e.g. already killed)
                raise JobFailed(self._failure) from None
            raise JobFailed(describe_error(err)) from None
