"""Which node ids a dispatcher believes heartbeats from."""

from carbonedge.transport.allowlist import node_allowed


def test_empty_allowlist_allows_every_node() -> None:
    assert node_allowed("node-x", "")
    assert node_allowed("node-x", " , ")


def test_ids_and_patterns() -> None:
    allow = "node-high, node-green-*"
    assert node_allowed("node-high", allow)
    assert node_allowed("node-green-3f2a", allow)
    assert not node_allowed("node-highest", allow)
    assert not node_allowed("node-evil", allow)
