"""`clawd-edge rpc-worker`: run llama.cpp's ggml-rpc-server so another board can put model layers on this one."""
from __future__ import annotations

import importlib.util
import os
import resource
from pathlib import Path

import click

from edge_runtime.engine.rpc import DEFAULT_PORT, is_private
from edge_runtime.errors import DependencyMissing, UsageError

MIB = 1024**2


def server_binary() -> Path:
    """The ggml-rpc-server built with this llama.cpp (clawd-edge's wheels carry it in llama_cpp/bin/)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyMissing("llama-cpp-python")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "ggml-rpc-server"
    if not os.access(binary, os.X_OK):
        raise DependencyMissing("ggml-rpc-server: this llama-cpp-python was not built by clawd-edge "
                                "(scripts/bootstrap.sh builds it with the RPC server)")
    return binary


@click.command("rpc-worker")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on: loopback or a private (LAN) address only.")
@click.option("--port", "-p", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--threads", "-t", type=click.IntRange(1, 256), default=None, help="CPU threads (default: all cores).")
@click.option("--mem", type=click.IntRange(64), default=None, metavar="MiB",
              help="Most memory the worker may allocate for model layers and KV (the process's data limit).")
def rpc_worker(host: str, port: int, threads: int | None, mem: int | None) -> None:
    """Lend this board's CPU and memory to a `clawd-edge serve --rpc` on another board.

    The RPC protocol has no authentication and no encryption: anyone who reaches the port can run computations
    and read or write the worker's memory. Listen only on a trusted, private link (a cable between two boards, a
    VLAN); never on an open network.
    """
    if not is_private(host):
        raise UsageError(f"--host {host}: the RPC protocol has no authentication; listen on loopback or a private "
                         "address (10/8, 172.16/12, 192.168/16, fd00::/8) of a trusted link only")
    binary = server_binary()
    args = [str(binary), "--host", host, "--port", str(port), "--threads", str(threads or os.cpu_count() or 1)]
    if mem is not None:
        # ggml allocates the layers' buffers with malloc/mmap, which RLIMIT_DATA bounds: a load that would need more
        # fails on the serving board with llama.cpp's allocation error instead of the OOM killer picking a victim.
        limit = mem * MIB
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    click.echo(f"clawd-edge rpc-worker: ggml-rpc-server on {host}:{port} (trusted links only)", err=True)
    os.execv(args[0], args)  # noqa: S606 - the server gets systemd's signals itself, no Python in between
