"""A resource manager process built on s2-python (its WebSocket client medium and async connection).

Usage: python -m tests.control.s2_rm ws://HOST:PORT
It offers PEBC, sends its PEBC.PowerConstraints (a 50 kW battery) when the CEM selects PEBC, and prints
every instruction it receives as one JSON line: {"constraints_id": ..., "instruction": {...}}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from s2python.common import Commodity, CommodityQuantity, Duration, NumberRange, Role, RoleType
from s2python.connection import AssetDetails
from s2python.connection.async_ import S2AsyncConnection
from s2python.connection.async_.control_type.class_based import PEBCControlType, ResourceManagerHandler
from s2python.connection.async_.medium.websocket import WebsocketClientMedium
from s2python.pebc import (
    PEBCAllowedLimitRange,
    PEBCPowerConstraints,
    PEBCPowerEnvelopeConsequenceType,
    PEBCPowerEnvelopeLimitType,
)

CONSTRAINTS_ID = uuid.UUID("0b5d6a8e-1c2f-4e3a-9b7c-5d4e3f2a1b0c")


class Battery(PEBCControlType):
    async def activate(self, connection: S2AsyncConnection) -> None:
        q = CommodityQuantity.ELECTRIC_POWER_3_PHASE_SYMMETRIC
        rng = NumberRange(start_of_range=-50_000, end_of_range=50_000)
        await connection.send_msg_and_await_reception_status(
            PEBCPowerConstraints(
                message_id=uuid.uuid4(),
                id=CONSTRAINTS_ID,
                valid_from=datetime.now(UTC),
                valid_until=datetime.now(UTC) + timedelta(days=1),
                consequence_type=PEBCPowerEnvelopeConsequenceType.DEFER,
                allowed_limit_ranges=[
                    PEBCAllowedLimitRange(
                        commodity_quantity=q, limit_type=kind, range_boundary=rng, abnormal_condition_only=False
                    )
                    for kind in (PEBCPowerEnvelopeLimitType.UPPER_LIMIT, PEBCPowerEnvelopeLimitType.LOWER_LIMIT)
                ],
            )
        )

    async def handle_instruction(self, connection: S2AsyncConnection, msg: Any, send_okay: Any) -> None:
        await send_okay()
        print(json.dumps({"constraints_id": str(CONSTRAINTS_ID), "instruction": json.loads(msg.to_json())}), flush=True)

    async def deactivate(self, connection: S2AsyncConnection) -> None:
        return None


async def main(url: str) -> None:
    details = AssetDetails(
        resource_id=uuid.uuid4(),
        provides_forecast=False,
        provides_power_measurements=[CommodityQuantity.ELECTRIC_POWER_3_PHASE_SYMMETRIC],
        instruction_processing_delay=Duration.from_milliseconds(100),
        roles=[Role(role=RoleType.ENERGY_STORAGE, commodity=Commodity.ELECTRICITY)],
        name="test battery",
    )
    medium = WebsocketClientMedium(url=url)
    await medium.connect()
    connection = S2AsyncConnection(medium)
    ResourceManagerHandler([Battery()], details).register_handlers(connection)
    await connection.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
