"""podnetctl's command line as a kubectl user types it: global flags anywhere before `--`,
the command to run after `--`, and a closed pipe ending the output quietly."""
import json
import subprocess
import sys

import pytest

from podnetd.ctl.main import parse
from testlib import cni_add, podnetctl


@pytest.mark.parametrize("argv", [
    ["--socket", "/s", "pod", "ls"],
    ["pod", "ls", "--socket", "/s"],
    ["--socket=/s", "pod", "ls"],
    ["pod", "--socket", "/s", "ls"],
])
def test_socket_flag_is_accepted_before_and_after_the_command(argv):
    assert parse(argv).socket == "/s"


@pytest.mark.parametrize("argv", [["-o", "json", "endpoints"], ["-ojson", "endpoints"],
                                  ["--output=json", "endpoints"], ["endpoints", "-o", "json"]])
def test_output_flag_is_accepted_before_and_after_the_command(argv):
    assert parse(argv).output == "json"


def test_pod_exec_flags_after_the_name_are_podnetctls_and_the_command_follows_the_separator():
    args = parse(["pod", "exec", "web", "-c", "app", "--socket", "/s", "-n", "prod", "--",
                  "sh", "-c", "exit 3"])
    assert (args.name, args.container, args.socket, args.namespace) == ("web", "app", "/s", "prod")
    assert args.cmd == ["sh", "-c", "exit 3"]


def test_lab_exec_takes_the_lab_name_after_the_target():
    args = parse(["lab", "exec", "n1", "--name", "other", "--", "ip", "-o", "route"])
    assert (args.target, args.name, args.cmd) == ("n1", "other", ["ip", "-o", "route"])


def test_a_separator_on_a_command_that_runs_nothing_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(["pod", "ls", "--", "x"])
    assert exit_.value.code == 2
    assert "takes no command after --" in capsys.readouterr().err


def test_global_flags_before_the_command_reach_a_real_daemon(daemon):
    out = subprocess.run([sys.executable, "-m", "podnetd.ctl.main", "--socket", daemon.socket,
                          "-o", "json", "node"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert daemon.pod_cidr in out.stdout


def test_a_reader_that_goes_away_ends_the_output_quietly(daemon):
    proc = subprocess.Popen([sys.executable, "-m", "podnetd.ctl.main", "--socket", daemon.socket,
                             "-o", "yaml", "node"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                  # as `| head -0` does, before podnetctl writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_status_exits_1_when_the_daemon_is_not_ready(daemons, netns):
    """`podnetctl status` is a readiness check for scripts: exit 0 when ready, 1 (with the
    reason) when not, here a pod CIDR with no free address left."""
    daemon = daemons("10.77.8.0/30")            # one address for pods

    def status() -> tuple[int, dict]:
        proc = podnetctl("status", "-o", "json", socket=daemon.socket)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    rc, ready = status()
    assert rc == 0 and ready["ready"] is True and ready["free_addresses"] == 1, ready
    rc, out, err = cni_add(daemon, netns.add("p"), "full")
    assert rc == 0, (out, err)
    rc, full = status()
    assert rc == 1 and full["ready"] is False, full
    assert "no free address" in full["message"], full
