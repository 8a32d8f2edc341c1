"""The account's endpoints on the command line, against the emulator's console over real
sockets: ``endpoints`` lists them, ``endpoints --init`` writes a config that ``check-config``
accepts and ``run`` serves, and an endpoint the account lacks fails ``check-config --online``
and ``run`` with one message naming it."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import yaml

from tests.integration.harness import running_emulator
from tests.integration.test_lifecycle import free_port, start_process, wait_healthy

ACCOUNT = "acct-key-cli-0123456789abcdef"
TOKEN = "cli-test-token-0123456789abcdef"
EMULATED = {"echo": {"workers": 1}, "vllm-chat": {"workers": 1, "workload": "max_tokens"}}
MISSING_MESSAGE = "endpoints not in the Vast account: nope"


async def cli(*args: str, **env: str) -> tuple[int, str, str]:
    proc = await start_process(*args, **env)
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def account_file(path: Path, url: str, endpoints: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump({
        "vast": {"autoscaler_url": url, "console_url": url,
                 "account_api_key": "${VAST_API_KEY}"},
        "endpoints": endpoints,
    }))  # fmt: skip
    return path


async def test_endpoints_lists_the_account_and_init_is_served(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with running_emulator(EMULATED, account_api_key=ACCOUNT) as emulator:
        url = emulator.autoscaler_url
        ids = emulator.config.endpoint_ids()
        code, out, err = await cli("endpoints", "--console-url", url, VAST_API_KEY=ACCOUNT)
        assert code == 0, err
        rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
        assert rows["echo"][1] == str(ids["echo"])
        assert rows["vllm-chat"][2] == "active"

        base = account_file(tmp_path / "base.yaml", url, {})
        code, out, err = await cli("endpoints", "--config", str(base), "--init",
                                   VAST_API_KEY=ACCOUNT)  # fmt: skip
        assert code == 0, err
        init = yaml.safe_load(out)
        assert init["endpoints"]["vllm-chat"]["cost"]["estimator"] == "llm_tokens"
        assert init["endpoints"]["echo"]["cost"]["estimator"] == "constant"
        assert ACCOUNT not in out

        port = free_port()
        served = tmp_path / "served.yaml"
        served.write_text(out.replace("port: 8080", f"port: {port}"))
        env = {"VAST_API_KEY": ACCOUNT, "SCHEDULER_TOKEN": TOKEN}
        code, out, err = await cli("check-config", "--online", str(served), **env)
        assert code == 0, err
        assert "ok (2 endpoints)" in out

        proc = await start_process("run", "--config", str(served), **env)
        try:
            daemon = f"http://127.0.0.1:{port}"
            await wait_healthy(http, daemon)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with http.post(f"{daemon}/v1/endpoints/echo/run", json={"payload": {}},
                                 headers=headers) as resp:  # fmt: skip
                assert resp.status == 200, await resp.text()
        finally:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                _, err_bytes = await proc.communicate()
        assert proc.returncode == 0, err_bytes.decode()[-2000:]
        assert ACCOUNT not in err_bytes.decode()


async def test_an_endpoint_the_account_lacks_fails_check_and_run(tmp_path: Path) -> None:
    async with running_emulator(EMULATED, account_api_key=ACCOUNT) as emulator:
        config = account_file(tmp_path / "c.yaml", emulator.autoscaler_url,
                              {"echo": {}, "nope": {}})  # fmt: skip
        code, out, err = await cli("check-config", str(config), VAST_API_KEY=ACCOUNT)
        assert code == 0, err  # offline: the file itself is fine
        code, out, err = await cli("check-config", "--online", str(config), VAST_API_KEY=ACCOUNT)
        assert code == 1
        assert MISSING_MESSAGE in err
        checked = next(line for line in err.splitlines() if MISSING_MESSAGE in line)

        code, out, err = await cli("run", "--config", str(config), VAST_API_KEY=ACCOUNT)
        assert code == 1
        assert checked in err.splitlines()  # the very same message
        assert ACCOUNT not in out + err


async def test_a_wrong_account_key_fails_the_online_check(tmp_path: Path) -> None:
    async with running_emulator(EMULATED, account_api_key=ACCOUNT) as emulator:
        config = account_file(tmp_path / "c.yaml", emulator.autoscaler_url, {"echo": {}})
        code, _, err = await cli("check-config", "--online", str(config),
                                 VAST_API_KEY="not-the-account-key-0123")  # fmt: skip
        assert code == 1
        assert "account key was refused (401): check vast.account_api_key" in err
        assert "not-the-account-key-0123" not in err
        code, _, err = await cli("endpoints", "--console-url", emulator.autoscaler_url)
        assert code == 1
        assert "no account key" in err
