"""The agent's flags and their environment fallbacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpupower_agent.config import ConfigError, parse_config
from gpupower_agent.main import main
from gpupower_agent.mapping import MappingMode


def test_defaults_with_only_the_node_name() -> None:
    config = parse_config(["--node-name", "gpu-1"], {})
    assert config.node_name == "gpu-1"
    assert config.gpu_mapping is MappingMode.AUTO
    assert config.fake_gpus is None
    assert config.restore_on_exit
    assert config.namespace is None
    assert config.metrics_port == 9410
    assert config.gpu_resource_names == ("nvidia.com/gpu", "nvidia.com/gpu.shared", "nvidia.com/mig-*")
    assert config.fake_gpu_load is None


def test_every_flag_has_an_environment_fallback_and_the_flag_wins() -> None:
    env = {
        "GPUPOWER_NODE_NAME": "from-env",
        "GPUPOWER_GPU_MAPPING": "cgroup",
        "GPUPOWER_POD_RESOURCES_SOCKET": "/run/pr.sock",
        "GPUPOWER_FAKE_GPUS": "4:a100-pcie",
        "GPUPOWER_FAKE_GPU_STATE": "/tmp/gpus.json",
        "GPUPOWER_FAKE_GPU_LOAD": "/tmp/load.json",
        "GPUPOWER_GPU_RESOURCE_NAMES": " nvidia.com/gpu , example.com/mig-* ",
        "GPUPOWER_SAFE_DEFAULT_WATTS": "275",
        "GPUPOWER_STATE_FILE": "/tmp/state.json",
        "GPUPOWER_METRICS_PORT": "9999",
        "GPUPOWER_NAMESPACE": "llm",
        "GPUPOWER_RESTORE_ON_EXIT": "false",
        "GPUPOWER_LOG_LEVEL": "warning",
        "GPUPOWER_RESYNC_SECONDS": "7.5",
    }
    config = parse_config([], env)
    assert (config.node_name, config.gpu_mapping, config.pod_resources_socket) == (
        "from-env",
        MappingMode.CGROUP,
        Path("/run/pr.sock"),
    )
    assert config.fake_gpus is not None and config.fake_gpus.count == 4
    assert (config.fake_gpu_state, config.fake_gpu_load) == (Path("/tmp/gpus.json"), Path("/tmp/load.json"))
    assert config.gpu_resource_names == ("nvidia.com/gpu", "example.com/mig-*")
    assert (config.safe_default_watts, config.metrics_port, config.namespace) == (275, 9999, "llm")
    assert (config.restore_on_exit, config.log_level, config.resync_seconds) == (False, "warning", 7.5)
    flagged = parse_config(
        ["--node-name", "from-flag", "--safe-default-watts", "300", "--gpu-resource-names", "a.io/gpu"], env
    )
    assert (flagged.node_name, flagged.safe_default_watts) == ("from-flag", 300)
    assert flagged.gpu_resource_names == ("a.io/gpu",)


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        ([], {}, "--node-name"),
        (["--node-name", "n", "--safe-default-watts", "lots"], {}, "--safe-default-watts"),
        (["--node-name", "n"], {"GPUPOWER_SAFE_DEFAULT_WATTS": "0"}, "GPUPOWER_SAFE_DEFAULT_WATTS"),
        (["--node-name", "n", "--gpu-mapping", "magic"], {}, "--gpu-mapping"),
        (["--node-name", "n", "--fake-gpus", "8:b200"], {}, "--fake-gpus"),
        (["--node-name", "n", "--fake-gpu-state", "/tmp/x"], {}, "--fake-gpu-state"),
        (["--node-name", "n", "--fake-gpu-load", "/tmp/x"], {}, "--fake-gpu-load"),
        (["--node-name", "n", "--gpu-resource-names", " , "], {}, "--gpu-resource-names"),
        (["--node-name", "n"], {"GPUPOWER_GPU_RESOURCE_NAMES": "gpu"}, "GPUPOWER_GPU_RESOURCE_NAMES"),
        (["--node-name", "n", "--metrics-port", "70000"], {}, "--metrics-port"),
        (["--node-name", "n", "--resync-seconds", "0"], {}, "--resync-seconds"),
        (["--node-name", "n", "--log-level", "loud"], {}, "--log-level"),
        (["--node-name", "n"], {"GPUPOWER_RESTORE_ON_EXIT": "maybe"}, "GPUPOWER_RESTORE_ON_EXIT"),
    ],
)
def test_bad_values_name_the_flag_or_variable(argv: list[str], env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_config(argv, env)


def test_main_reports_a_bad_flag_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--node-name", "n", "--safe-default-watts", "-5"]) == 2
    assert "--safe-default-watts" in capsys.readouterr().err
