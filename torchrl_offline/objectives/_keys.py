"""The batch entries a loss reads, computed once and recomputed after ``set_keys``."""

from __future__ import annotations

from tensordict.utils import NestedKey

__all__ = ["LazyInKeys"]


class LazyInKeys:
    """Mixin for a ``LossModule`` whose :attr:`in_keys` are built by ``_set_in_keys``.

    The list is built on first use and kept; the loss sets ``self._in_keys = None``
    when its keys change (in ``_forward_value_estimator_keys``, which ``set_keys``
    calls) so that the next read rebuilds it. Assigning :attr:`in_keys` replaces it.

    Examples:
        >>> from torchrl_offline.objectives._keys import LazyInKeys
        >>> class Loss(LazyInKeys):
        ...     def _set_in_keys(self):
        ...         self._in_keys = ["observation", "action"]
        >>> Loss().in_keys
        ['observation', 'action']
    """

    _in_keys: list[NestedKey] | None = None

    def _set_in_keys(self) -> None:
        raise NotImplementedError

    @property
    def in_keys(self) -> list[NestedKey]:
        """The batch entries the loss reads."""
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values) -> None:
        self._in_keys = values
