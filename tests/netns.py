"""Hosts for many-host tests: each in its own network namespace on a private bridge, or (without root)
all on loopback ports.

Namespaces (root, ``ip netns``): a bridge lives in a namespace of its own; every host is a namespace
with one veth end on that bridge and an address in ``SUBNET`` (10.213.0.0/24), which exists only
inside these namespaces: the root namespace's interfaces, routes and firewall are never touched, and
nothing outside the test is reachable or reached. A host's processes run under ``ip netns exec`` (which
execs, so the PID is the server's own); the test itself talks to the hosts from a "client" host, one
worker thread that entered the client namespace (a network namespace is per thread), so pytest's own
thread stays where it was. :meth:`Network.cut` takes a host off the bridge (its packets are dropped).

Loopback (the fallback): every host is 127.0.0.1 and every server gets a free port; nothing can be cut.

Cleanup, also after a failure: every process started here is stopped by its PID (SIGTERM, then SIGKILL),
anything still inside one of our namespaces is killed by PID, and the namespaces are deleted. Namespaces
left by a test process that was itself killed are recognised by name (``mh<pid>x...``) and removed by
the next run.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

from services.embedded import free_port, port_open

SUBNET = "10.213.0"  # /24, only inside the test's namespaces
CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"^mh(\d+)x[0-9a-f]{4}-")
T = TypeVar("T")


def namespaces_unavailable() -> str | None:
    """Why this machine cannot run hosts in network namespaces, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "not Linux"
    if os.geteuid() != 0:
        return "not root (ip netns needs CAP_SYS_ADMIN)"
    if not shutil.which("ip"):
        return "no `ip` command (iproute2)"
    probe = f"mh{os.getpid()}x{secrets.token_hex(2)}-probe"
    try:
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` failed: {exc}"
    if made.returncode:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10, check=False)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)
    if check and done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _delete_namespace(name: str) -> None:
    """Kill by PID whatever still runs inside namespace ``name`` (only processes this module started,
    or their children, can be there), then delete it."""
    pids = _ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        _kill_pid(int(pid))
    _ip("netns", "del", name, check=False)


def remove_stale_namespaces() -> list[str]:
    """Namespaces of an earlier run whose test process is gone (killed before its cleanup)."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAME.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _delete_namespace(name)
            removed.append(name)
    return removed


def _enter_namespace(name: str) -> None:
    """The calling thread joins network namespace ``name`` (the worker thread of the client host)."""
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _die_with_parent() -> None:
    try:  # the children get SIGKILL if the test process dies without its cleanup (PR_SET_PDEATHSIG)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


@dataclass
class Host:
    name: str
    ip: str  # the address other hosts use
    netns: str | None  # None on loopback
    link: str | None = None  # its veth end in the bridge namespace

    @property
    def bind(self) -> str:
        """Where its servers listen: every address of its namespace, or loopback only."""
        return "0.0.0.0" if self.netns else "127.0.0.1"

    def port(self, usual: int) -> int:
        """The port a server of this host listens on: the usual one in its own namespace, a free one on
        the shared loopback (not reserved; a clash shows as a server that does not start)."""
        return usual if self.netns else free_port()

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)


@dataclass
class Proc:
    name: str
    host: Host
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class Network:
    """The hosts of one test; use as a context manager (cleanup on exit, whatever happened)."""

    def __init__(self, isolated: bool, log_dir: Path) -> None:
        self.isolated = isolated
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = f"mh{os.getpid()}x{secrets.token_hex(2)}"
        self.bridge = f"{self.prefix}-bridge"
        self.hosts: dict[str, Host] = {}
        self.procs: list[Proc] = []
        self._namespaces: list[str] = []
        self._next_ip = 2
        self._executor: ThreadPoolExecutor | None = None
        self.client: Host | None = None

    @property
    def mode(self) -> str:
        return "network namespaces" if self.isolated else "loopback ports"

    def __enter__(self) -> Self:
        try:
            if self.isolated:
                remove_stale_namespaces()
                self._namespaces.append(self.bridge)
                _ip("netns", "add", self.bridge)
                _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
                _ip("-n", self.bridge, "link", "set", "br0", "up")
                _ip("-n", self.bridge, "link", "set", "lo", "up")
            self.client = self.add_host("client")
            init = (_enter_namespace, (self.client.netns,)) if self.isolated else (None, ())
            self._executor = ThreadPoolExecutor(
                1, thread_name_prefix="client-host", initializer=init[0], initargs=init[1]
            )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- hosts ---------------------------------------------------------------------------------------------

    def add_host(self, name: str) -> Host:
        if not self.isolated:
            host = Host(name, "127.0.0.1", None)
        else:
            ip = f"{SUBNET}.{self._next_ip}"
            self._next_ip += 1
            ns, link = f"{self.prefix}-{name}", f"v{self._next_ip - 1}"
            self._namespaces.append(ns)
            _ip("netns", "add", ns)
            _ip("-n", self.bridge, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.bridge, "link", "set", link, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            host = Host(name, ip, ns, link)
        self.hosts[name] = host
        return host

    def cut(self, host: Host) -> bool:
        """Take ``host`` off the network (its bridge port down: packets to it are dropped, not refused).
        False on loopback, where there is no network to cut."""
        if not self.isolated:
            return False
        _ip("-n", self.bridge, "link", "set", host.link, "down")
        return True

    def mend(self, host: Host) -> None:
        if self.isolated:
            _ip("-n", self.bridge, "link", "set", host.link, "up")

    # -- the client host (where the test's own requests come from) -------------------------------------------

    def call(self, fn: Callable[..., T], *args, timeout: float = 120.0, **kwargs) -> T:
        """Run ``fn`` on the client host's thread: every socket it opens is in the client namespace."""
        assert self._executor is not None, "use the Network as a context manager"
        return self._executor.submit(fn, *args, **kwargs).result(timeout)

    def reachable(self, host: Host, port: int) -> bool:
        return self.call(port_open, port, host.ip)

    # -- processes -----------------------------------------------------------------------------------------------

    def start(
        self,
        host: Host,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        port: int | None = None,
        timeout: float = 60.0,
    ) -> Proc:
        """``argv`` on ``host``, its output in ``<log_dir>/<name>.log``; with ``port``, returns once the
        client host can connect to it (or raises with the log's tail)."""
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log_file:
            popen = subprocess.Popen(
                host.argv(argv),
                env=env if env is not None else dict(os.environ),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest reaches pytest; the cleanup stops these by PID
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (one prctl call, no locks taken)
            )
        proc = Proc(name, host, popen, log_path)
        self.procs.append(proc)
        if port is not None:
            self.wait_listening(proc, port, timeout)
        return proc

    def wait_listening(self, proc: Proc, port: int, timeout: float = 60.0) -> None:
        """Return once the client host can connect to ``proc``'s ``port``; raise with its log's tail when
        it exits first or does not listen within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.reachable(proc.host, port):
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{proc.name} did not listen on {proc.host.ip}:{port} within {timeout} s:\n{proc.log_tail()}"
                )
            time.sleep(0.1)

    @staticmethod
    def kill(proc: Proc) -> None:
        """SIGKILL by PID: a crash."""
        if proc.alive():
            proc.popen.kill()
        proc.popen.wait(10)

    @staticmethod
    def stop(procs: list[Proc], timeout: float = 15.0) -> None:
        """SIGTERM by PID, then SIGKILL what is left after ``timeout``."""
        for p in procs:
            if p.alive():
                p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.popen.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(10)

    def close(self) -> None:
        try:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None
        finally:
            try:
                self.stop(self.procs)
            finally:
                for ns in reversed(self._namespaces):  # hosts first, the bridge last
                    _delete_namespace(ns)
                self._namespaces.clear()
