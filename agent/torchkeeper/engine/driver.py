"""The NVIDIA driver, as NVML sees it.

This is the one module that talks to NVML (the ``nvidia-ml-py`` package, import name ``pynvml``).
Like nvitop's API, every call degrades to a typed answer instead of raising for a condition a user
can meet (no driver, driver not loaded, driver updated but not yet reloaded, a GPU that does not
answer): :func:`query` always returns a :class:`DriverStatus`.

States (``DriverStatus.state``):

``ok``
    NVML initialised. ``version``/``cuda``/``gpus`` hold what could be read; a field that could not
    be read is ``None`` and the reason is in ``problems`` (one GPU failing does not lose the others).
``no_driver``
    NVML's library (``libnvidia-ml.so.1`` / ``nvml.dll``) cannot be loaded: no NVIDIA driver.
``not_loaded``
    The library is there but the kernel driver is not running (NVML_ERROR_DRIVER_NOT_LOADED).
``reboot_needed``
    The driver was updated but the old kernel module is still loaded (NVML_ERROR_LIB_RM_VERSION_MISMATCH).
``error``
    Anything else: ``pynvml`` missing or broken, another NVML error (message carries NVML's text).

pynvml keeps the loaded library for the life of the process, but each :func:`query` runs its own
``nvmlInit``/``nvmlShutdown`` pair, so a long-running process (the tray, the watcher) sees driver
updates, reboots-needed and recoveries on its next poll. NVML reference-counts init/shutdown, so this
is safe next to other NVML users (torch.cuda) in the same process.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from .records import JsonObject
from ..i18n import _, ngettext

OK = "ok"
NO_DRIVER = "no_driver"
NOT_LOADED = "not_loaded"
REBOOT_NEEDED = "reboot_needed"
ERROR = "error"
STATES = (OK, NO_DRIVER, NOT_LOADED, REBOOT_NEEDED, ERROR)

_REINSTALL_HINT = ("reinstall torchkeeper (`pip install --force-reinstall torchkeeper`): "
                   "it needs the nvidia-ml-py package to read the driver")


@dataclass
class DriverStatus:
    """What :func:`query` found.

    ``message`` and ``hint`` are set for every state but ``ok``: what happened, and what to do.
    ``problems`` lists partial failures in an ``ok`` answer (a GPU whose name could not be read, ...).
    """

    state: str
    version: str | None = None
    cuda: str | None = None
    gpus: list[JsonObject] = field(default_factory=list)
    message: str | None = None
    hint: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state == OK

    def to_dict(self) -> JsonObject:
        """A JSON-ready dict of all fields (gpus copied)."""
        return asdict(self)

    def summary(self) -> str:
        """One line for the CLI or the tray.

        ``driver 551.86, CUDA 12.4, 1 GPU (NVIDIA GeForce RTX 4070)`` when ok (unknown parts say so,
        and the first partial failure is appended); the message otherwise.
        """
        if not self.ok:
            return self.message or f"NVIDIA driver: {self.state}"
        parts = [
            _("driver %(version)s") % {"version": self.version}
            if self.version
            else _("driver version unknown"),
            f"CUDA {self.cuda}" if self.cuda else _("CUDA version unknown"),
        ]
        if not self.gpus:
            parts.append(_("no GPU"))
        else:
            names = Counter(g.get("name") or f"GPU {g.get('index')}" for g in self.gpus)
            listed = ", ".join(name if n == 1 else f"{name} x{n}" for name, n in names.items())
            count = len(self.gpus)
            parts.append(
                ngettext("%(n)d GPU (%(names)s)", "%(n)d GPUs (%(names)s)", count)
                % {"n": count, "names": listed}
            )
        line = ", ".join(parts)
        if self.problems:
            more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            line += f" [{self.problems[0]}{more}]"
        return line


def _text(value) -> str | None:
    """pynvml returns str in recent versions and bytes in old ones; None stays None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _nvml_text(err: BaseException) -> str:
    """NVML's own text for an error, never raising (NVMLError.__str__ may call into the library).

    Exceptions other than NVMLError (a binding without a call, a ctypes error) get their type name.
    """
    try:
        text = str(err)
    except Exception:  # noqa: BLE001 - a broken binding must not break the status
        text = ""
    if type(err).__name__.startswith("NVMLError"):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _cuda_string(v: int) -> str:
    """12040 -> '12.4' (NVML encodes major*1000 + minor*10)."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def _import_pynvml():
    """Import the binding quietly (the deprecated ``pynvml`` PyPI shim warns on import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pynvml  # noqa: PLC0415 - lazy on purpose: importing must not need a driver
    return pynvml


def query() -> DriverStatus:
    """Ask NVML about the driver and GPUs; never raises.

    - pynvml cannot be imported (or lacks the calls) -> ``error``, hint: reinstall torchkeeper.
    - NVMLError_LibraryNotFound at init -> ``no_driver``.
    - NVMLError_DriverNotLoaded at init -> ``not_loaded``.
    - NVMLError_LibRmVersionMismatch at init -> ``reboot_needed``.
    - any other error at init -> ``error`` with NVML's message.
    - after a successful init the answer is ``ok``; the driver version, the CUDA version and each
      GPU's name and UUID are read one by one, and a failure leaves that field ``None`` and adds a
      line to ``problems`` (NVMLError_FunctionNotFound for the CUDA version, from an old driver,
      only leaves ``cuda`` None). ``nvmlShutdown`` is called in a ``finally`` after a successful init;
      its own failure is ignored.
    - an unexpected exception from the binding (a bug, not a driver condition) also degrades to
      ``error`` with the exception's text, so a polling tray never dies on it.
    """
    try:
        nv = _import_pynvml()
        error_base = nv.NVMLError
    except Exception as e:  # noqa: BLE001 - ImportError, or a foreign "pynvml" without NVMLError
        return DriverStatus(
            ERROR,
            message=_("cannot load the NVML Python binding (pynvml): %(e)s") % {"e": e},
            hint=_REINSTALL_HINT,
        )

    try:
        nv.nvmlInit()
    except error_base as e:
        return _init_failure(nv, e)
    except Exception as e:  # noqa: BLE001
        return DriverStatus(
            ERROR,
            message=_("NVML could not start: %(__name__)s: %(e)s") % {"__name__": type(e).__name__, "e": e},
            hint=_REINSTALL_HINT,
        )

    status = DriverStatus(OK)
    try:
        _read(nv, status)
    except Exception as e:  # noqa: BLE001 - bug guard, see docstring
        status.problems.append(f"reading the driver failed: {type(e).__name__}: {e}")
    finally:
        try:
            nv.nvmlShutdown()
        except Exception:  # noqa: BLE001 - nothing useful to do about a failed shutdown
            pass
    return status


def _is(nv, err: BaseException, name: str) -> bool:
    cls = getattr(nv, name, None)
    return isinstance(cls, type) and isinstance(err, cls)


def _init_failure(nv, e: BaseException) -> DriverStatus:
    text = _nvml_text(e)
    if _is(nv, e, "NVMLError_LibraryNotFound"):
        return DriverStatus(
            NO_DRIVER,
            message=_("no NVIDIA driver found (libnvidia-ml / nvml.dll not loadable)"),
            hint=_(
                "install the NVIDIA driver for your GPU (https://www.nvidia.com/drivers); "
                "without it PyTorch can only use the CPU"
            ),
        )
    if _is(nv, e, "NVMLError_DriverNotLoaded"):
        return DriverStatus(
            NOT_LOADED,
            message=_("the NVIDIA driver is installed but not running (NVML: %(text)s)") % {"text": text},
            hint=_(
                "check that the GPU is present and enabled; reboot, or on Linux load the "
                "kernel module (`sudo modprobe nvidia`); reinstall the driver if that "
                "does not help"
            ),
        )
    if _is(nv, e, "NVMLError_LibRmVersionMismatch"):
        return DriverStatus(
            REBOOT_NEEDED,
            message=_(
                "the NVIDIA driver was updated but the old one is still loaded: reboot to finish the update"
            ),
            hint=_("driver updated: reboot to finish"),
        )
    return DriverStatus(
        ERROR,
        message=_("NVML could not start: %(text)s") % {"text": text},
        hint=_(
            "run `nvidia-smi` to see what the driver says; a reboot or a driver reinstall "
            "fixes most NVML errors"
        ),
    )


def _read(nv, status: DriverStatus) -> None:
    """Fill version, cuda and gpus after a successful init; record failures in problems.

    Each call is guarded on its own (``except Exception``: NVMLError, or AttributeError from an old
    binding without the call), so one failure loses only its own field.
    """
    try:
        status.version = _text(nv.nvmlSystemGetDriverVersion())
    except Exception as e:  # noqa: BLE001
        status.problems.append(f"driver version unreadable: {_nvml_text(e)}")

    try:
        status.cuda = _cuda_string(int(nv.nvmlSystemGetCudaDriverVersion_v2()))
    except Exception as e:  # noqa: BLE001
        # FunctionNotFound: a driver older than the call; the CUDA version is just unknown.
        if not _is(nv, e, "NVMLError_FunctionNotFound"):
            status.problems.append(f"CUDA version unreadable: {_nvml_text(e)}")

    try:
        count = int(nv.nvmlDeviceGetCount())
    except Exception as e:  # noqa: BLE001
        status.problems.append(f"GPU count unreadable: {_nvml_text(e)}")
        return

    for i in range(count):
        gpu: JsonObject = {"index": i, "name": None, "uuid": None}
        errors = []
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(i)
        except Exception as e:  # noqa: BLE001
            errors.append(f"GPU {i} does not answer: {_nvml_text(e)}")
        else:
            for key, call in (("name", nv.nvmlDeviceGetName), ("uuid", nv.nvmlDeviceGetUUID)):
                try:
                    gpu[key] = _text(call(handle))
                except Exception as e:  # noqa: BLE001
                    errors.append(f"GPU {i} {key} unreadable: {_nvml_text(e)}")
            cc = _compute_capability(nv, handle)
            if cc is not None:
                gpu["compute_capability"] = cc
        if errors:
            gpu["error"] = "; ".join(errors)
            status.problems.extend(errors)
        status.gpus.append(gpu)


def _compute_capability(nv, handle) -> str | None:
    """'8.9' for an RTX 4070; None where the driver (or the binding) does not say: it only
    narrows which cuDNN releases fit (9.11 and later need 7.5), so its absence is no problem."""
    try:
        major, minor = nv.nvmlDeviceGetCudaComputeCapability(handle)
        return f"{int(major)}.{int(minor)}"
    except Exception:  # noqa: BLE001 - NVMLError_NotSupported, an old binding without the call
        return None


def lowest_compute_capability(status: DriverStatus) -> tuple[int, int] | None:
    """The oldest GPU architecture NVML reported (a library must run on every GPU)."""
    ccs = []
    for g in status.gpus if status is not None else ():
        m = _VERSION.match(str(g.get("compute_capability") or ""))
        if m and g.get("compute_capability"):
            ccs.append((int(m.group(1)), int(m.group(2) or 0)))
    return min(ccs) if ccs else None


_VERSION = re.compile(r"^\s*(\d+)(?:\.(\d+))?")


def _major_minor(v: str | None) -> tuple[int, int] | None:
    if v is None:
        return None
    m = _VERSION.match(str(v))
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


def cuda_supports(driver_cuda: str | None, needed: str | None) -> bool | None:
    """Whether a driver whose CUDA version is ``driver_cuda`` runs a CUDA ``needed`` runtime.

    Compares major.minor ('12.4' >= '12.1'; '12' means '12.0'; a patch part is ignored).
    Returns None when either side is unknown (None or not a version). This is the strict rule:
    CUDA's minor-version compatibility lets many 12.x runtimes work on any 12.x driver, so False
    within one major means "may fail", across majors "will fail".
    """
    have, want = _major_minor(driver_cuda), _major_minor(needed)
    if have is None or want is None:
        return None
    return have >= want
