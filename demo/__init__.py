"""`smartfarm demo`: the wiring that runs the whole system on one machine (cloud, edge and the
simulated farm). It is the one place allowed to import all three; `cloud/` and `edge/` never
import each other, and neither imports `firmware_sim`.
"""
