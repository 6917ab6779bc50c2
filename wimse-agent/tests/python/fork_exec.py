"""Connect-fork-exec against the agent (wimse-agent/tests/fork_exec.rs).

    fork_exec.py SCENARIO SOCKET RESULT_FILE [BINARY]

The process connects to SOCKET and waits for the agent's first frame, so the agent has accepted
and attested the connection while this process runs Python. Then:

  parent-execs  fork; the parent execs `BINARY 60`; the child waits until its parent runs
                BINARY, then calls FetchX509SVID over the inherited connection.
  parent-exits  fork; the parent exits; the child waits until the parent is reaped, then calls
                over the inherited connection.
  child-own     fork; the parent execs `BINARY 60`; the child, once its parent runs BINARY,
                calls over a connection of its own.
  reexec-self   exec this same Python again, keeping the connection, and call over it.
  stream-parent-execs
                fork; the child opens a FetchX509SVID stream over the inherited connection
                and takes its first message; then the parent execs `BINARY 60`; once it runs,
                the child writes RESULT_FILE.ready and waits for the stream's next answer
                (the test has the agent rotate its credentials).

The call's result (`h2_client.Client.call`) goes to RESULT_FILE as JSON (for
stream-parent-execs: {"first": ..., "next": ...}).
"""
import json
import os
import sys
import time

import h2_client


def write(result_file, result):
    with open(result_file + ".tmp", "w") as f:
        json.dump(result, f)
    os.rename(result_file + ".tmp", result_file)


def wait_until(condition, what):
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out waiting until " + what)
        time.sleep(0.01)


def runs(pid, binary):
    try:
        return os.readlink(f"/proc/{pid}/exe") == os.path.realpath(binary)
    except OSError:
        return False


def gone(pid):
    try:
        os.kill(pid, 0)
        return False
    except ProcessLookupError:
        return True


def child(result_file, work):
    try:
        write(result_file, work())
    except Exception as error:
        write(result_file, {"error": repr(error)})
    finally:
        os._exit(0)


def main(scenario, path, result_file, binary=None):
    if scenario == "call-fd":  # the re-executed image of reexec-self
        sock = h2_client.socket.socket(fileno=int(path))
        sock.settimeout(20)  # the descriptor is non-blocking, as the first image left it
        return child(result_file, lambda: h2_client.Client(sock).call("localhost"))
    sock = h2_client.connect(path)
    h2_client.wait_for_server_settings(sock)
    parent = os.getpid()
    if scenario == "reexec-self":
        os.set_inheritable(sock.fileno(), True)
        os.execv(sys.executable, [sys.executable, __file__, "call-fd", str(sock.fileno()), result_file])
    if os.fork() == 0:
        if scenario == "parent-execs":
            work = lambda: (wait_until(lambda: runs(parent, binary), "the parent runs " + binary),
                            h2_client.Client(sock).call("localhost"))[1]
        elif scenario == "parent-exits":
            work = lambda: (wait_until(lambda: gone(parent), "the parent is gone"),
                            h2_client.Client(sock).call("localhost"))[1]
        elif scenario == "stream-parent-execs":
            work = lambda: stream_across_exec(sock, parent, binary, result_file)
        elif scenario == "child-own":
            work = lambda: (wait_until(lambda: runs(parent, binary), "the parent runs " + binary),
                            h2_client.Client(h2_client.connect(path)).call("localhost"))[1]
        else:
            work = lambda: {"error": "unknown scenario " + scenario}
        child(result_file, work)
    if scenario == "parent-exits":
        os._exit(0)
    if scenario == "stream-parent-execs":
        wait_until(lambda: os.path.exists(result_file + ".first"), "the child has its first message")
    os.execv(binary, [binary, "60"])


def stream_across_exec(sock, parent, binary, result_file):
    client = h2_client.Client(sock)
    stream = client.open("localhost")
    first = client.next(stream)
    write(result_file + ".first", first)
    wait_until(lambda: runs(parent, binary), "the parent runs " + binary)
    write(result_file + ".ready", {})
    return {"first": first, "next": client.next(stream)}


if __name__ == "__main__":
    main(*sys.argv[1:])
