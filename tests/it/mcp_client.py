"""A client of `lattice-wasm mcp`, written with the official MCP Python SDK.

Usage: mcp_client.py LATTICE_BINARY [server args...]. Opens two connections
to the server, one after the other, calls the `run_python` tool on them and
prints what it observed as one JSON object (the Rust test asserts on it).
"""

import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def text_of(result):
    return "".join(part.text for part in result.content if part.type == "text")


async def connection(params, calls):
    observed = {}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            observed["protocol_version"] = init.protocol_version
            observed["server_name"] = init.server_info.name
            tools = await session.list_tools()
            observed["tools"] = [
                {"name": t.name, "schema": t.input_schema} for t in tools.tools
            ]
            observed["calls"] = []
            for code in calls:
                result = await session.call_tool("run_python", {"code": code})
                observed["calls"].append({"text": text_of(result), "is_error": result.is_error})
            try:
                await session.call_tool("no_such_tool", {})
                observed["unknown_tool"] = "accepted"
            except Exception as error:  # the SDK raises on a JSON-RPC error
                observed["unknown_tool"] = type(error).__name__ + ": " + str(error)
    return observed


async def main():
    binary, args = sys.argv[1], sys.argv[2:]
    params = StdioServerParameters(command=binary, args=["mcp", *args])
    first = await connection(
        params,
        [
            "x = 20\nprint('hello')",
            "x + 22",
            "def f(n):\n    return n * x\nf(2)",
            "1 / 0",
            "x",
            "import time\nwhile True:\n    pass",
            "x",
        ],
    )
    second = await connection(params, ["x"])
    print(json.dumps({"first": first, "second": second}))


asyncio.run(main())
