"""S2 round trip with s2-python on both ends: the agent as CEM over WebSocket, an RM process built on it.

The resource manager (tests/control/s2_rm.py) runs in its own process with s2-python's WebSocket client
medium; the CEM is gateway/control/s2cem.py on s2-python's async connection. Handshake, HandshakeResponse,
ResourceManagerDetails, SelectControlType (PEBC), PEBC.PowerConstraints and the PEBC.Instruction built
from the plan all cross the socket; malformed messages are answered with a reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from gateway.control.config import S2Config
from gateway.control.s2cem import S2Cem
from tests.control.helpers import Recorded, plan_payload

ROOT = Path(__file__).resolve().parents[2]


async def start_cem(plan: dict[str, Any] | None, record: Recorded) -> tuple[S2Cem, asyncio.Task[None]]:
    cem = S2Cem(S2Config(listen="127.0.0.1:0"), plan=lambda: plan, record=record, site="s2-test")
    task = asyncio.create_task(cem.serve())
    await asyncio.wait_for(cem.ready.wait(), 10)
    return cem, task


async def test_an_s2_python_resource_manager_gets_a_pebc_instruction_from_the_plan() -> None:
    record = Recorded()
    cem, task = await start_cem(plan_payload("battery", 20_000), record)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.control.s2_rm",
        f"ws://127.0.0.1:{cem.port}",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, (await proc.stderr.read()).decode() if proc.stderr else ""
        got = json.loads(line)
        inst = got["instruction"]
        assert inst["message_type"] == "PEBC.Instruction"
        assert inst["power_constraints_id"] == got["constraints_id"]
        elements = inst["power_envelopes"][0]["power_envelope_elements"]
        # S2 sign (+ consumption): the plan discharges 20 kW, so the envelope lets it go down to -20 kW;
        # charging stays open to the RM's own 50 kW
        assert elements[0]["lower_limit"] == -20_000 and elements[0]["upper_limit"] == 50_000
        session = next(iter(cem.sessions.values()))
        assert session.selected == "POWER_ENVELOPE_BASED_CONTROL" and session.name == "test battery"
        assert session.instructions == 1
        assert [k for k in record.kinds() if k.startswith("s2.")][:3] == ["s2.session", "s2.session", "s2.instruction"]
    finally:
        proc.terminate()
        await proc.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_without_a_usable_plan_the_envelope_is_the_resource_managers_whole_range() -> None:
    record = Recorded()
    cem, task = await start_cem({"status": "neutral", "reason": "stale load forecast"}, record)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.control.s2_rm", f"ws://127.0.0.1:{cem.port}", cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        inst = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))["instruction"]
        element = inst["power_envelopes"][0]["power_envelope_elements"][0]
        assert (element["lower_limit"], element["upper_limit"]) == (-50_000, 50_000)
    finally:
        proc.terminate()
        await proc.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_malformed_s2_message_is_rejected_with_a_reason() -> None:
    record = Recorded()
    cem, task = await start_cem(None, record)
    try:
        async with connect(f"ws://127.0.0.1:{cem.port}") as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert hello["message_type"] == "Handshake" and hello["role"] == "CEM"
            ok = {"message_type": "ReceptionStatus", "subject_message_id": hello["message_id"], "status": "OK"}
            await ws.send(json.dumps(ok))

            async def status_for(raw: str) -> dict[str, Any]:
                await ws.send(raw)
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if (
                        msg.get("message_type") == "ReceptionStatus"
                        and msg["subject_message_id"] != hello["message_id"]
                    ):
                        return msg

            bad_id = str(uuid.uuid4())
            # a known message type with a field of the wrong kind: s2-python's validation error is the reason
            answer = await status_for(
                json.dumps({"message_type": "Handshake", "message_id": bad_id, "role": "TOASTER"})
            )
            assert answer["status"] == "INVALID_MESSAGE" and answer["subject_message_id"] == bad_id
            assert answer["diagnostic_label"].startswith("role: Input should be")
            answer = await status_for("{not json")
            assert answer["status"] == "INVALID_DATA" and answer["diagnostic_label"] == "not JSON"
            answer = await status_for("[1, 2]")
            assert answer["status"] == "INVALID_DATA" and "JSON object" in answer["diagnostic_label"]
        rejected = [d for k, _dev, d in record.events if k == "s2.rejected"]
        assert [r["reason"] for r in rejected][1:] == ["not JSON", "a message is a JSON object, not list"]
        assert rejected[0]["reason"].startswith("role: ")
        assert rejected[0]["message_id"] == bad_id
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
