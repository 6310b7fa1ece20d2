from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from torchrl_offline import registry


@pytest.fixture
def fresh_registry(monkeypatch):
    """Isolate registrations and entry-point loading made by a test."""
    entries = {kind: dict(table) for kind, table in registry._entries.items()}
    monkeypatch.setattr(registry, "_entries", entries)
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    return registry


def test_builtin_losses_are_named():
    assert {"iql", "cql", "awac", "td3_bc", "bc", "discrete_iql", "discrete_cql"} <= set(
        registry.names("loss")
    )


def test_register_get_and_decorator(fresh_registry):
    fresh_registry.register("hook", "a", print)
    assert fresh_registry.get("hook", "a") is print

    @fresh_registry.register("hook", "b")
    def b():
        return 1

    assert fresh_registry.get("hook", "b") is b
    with pytest.raises(registry.RegistryError, match="already registered"):
        fresh_registry.register("hook", "a", len)
    fresh_registry.register("hook", "a", len, replace=True)
    assert fresh_registry.get("hook", "a") is len


def test_lazy_import_string(fresh_registry):
    fresh_registry.register("hook", "dumps", "json:dumps")
    import json

    assert fresh_registry.get("hook", "dumps") is json.dumps
    fresh_registry.register("hook", "broken", "no_such_module_xyz:thing")
    with pytest.raises(registry.RegistryError, match="cannot be imported"):
        fresh_registry.get("hook", "broken")


def test_unknown_names_list_valid_ones(fresh_registry):
    with pytest.raises(registry.RegistryError, match="valid names: .*iql"):
        fresh_registry.get("loss", "nope")
    with pytest.raises(registry.RegistryError, match="valid kinds"):
        fresh_registry.names("bogus")
    with pytest.raises(KeyError, match="valid names"):  # also a KeyError, as dict lookups
        fresh_registry.get("loss", "x")


def test_entry_points(fresh_registry, monkeypatch):
    eps = [
        EntryPoint(name="loss:plugin_algo", value="json:loads", group=registry.ENTRY_POINT_GROUP)
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    assert "plugin_algo" in fresh_registry.names("loss")
    import json

    assert fresh_registry.get("loss", "plugin_algo") is json.loads


def test_bad_entry_point_name(fresh_registry, monkeypatch):
    eps = [EntryPoint(name="nokind", value="json:loads", group=registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    with pytest.raises(registry.RegistryError, match="'<kind>:<name>'"):
        fresh_registry.names("loss")


@pytest.mark.parametrize("kind", registry.KINDS)
def test_every_builtin_resolves(kind):
    from torchrl_offline.objectives.declaration import AlgorithmDeclaration

    for name in registry.names(kind):
        obj = registry.get(kind, name)
        if kind == "algorithm":
            assert isinstance(obj, AlgorithmDeclaration) and obj.name == name
        else:
            assert callable(obj), (kind, name)


def test_every_algorithm_loss_is_a_loss():
    """An algorithm's loss class is the loss of the same name."""
    for name in registry.names("algorithm"):
        assert name in registry.names("loss")
        assert registry.get("loss", name) is registry.get("algorithm", name).loss_class
