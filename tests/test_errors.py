"""Each package's exceptions form one family, drawn in its errors module (STYLE practice 6)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

from emulator.containers.errors import ContainersEmulatorError
from emulator.durable_objects.errors import DurableObjectError
from emulator.fly_api.errors import FlyEmulatorError
from emulator.model.errors import OfflineModelError
from kit.bundle.errors import ConfigError
from kit.cli.errors import CliError
from kit.client.errors import ClientError
from kit.deploy.errors import DeployError
from kit.errors import KitError
from kit.host.errors import HostError, SandboxError
from kit.mail.errors import MailChannelError
from kit.protocol.errors import SessionProtocolError
from kit.runtime.errors import AgentRuntimeError
from kit.storage.errors import StoreError

FAMILIES: list[tuple[str, type[BaseException], str | None]] = [
    # (package, the base every exception it defines must subclass, the module drawing the tree)
    ("kit", KitError, "kit.errors"),  # kit's own top-level modules (kit.tiers, kit.ids, …)
    ("kit.protocol", SessionProtocolError, "kit.protocol.errors"),
    ("kit.bundle", ConfigError, "kit.bundle.errors"),
    ("kit.storage", StoreError, "kit.storage.errors"),
    ("kit.host", HostError, "kit.host.errors"),
    ("kit.runtime", AgentRuntimeError, "kit.runtime.errors"),
    ("kit.client", ClientError, "kit.client.errors"),
    ("kit.cli", CliError, "kit.cli.errors"),
    ("kit.deploy", DeployError, "kit.deploy.errors"),
    ("kit.mail", MailChannelError, "kit.mail.errors"),
    ("emulator.durable_objects", DurableObjectError, "emulator.durable_objects.errors"),
    ("emulator.model", OfflineModelError, "emulator.model.errors"),
    ("emulator.fly_api", FlyEmulatorError, "emulator.fly_api.errors"),
    ("emulator.containers", ContainersEmulatorError, "emulator.containers.errors"),
    # It implements kit.host's sandbox seam, so it raises that seam's errors; it draws none.
    ("emulator.sandbox", SandboxError, None),
    # The chat page's static files: no Python of its own, so no exceptions (any it grew
    # would have to be KitErrors).
    ("kit.web", KitError, None),
]


def _modules(package: str) -> list[ModuleType]:
    """The package's modules (for ``kit``, only its top-level ones), never a ``__main__``."""
    root = importlib.import_module(package)
    if package == "kit":
        names = [f"kit.{m.name}" for m in pkgutil.iter_modules(root.__path__) if not m.ispkg]
    else:
        found = pkgutil.walk_packages(root.__path__, prefix=f"{package}.")
        names = [package, *(m.name for m in found)]
    return [importlib.import_module(n) for n in names if not n.endswith(".__main__")]


def _exceptions(package: str) -> list[type[BaseException]]:
    return [
        obj
        for module in _modules(package)
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == module.__name__
    ]


@pytest.mark.parametrize(("package", "base", "tree"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_exception_of_a_package_is_in_its_family_and_drawn(
    package: str, base: type[BaseException], tree: str | None
) -> None:
    """Every exception class a package defines subclasses the package's base (and so
    KitError), and every public one is named in the tree its errors module draws."""
    assert issubclass(base, KitError)
    found = _exceptions(package)
    outsiders = [f"{c.__module__}.{c.__qualname__}" for c in found if not issubclass(c, base)]
    assert outsiders == [], f"not under {base.__name__}: {outsiders}"
    if tree is None:
        return
    drawing = importlib.import_module(tree).__doc__ or ""
    assert base.__name__ in drawing
    undrawn = [c.__name__ for c in found if not c.__name__.startswith("_")]
    undrawn = [name for name in undrawn if name not in drawing]
    assert undrawn == [], f"not drawn in {tree}'s docstring: {undrawn}"


def test_the_families_cover_every_package() -> None:
    """A new package of kit or the emulator gets a family here (or the test says so)."""
    covered = {package for package, _, _ in FAMILIES}
    packages = {
        f"{root}.{m.name}"
        for root in ("kit", "emulator")
        for m in pkgutil.iter_modules(importlib.import_module(root).__path__)
        if m.ispkg
    }
    assert packages - covered == set()
