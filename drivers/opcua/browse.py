"""OPC-UA browse: a server's address space under Objects as a list of nodes, for the technician
tool ``collector browse`` (drivers.opcua.tools), which connects with the driver itself."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from asyncua import ua
from asyncua.common.node import Node

if TYPE_CHECKING:
    # A type only: the driver (drivers.opcua.driver) stays the one that makes clients.
    from asyncua import Client


@dataclass(frozen=True, slots=True)
class BrowsedNode:
    depth: int
    path: str
    node_id: str  # as the config's `node:` takes it
    namespace_uri: str | None  # with `id`, the form that survives a namespace index change
    id: str
    node_class: str
    data_type: str | None
    value: str | None

    def line(self) -> str:
        """One line of the browse tree."""
        name = self.path.rsplit("/", 1)[-1]
        text = f"{'  ' * self.depth}{name}  [{self.node_class}] {self.node_id}"
        if self.data_type is not None:
            text += f"  {self.data_type}"
        if self.value is not None:
            text += f" = {self.value}"
        return text


async def browse_nodes(
    client: Client, max_depth: int = 6, max_nodes: int = 5000, standard: bool = False
) -> list[BrowsedNode]:
    """The address space under Objects, depth first, bounded in depth and node count;
    ``standard`` includes the OPC-UA standard's own objects (Server, ...)."""
    out: list[BrowsedNode] = []
    array = await client.get_namespace_array()

    async def visit(node: Node, path: str, depth: int) -> None:
        for child in await node.get_children():
            if len(out) >= max_nodes:
                return
            if depth == 0 and child.nodeid.NamespaceIndex == 0 and not standard:
                continue  # Server, Aliases, ...: the standard's own objects, not a machine's
            name = (await child.read_browse_name()).Name
            node_class = await child.read_node_class()
            child_path = f"{path}/{name}"
            data_type = value = None
            if node_class is ua.NodeClass.Variable:
                with contextlib.suppress(Exception):
                    type_id = await child.read_data_type()
                    data_type = (await client.get_node(type_id).read_browse_name()).Name
                with contextlib.suppress(Exception):
                    value = repr(await child.read_value())[:60]
            node_id: str = child.nodeid.to_string()
            index = child.nodeid.NamespaceIndex
            uri = array[index] if 0 < index < len(array) else None
            out.append(
                BrowsedNode(
                    depth,
                    child_path,
                    node_id,
                    uri,
                    node_id.split(";", 1)[-1],
                    node_class.name,
                    data_type,
                    value,
                )
            )
            if node_class is ua.NodeClass.Object and depth < max_depth:
                await visit(child, child_path, depth + 1)

    await visit(client.nodes.objects, "", 0)
    return out
