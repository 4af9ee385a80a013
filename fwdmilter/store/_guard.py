"""One decorator for both backends: their library's exceptions become store errors."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from fwdmilter.errors import StoreError

__all__ = ["guarded_by"]


class _Named(Protocol):
    @property
    def name(self) -> str:
        """The store's name in messages (its URL without the password)."""


_S = TypeVar("_S", bound=_Named)
_E = TypeVar("_E", bound=BaseException)
_P = ParamSpec("_P")
_T = TypeVar("_T")


def guarded_by(
    errors: type[_E] | tuple[type[_E], ...],
    translate: Callable[[_E, str], StoreError],
) -> Callable[[Callable[Concatenate[_S, _P], _T]], Callable[Concatenate[_S, _P], _T]]:
    """A decorator that turns ``errors`` raised by a store method into the
    store error ``translate(exc, store.name)`` says."""

    def decorate(method: Callable[Concatenate[_S, _P], _T]) -> Callable[Concatenate[_S, _P], _T]:
        @functools.wraps(method)
        def wrapper(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
            try:
                return method(self, *args, **kwargs)
            except errors as exc:
                raise translate(exc, self.name) from exc

        return wrapper

    return decorate
