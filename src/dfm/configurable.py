"""Objects that remember how they were made, so that a model of them can be saved and rebuilt (``dfm.saving``)."""

from __future__ import annotations

import functools
import inspect
from typing import Any


class Configurable:
    """Mixin that records the arguments of the instance's ``__init__`` in ``init_args`` (defaults filled in),
    so that ``dfm.saving`` can rebuild it. Only the arguments of the most derived ``__init__`` are kept."""

    init_args: dict[str, Any]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kw) -> None:
            if init_owner(type(self)) is cls:  # not when a subclass's __init__ calls this one
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                arguments = dict(list(bound.arguments.items())[1:])
                for name, p in list(signature.parameters.items())[1:]:
                    if p.kind is p.VAR_KEYWORD:
                        arguments |= arguments.pop(name)
                    elif p.kind is p.VAR_POSITIONAL:
                        raise TypeError(f"{cls.__qualname__}: a Configurable __init__ cannot take *{name}")
                object.__setattr__(self, "init_args", arguments)  # before nn.Module.__init__ has run
            init(self, *args, **kw)

        cls.__init__ = recording_init


def init_owner(cls: type) -> type:
    """The class whose ``__init__`` instances of ``cls`` run."""
    return next(c for c in cls.__mro__ if "__init__" in c.__dict__)
