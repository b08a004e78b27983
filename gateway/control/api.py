"""The control room's HTTP routes, served by the HTTP room through `Providers.routes` (no edit of the root).

GET /api/v1/control (viewer): what every actuator is doing and why. The verbs need the admin role:
PUT/DELETE /api/v1/control/actuators/{id}/override (pin an actuator to a value for a while, inside its
envelope), POST /api/v1/control/stop (hand every device back, command nothing) and /resume. Every verb is
recorded in the ledger's events chain with the token holder's name.
"""

# No `from __future__ import annotations`: FastAPI resolves the body model at runtime.

from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from drivers.base import OutOfRange
from gateway.api.auth import ApiError, Authenticator
from gateway.control.loop import Controller


class OverrideBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: bool | float = Field(description="W (+ discharge) for a battery; true/false for a relay")
    duration_s: float = Field(gt=0, le=86400, description="how long the override holds, s")


def control_routes(controller: Controller) -> Any:
    """A function the HTTP room calls with (app, authenticator) to add the routes."""

    def add(app: FastAPI, auth: Authenticator) -> None:
        @app.get("/api/v1/control", tags=["control"], summary="Actuators, their setpoints and why")
        async def control_status(request: Request) -> dict[str, Any]:
            auth.authenticate(request, "viewer")
            return controller.status()

        @app.put("/api/v1/control/actuators/{actuator}/override", tags=["control"], summary="Manual override")
        async def put_override(actuator: str, body: OverrideBody, request: Request) -> dict[str, Any]:
            who = auth.authenticate(request, "admin")
            value = body.value
            try:
                state = await controller.set_override(actuator, value, body.duration_s, who.name)
            except KeyError:
                raise ApiError(404, "unknown_actuator", f"no actuator {actuator!r}") from None
            except OutOfRange as exc:
                raise ApiError(400, exc.error_code, str(exc)) from None
            return state.as_json()

        @app.delete("/api/v1/control/actuators/{actuator}/override", tags=["control"], summary="End an override")
        async def delete_override(actuator: str, request: Request) -> dict[str, Any]:
            who = auth.authenticate(request, "admin")
            try:
                state = await controller.clear_override(actuator, who.name)
            except KeyError:
                raise ApiError(404, "unknown_actuator", f"no actuator {actuator!r}") from None
            return state.as_json()

        @app.post("/api/v1/control/stop", tags=["control"], summary="Stop control: hand every device back")
        async def stop(request: Request) -> dict[str, Any]:
            who = auth.authenticate(request, "admin")
            await controller.stop(who.name)
            return controller.status()

        @app.post("/api/v1/control/resume", tags=["control"], summary="Resume control after a stop")
        async def resume(request: Request) -> dict[str, Any]:
            who = auth.authenticate(request, "admin")
            await controller.resume(who.name)
            return controller.status()

    return add
