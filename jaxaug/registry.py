"""String registries for datasets, models, methods and transforms (big_vision style)."""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps names to objects; unknown names raise a ValueError listing the valid ones.

  Usage::

    MODELS = Registry("model")

    @MODELS.register("resnet18")
    def resnet18(...): ...

    MODELS.get("resnet18")
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator registering `obj` under `name`; a name may be registered once."""

    def decorator(obj: T) -> T:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is already registered")
      self._entries[name] = obj
      return obj

    return decorator

  def get(self, name: str) -> T:
    """The object registered under `name`; ValueError naming the valid ones if none."""
    try:
      return self._entries[name]
    except KeyError:
      raise ValueError(
          f"unknown {self.kind} {name!r}; valid {self.kind} names: {', '.join(self.names())}"
      ) from None

  def names(self) -> list[str]:
    """Registered names, sorted."""
    return sorted(self._entries)

  def __contains__(self, name: Any) -> bool:
    return name in self._entries
