"""Simulated ESP32 nodes, grow-room physics and fault injection standing in for a real farm."""
from __future__ import annotations

from firmware_sim.clock import AcceleratedClock, Clock, RealClock, make_clock
from firmware_sim.faults import FaultInjector, FaultPlan, garbage_messages
from firmware_sim.nodes import ActuatorNode, SensorNode
from firmware_sim.physics import ActuatorBank, Room, RoomParams, RoomState

__all__ = [
    "AcceleratedClock",
    "ActuatorBank",
    "ActuatorNode",
    "Clock",
    "FaultInjector",
    "FaultPlan",
    "RealClock",
    "Room",
    "RoomParams",
    "RoomState",
    "SensorNode",
    "garbage_messages",
    "make_clock",
]
