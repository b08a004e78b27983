"""The control room: the agent acts on its plan, within a safety envelope per actuator (section `control`)."""
