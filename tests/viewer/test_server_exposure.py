"""A viewer reachable from other machines says, in one line, that it has no authentication."""

import socket

import pytest

from dreamfusion.config import Config
from dreamfusion.fields import ConstantBackground, SphereField
from dreamfusion.viewer.server import Viewer, exposure_warning


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_are_quiet(host):
    assert exposure_warning(host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "myhost.example"])
def test_other_hosts_warn(host):
    warning = exposure_warning(host)
    assert warning.startswith("warning: ") and "no authentication" in warning and "\n" not in warning


def test_a_viewer_on_all_interfaces_prints_the_warning_on_stderr(capsys):
    pytest.importorskip("viser")
    field, background = SphereField(0.45, (0.8, 0.2, 0.2), 0.8), ConstantBackground((1.0, 1.0, 1.0))
    viewer = Viewer(field, background, Config(), host="0.0.0.0", port=_free_port(), render_height=32)
    viewer.stop()
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if "no authentication" in line] == [exposure_warning("0.0.0.0")]
    local = Viewer(field, background, Config(), host="127.0.0.1", port=_free_port(), render_height=32)
    local.stop()
    assert "no authentication" not in capsys.readouterr().err
