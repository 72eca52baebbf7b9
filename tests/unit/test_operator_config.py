"""Command-line flags with environment fallbacks; bad values name the flag or variable."""

from __future__ import annotations

import pytest

from gpupower_operator.config import ConfigError, LeaderElectionConfig, OperatorConfig, parse_config


def test_defaults_watch_all_namespaces_standalone() -> None:
    config = parse_config([], {})
    assert config == OperatorConfig()
    assert config.namespaces == () and config.leader_election is None


def test_environment_fills_in_and_flags_win() -> None:
    env = {
        "GPUPOWER_NAMESPACES": "a, b",
        "GPUPOWER_RESYNC_SECONDS": "7.5",
        "GPUPOWER_METRICS_PORT": "9100",
        "GPUPOWER_LOG_LEVEL": "DEBUG",
        "GPUPOWER_LEADER_ELECT": "true",
        "GPUPOWER_LEADER_ELECTION_IDENTITY": "operator-0",
    }
    config = parse_config([], env)
    assert config.namespaces == ("a", "b")
    assert (config.resync_seconds, config.metrics_port, config.log_level) == (7.5, 9100, "debug")
    assert config.leader_election == LeaderElectionConfig(identity="operator-0")
    config = parse_config(["--namespace", "c", "--resync-seconds", "2", "--metrics-port", "0"], env)
    assert config.namespaces == ("c",)
    assert (config.resync_seconds, config.metrics_port) == (2.0, 0)


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--resync-seconds", "soon"], {}, "--resync-seconds"),
        ([], {"GPUPOWER_RESYNC_SECONDS": "0"}, "GPUPOWER_RESYNC_SECONDS"),
        ([], {"GPUPOWER_METRICS_PORT": "70000"}, "GPUPOWER_METRICS_PORT"),
        (["--log-level", "loud"], {}, "--log-level"),
        ([], {"GPUPOWER_LEADER_ELECT": "yes"}, "GPUPOWER_LEADER_ELECT"),
        (
            ["--leader-elect", "--leader-election-retry-seconds", "often"],
            {},
            "--leader-election-retry-seconds",
        ),
        (["--leader-elect", "--leader-election-lease-seconds", "5"], {}, "renew-deadline"),
    ],
)
def test_bad_values_name_the_flag_or_variable(argv: list[str], env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_config(argv, env)


def test_the_program_exits_2_naming_the_bad_setting(capsys: pytest.CaptureFixture[str]) -> None:
    from gpupower_operator.main import main

    assert main(["--metrics-port", "http"]) == 2
    assert "--metrics-port" in capsys.readouterr().err


def test_leader_election_gets_a_unique_identity_unless_given_one() -> None:
    first = parse_config(["--leader-elect"], {}).leader_election
    second = parse_config(["--leader-elect"], {}).leader_election
    assert first is not None and second is not None
    assert first.identity != second.identity
    assert (first.namespace, first.lease_name) == ("gpupower-system", "gpupower-operator")
    assert parse_config([], {"GPUPOWER_LEADER_ELECT": "false"}).leader_election is None
