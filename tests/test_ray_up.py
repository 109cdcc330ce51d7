"""The shipped ``cluster.yaml`` end to end: ``ray up``, ``ray submit experiments/asr.py``, ``ray down``,
over ssh to this machine (Ray's ``local`` provider, one head at 127.0.0.1).

An sshd of the test's own listens on 127.0.0.1 only, on a free port, with a throwaway host key and
a throwaway user key, and gives the ssh sessions a HOME in the test's temp dir: ``ray up`` syncs
the project to ``~/returnn-ray`` there, writes its ``~/.bashrc`` there, and the cluster's token is
a throwaway one; nothing lands in the real home. Ray's local provider has no ssh port setting, so
``ssh_proxy_command`` reaches that port (a small TCP relay). The copy of cluster.yaml differs from
the shipped one only where a test must: the hosts and ssh settings, the cluster name, free ports
for Ray, and a setup command that uses this checkout's venv instead of ``scripts/setup.sh``
(no downloads).

``ray up`` and ``ray down`` run ``ray stop`` on the host, which stops EVERY Ray of the user on this
machine: so this test is marked ``cluster_launcher`` and runs in a pytest invocation of its own
(``scripts/test.sh``), and skips when other Ray processes are running. It needs ``sshd`` and
``rsync`` (``scripts/setup.sh`` installs them where it can) and skips without them. In CI
(``CI=true``) each of these skips is a failure instead (tests/skip_or_fail.py): CI must show the
cluster launcher working.
"""

from __future__ import annotations

import getpass
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml
from skip_or_fail import skip_or_fail  # tests/ is on sys.path (rootdir conftest)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")

pytestmark = [pytest.mark.cluster_launcher, pytest.mark.ray]

# ProxyCommand: stdin/stdout <-> a TCP connection (the local provider always ssh-es to port 22).
RELAY = """
import os, select, socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
open_fds = [0, sock.fileno()]
while sock.fileno() in open_fds:
    for fd in select.select(open_fds, [], [])[0]:
        if fd == 0:
            data = os.read(0, 65536)
            if data:
                sock.sendall(data)
            else:
                sock.shutdown(socket.SHUT_WR)
                open_fds.remove(0)
        else:
            data = sock.recv(65536)
            if not data:
                sys.exit(0)
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
"""


def find_sshd() -> str | None:
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_processes() -> list[int]:
    """Ray daemons running on this machine (any user, any Ray): `ray stop` would end ours."""
    import psutil  # ships with ray[default]

    found = []
    for p in psutil.process_iter(["pid", "name"]):
        if p.info["name"] in ("raylet", "gcs_server") and p.pid != os.getpid():
            found.append(p.pid)
    return found


def ray_log_errors(session: str = "/tmp/ray/session_latest") -> str:
    """The error and fatal lines of the Ray session's daemon logs (raylet, GCS), the last 30."""
    found = []
    for name in ("raylet.out", "gcs_server.out", "raylet.err", "gcs_server.err"):
        try:
            with open(os.path.join(session, "logs", name), errors="replace") as f:
                found += [f"{name}: {line.rstrip()}" for line in f if re.search(r"^\[[^]]* [EF] \d|Check failed", line)]
        except OSError:
            pass
    return "Ray's logs:\n" + "\n".join(found[-30:]) if found else f"Ray's logs ({session}): no error lines"


def run(cmd: list[str], *, env: dict, timeout: float, what: str) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{what} failed with exit code {proc.returncode}:\n{proc.stdout[-6000:]}"
    return proc.stdout


@pytest.fixture
def sshd(tmp_path):
    """An sshd on 127.0.0.1 for the current user: (port, private key, remote HOME)."""
    sshd_bin = find_sshd()
    missing = [name for name, found in (("sshd", sshd_bin), ("rsync", shutil.which("rsync")),
                                        ("ssh", shutil.which("ssh")), ("ssh-keygen", shutil.which("ssh-keygen")))
               if not found]
    if missing:
        skip_or_fail(f"needs {', '.join(missing)} (apt-get install openssh-server rsync; scripts/setup.sh does as root)")
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    d = tmp_path / "sshd"
    d.mkdir()
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(d / key)], check=True)
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    home = tmp_path / "remote-home"
    home.mkdir()
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nX11Forwarding no\n"
        f"PidFile {d / 'sshd.pid'}\nSetEnv HOME={home}\nLogLevel ERROR\n"
    )
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"sshd did not start: {(d / 'sshd.log').read_text()[-2000:]}")
                time.sleep(0.1)
        yield port, str(d / "user_key"), home
    finally:
        # The listener and its per-connection children (ssh's ControlMaster keeps one open for 10 s).
        import psutil

        ours = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        for pid in ours:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def cluster_config(tmp_path, port: int, key: str, home) -> tuple[str, str]:
    """cluster.yaml for one head at 127.0.0.1 through the test's sshd; returns its path and name."""
    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        config = yaml.safe_load(f)
    name = f"returnn-ray-test-{os.getpid()}"
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    config["cluster_name"] = name
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {
        "ssh_user": getpass.getuser(),
        "ssh_private_key": key,
        "ssh_proxy_command": f"{sys.executable} {relay} %h {port}",
    }
    # The shipped first setup command runs scripts/setup.sh (a venv from the internet); here the
    # synced copy gets this checkout's venv. The second (PATH, RAY_AUTH_MODE in ~/.bashrc) stays.
    assert config["setup_commands"][0] == "cd ~/returnn-ray && bash scripts/setup.sh"
    config["setup_commands"][0] = f"ln -sfn {os.path.join(ROOT, '.venv')} ~/returnn-ray/.venv"
    # Free ports instead of Ray's fixed defaults, which another Ray on this machine may hold.
    ports = {"--port": free_port(), "--object-manager-port": free_port(), "--node-manager-port": free_port()}
    start = []
    for command in config["head_start_ray_commands"]:
        for flag, value in ports.items():
            command = re.sub(rf"{flag}=\d+", f"{flag}={value}", command)
        if " start --head" in command:
            command += (f" --dashboard-port={free_port()} --ray-client-server-port={free_port()}"
                        f" --dashboard-agent-listen-port={free_port()} --metrics-export-port={free_port()}")
        start.append(command)
    config["head_start_ray_commands"] = start
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path), name


def test_ray_up_submit_down_with_the_shipped_cluster_yaml(sshd, tmp_path):
    import ray

    if ray.is_initialized():
        skip_or_fail("this pytest process runs the suite's shared Ray, which `ray up` (`ray stop`) would end: "
                    "run `pytest -m cluster_launcher` on its own (scripts/test.sh does)")
    deadline = time.monotonic() + 20  # a previous pytest invocation's Ray may still be going away
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    if ray_processes():
        skip_or_fail(f"other Ray processes run on this machine ({ray_processes()}); `ray up` (`ray stop`) would end them")

    port, key, home = sshd
    config, name = cluster_config(tmp_path, port, key, home)
    local_home = tmp_path / "local-home"  # `ray up`'s ~: the token that cluster.yaml copies to the head
    (local_home / ".ray").mkdir(parents=True)
    (local_home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["HOME"] = str(local_home)
    out = tmp_path / "asr"
    timings = {}
    try:
        t = time.monotonic()
        up = run([RAY, "up", "-y", config], env=env, timeout=300, what="ray up")
        timings["up"] = time.monotonic() - t
        assert (home / "returnn-ray" / "experiments" / "asr.config").exists(), up[-3000:]  # synced
        assert "returnn-ray/.venv/bin" in (home / ".bashrc").read_text()

        t = time.monotonic()
        args = ["--address", "auto", "--scale", "0.04", "--out", str(out), "--epochs", "1", "--skip-sweep"]
        try:
            output = run([RAY, "submit", config, os.path.join(ROOT, "experiments", "asr.py"), "--", *args], env=env,
                         timeout=420, what="ray submit")
        except AssertionError as exc:  # what Ray's own logs said, before `ray down` ends the session
            raise AssertionError(f"{exc}\n{ray_log_errors()}") from None
        timings["submit"] = time.monotonic() - t
    finally:
        t = time.monotonic()
        down = subprocess.run([RAY, "down", "-y", config], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=180)
        timings["down"] = time.monotonic() - t
        for suffix in ("state", "lock"):  # the local provider's record of the cluster's nodes
            try:
                os.remove(f"/tmp/cluster-{name}.{suffix}")
            except FileNotFoundError:
                pass
    print(f"ray up {timings['up']:.1f} s, ray submit {timings['submit']:.1f} s, ray down {timings['down']:.1f} s")
    assert down.returncode == 0, down.stdout[-3000:]

    # asr.py ran on the cluster's Ray (not a private head of its own), every stage, and a WER
    assert "== ray: using the cluster at auto" in output, output[-4000:]
    assert re.search(r"^cluster auto: \d+ CPUs, 0 GPUs -> \d+ worker\(s\)", output, re.M), output[-4000:]
    table = output[output.index("\nstage ") :]
    for stage in ("data", "ray attach", "train", "fwd+search", "total"):
        assert re.search(rf"^{re.escape(stage)}\s+\d+\.\d", table, re.M), f"no row {stage!r} in\n{table}"
    assert re.search(r"^WER [\d.]+% \(\d+/\d+ words\) on the eval set \(4 seqs\)", output, re.M), output[-3000:]
    assert (out / "search" / "eval.py").exists() and (out / "model" / "net.001.pt").exists()

    # `ray down` stopped the head's Ray
    deadline = time.monotonic() + 20
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes(), "Ray still runs after ray down"
